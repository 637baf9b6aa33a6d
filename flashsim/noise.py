"""Positional base noise: the flow's standard-normal draw of one object depends only on a
stream key and the object's position in that stream, never on how objects are batched.

A stream is a counter-based Philox generator keyed by a tuple of integers (generation
uses ``(seed, file index, object kind, attempt, fold)``); position ``p`` owns counter steps
``[p*s, (p+1)*s)``, ``s = ceil(width / 4)`` (each step gives four 64-bit words), and
its ``width`` normals are the inverse normal CDF of the first ``width`` words. So
:func:`noise_block` of positions ``[a, b)`` equals rows ``a..b-1`` of any larger block
of the same stream: reading a file in steps of 1 000 or 20 000 events, or in several
processes, draws the same noise for every object.

Examples
--------
>>> import numpy as np
>>> whole = noise_block((0, 1), 0, 10, 17)
>>> np.array_equal(noise_block((0, 1), 4, 3, 17), whole[4:7])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri

_WORDS_PER_STEP = 4
_UNIT = 2.0**-53


def noise_block(key: Sequence[int], start: int, n: int, width: int) -> np.ndarray:
    """Standard normal draws ``(n, width)`` float32 of positions ``[start, start + n)`` of
    the stream ``key`` (non-negative integers)."""
    steps = -(-width // _WORDS_PER_STEP)
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)
    counter = np.array([start * steps, 0, 0, 0], dtype=np.uint64)
    bits = np.random.Philox(key=state, counter=counter)
    words = bits.random_raw(n * steps * _WORDS_PER_STEP).reshape(n, -1)[:, :width]
    # 53 random bits -> a uniform in (0, 1), strictly inside: ndtri stays finite
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * _UNIT
    return ndtri(uniform).astype(np.float32)
