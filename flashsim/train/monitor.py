"""The conditioning monitor of a training run (``--monitor-every K``).

The validation loss does not show how well the flow follows its conditioning (the
original authors saw conditioning improve long after the loss flattened). Every ``K``
epochs (and after the last) the monitor runs the cheap subset of the conditioning checks
(:func:`flashsim.conditioning.cheap_metrics`: ΔNLL, PIT KS, ΔAUC, profile χ²/ndf, each
with its floor) on a fixed subset of the validation split (the first ``rows`` rows) with
fixed noise, so that two epochs' numbers differ only because the model did. The results
join the epoch's metrics record (``metrics.jsonl``, TensorBoard ``conditioning/*``, the
lower panel of ``loss.png``), with ``monitor_s``, its wall time.

``--best-by conditioning`` makes ``best.pt`` the monitored epoch with the lowest
:func:`conditioning_score` (docs/training.md); ``nll`` (default) the lowest validation
loss. Only rank 0 measures; the training RNG streams are left untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nflows.flows import Flow

from flashsim.conditioning.monitor import MONITOR_KEYS
from flashsim.layouts import Layout

SCORE = "conditioning_score"
SCORED = (
    ("pit_ks_max", "pit_ks_floor"),
    ("max_delta_auc", "max_delta_auc_floor"),
    ("profile_chi2_ndf_max", "profile_chi2_ndf_floor"),
)
"""The ``(value, floor)`` pairs of the combined score."""
RECORD_KEYS = (*MONITOR_KEYS, SCORE, "monitor_s")
"""What the monitor adds to an epoch's metrics record."""
RATIO_MIN = 0.01
"""Ratios below this count as this (a check at 0 would make the geometric mean 0)."""


def conditioning_score(metrics: dict[str, float]) -> float:
    """The geometric mean of ``value / floor`` over the checks of :data:`SCORED` that
    have both (NaN if none): about 1 for a flow that the checks cannot tell from a
    perfect one at this row count, larger the worse its conditioning; lower is better.
    Geometric, so that each check weighs the same whatever its scale (a χ²/ndf far off
    does not drown the others)."""
    ratios = [
        max(metrics[value] / metrics[floor], RATIO_MIN)
        for value, floor in SCORED
        if math.isfinite(metrics.get(value, math.nan))
        and math.isfinite(metrics.get(floor, math.nan))
        and metrics[floor] > 0
    ]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else math.nan


def is_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether the monitor runs after 1-based ``epoch`` of a run of ``epochs``."""
    return every > 0 and (epoch % every == 0 or epoch == epochs)


def is_best(record: dict, earlier: Sequence[dict], best_val: float, best_by: str) -> bool:
    """Whether the epoch of ``record`` is the best so far (``earlier``: the records
    before it; ``best_val``: the lowest validation loss before it)."""
    if best_by == "nll":
        return bool(record["val_loss"] < best_val)
    score = record.get(SCORE, math.nan)
    previous = [r[SCORE] for r in earlier if math.isfinite(r.get(SCORE, math.nan))]
    return math.isfinite(score) and (not previous or score < min(previous))


class ConditioningMonitor:
    """The monitor of one run: reads its subset once, then measures a flow on it.

    Args:
        store: the run's store (its ``val`` split).
        meta: the store's metadata (its preprocessing).
        layout: the store's layout.
        rows: size of the subset (the first ``rows`` validation rows, or all if fewer).
        seed: fixes the noise of the draws, PIT ties and permutations.
    """

    def __init__(self, store: Path, meta: dict, layout: Layout, rows: int, seed: int) -> None:
        from flashsim.transforms import Preprocessing

        self.store, self.layout, self.rows, self.seed = store, layout, int(rows), int(seed)
        self.preprocessing = Preprocessing.from_dict(layout.object, meta.get("preprocessing", []))
        self._subset: tuple[np.ndarray, np.ndarray] | None = None

    def subset(self) -> tuple[np.ndarray, np.ndarray]:
        """``(conditioning, targets)`` of the subset (read on first use)."""
        if self._subset is None:
            from flashsim.validate import read_rows

            self._subset = read_rows(self.store, "val", self.rows)
        return self._subset

    def measure(self, flow: Flow) -> dict[str, float]:
        """The cheap conditioning metrics of ``flow``, their :data:`SCORE` and
        ``monitor_s`` (seconds)."""
        from flashsim.conditioning import cheap_metrics

        start = time.perf_counter()
        conditioning, targets = self.subset()
        device = next(flow.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        # fork_rng: whatever the checks draw from torch, the training's streams go on
        # as if the monitor had not run.
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            metrics = cheap_metrics(
                flow, self.layout, self.preprocessing, conditioning, targets, seed=self.seed
            )
        metrics[SCORE] = conditioning_score(metrics)
        metrics["monitor_s"] = time.perf_counter() - start
        return metrics
