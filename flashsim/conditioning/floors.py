"""Statistical floors: what a perfect model would show for a check.

Each floor of the physics checks (profiles, ROC, correlations) is the *same statistic*
computed between two random halves of the FullSim rows instead of FlashSim vs FullSim,
averaged over :data:`FLOOR_SPLITS` random halvings. Two independent FullSim halves
differ only by statistical noise, with half the rows each, so a floor sits a little
above (about :math:`\\sqrt{2}`) the noise of a perfect flow on the full split; a value
well above its floor is a real mismodelling. (The PIT floor is simulated instead, see
:mod:`flashsim.conditioning.pit`.)
"""

from __future__ import annotations

import zlib

import numpy as np

FLOOR_SPLITS = 4
"""Random halvings of the FullSim rows averaged in each split-halves floor."""


def split_halves(
    n: int, rng: np.random.Generator, splits: int = FLOOR_SPLITS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` random partitions of ``range(n)`` into two halves (sorted index arrays)."""
    out = []
    for _ in range(splits):
        perm = rng.permutation(n)
        half = n // 2
        out.append((np.sort(perm[:half]), np.sort(perm[half : 2 * half])))
    return out


def stream(seed: int, name: str) -> np.random.Generator:
    """The random stream ``name`` of ``seed``: same seed and name, same numbers; other
    names give independent streams (so adding a check does not shift the others)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])
