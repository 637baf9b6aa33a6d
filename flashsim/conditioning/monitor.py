"""The cheap subset of the conditioning checks, for a training monitor.

:func:`cheap_metrics` evaluates a flow on a *fixed* validation subset with *fixed*
noise (everything random is drawn from ``seed``), so that the numbers of two epochs
differ only because the model did: ΔNLL, the PIT KS of the worst cell, max |ΔAUC| and
the largest profile χ²/ndf, each with its floor. It takes the flow being trained (any
mode; restored after) and plain arrays.

Examples
--------
>>> m = cheap_metrics(flow, JETS, preprocessing, y_val, x_val)   # doctest: +SKIP
>>> m["delta_nll"], m["pit_ks_max"] / m["pit_ks_floor"]           # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from nflows import flows

from flashsim.conditioning.floors import stream
from flashsim.conditioning.report import check_conditioning
from flashsim.conditioning.rows import CheckRows
from flashsim.layouts import DTYPE, Layout
from flashsim.sampling import sample_with_noise
from flashsim.transforms import Preprocessing

MONITOR_SAMPLES = 8
"""PIT draws per row in the monitor (the floors account for the smaller S)."""
MONITOR_KEYS = (
    "delta_nll",
    "delta_nll_err",
    "pit_ks_max",
    "pit_ks_floor",
    "max_delta_auc",
    "max_delta_auc_floor",
    "profile_chi2_ndf_max",
    "profile_chi2_ndf_floor",
)


def cheap_metrics(
    flow: flows.Flow,
    layout: Layout,
    preprocessing: Preprocessing,
    conditioning: np.ndarray,
    targets: np.ndarray,
    *,
    samples: int = MONITOR_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """ΔNLL, PIT KS, ΔAUC and profile χ²/ndf (with floors) of ``flow`` on the rows.

    Args:
        flow: an nflows flow of ``layout`` (e.g. the model being trained).
        layout, preprocessing: the store's.
        conditioning, targets: ``(N, n_conditioning)`` and ``(N, n_targets)`` float32,
            preprocessed (a fixed validation subset).
        samples: PIT draws per row.
        seed: fixes the FlashSim draw, the PIT noise and ties, and the permutations.

    Returns:
        The :data:`MONITOR_KEYS` of the validation summary (floats; NaN where a check
        has no data).
    """
    conditioning = np.ascontiguousarray(conditioning, dtype=DTYPE)
    targets = np.ascontiguousarray(targets, dtype=DTYPE)
    noise = stream(seed, "monitor-draw").standard_normal(targets.shape, dtype=DTYPE)
    training = flow.training
    flow.eval()
    try:
        flash = sample_with_noise(flow, conditioning, noise)
    finally:
        flow.train(training)
    rows = CheckRows.build(layout, preprocessing, conditioning, targets, flash)
    result = check_conditioning(
        flow,
        preprocessing,
        rows,
        seed=seed,
        samples=samples,
        pit_rows=len(rows),
        per_column=False,
        correlations=False,
    )
    summary = result.summary()
    return {key: float(summary[key]) for key in MONITOR_KEYS}
