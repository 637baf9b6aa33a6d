"""Safe samples: physical targets that are finite, inside the training range and, for
discrete columns, one of the values full simulation takes.

:func:`draw_targets` samples the flow once per conditioning row, maps the draw to
physical units, and checks every target against the record of the store the model was
trained on (:class:`flashsim.valid.TargetValues`):

1. a target that is NaN or ±inf, or outside ``[min, max]`` of the values prep kept
   (e.g. a pT ratio sampled below 0 and clipped to 0 by the inverse preprocessing, where
   no training jet had one; a tagger above 1), makes its object **redrawn**: fresh base
   noise for that object only (attempt ``a`` of the noise stream), up to
   ``max_redraws`` times;
2. a target still bad after the last redraw is **clipped**: a finite value to
   ``[min, max]``, ``+inf`` to ``max``, ``-inf`` and NaN to ``min`` (0 without a record);
3. every discrete target is mapped to the nearest value of its recorded set
   (:func:`flashsim.valid.nearest_valid`).

Every object redrawn or clipped is counted per column (:class:`SampleCounts`); the output
never holds a NaN. A model whose checkpoint has no record (a store prepared before they
were written) gets only the non-finite check, with NaN and ±inf set to 0 at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flashsim.valid import TargetValues, nearest_valid

if TYPE_CHECKING:  # torch-free at import: the CLI's --help stays fast
    from flashsim.sampling import TrainedFlow

DEFAULT_MAX_REDRAWS = 10
"""Redraws of a bad object before its bad targets are clipped (``generate --max-redraws``)."""


@dataclass
class SampleCounts:
    """Objects with a bad sample, per target column.

    Attributes:
        redrawn: objects whose first draw was bad in that column (each was redrawn).
        clipped: objects still bad in that column after the last redraw (clipped).
    """

    redrawn: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)

    def add(self, other: SampleCounts) -> None:
        for mine, theirs in ((self.redrawn, other.redrawn), (self.clipped, other.clipped)):
            for col, n in theirs.items():
                mine[col] = mine.get(col, 0) + n

    def to_dict(self) -> dict:
        return {"redrawn": dict(self.redrawn), "clipped": dict(self.clipped)}


def _per_column(names: tuple[str, ...], cells: np.ndarray) -> dict[str, int]:
    counts = np.count_nonzero(cells, axis=0)
    return {names[j]: int(n) for j, n in enumerate(counts) if n}


def bad_cells(targets: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(N, n_targets)`` bool: not finite, or outside ``[lo, hi]`` per column."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(targets) | (targets < lo) | (targets > hi)


def finalize(targets: np.ndarray, values: TargetValues | None) -> np.ndarray:
    """Clip into the recorded ranges (NaN to the lower end) and snap discrete columns to
    their nearest valid value; ``(N, n_targets)`` float64."""
    out = np.asarray(targets, dtype=np.float64)
    if values is None:
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = values.bounds()
    low_fill = np.where(np.isfinite(lo), lo, 0.0)
    out = np.where(np.isnan(out), low_fill, np.clip(out, lo, hi))
    out = np.nan_to_num(out, posinf=0.0, neginf=0.0)  # ±inf left only where unbounded
    for j, name in enumerate(values.layout.target_columns):
        entry = values.columns.get(name)
        if entry is not None and entry.values is not None:
            out[:, j] = nearest_valid(out[:, j], entry.values)
    return out


def draw_targets(
    model: TrainedFlow,
    conditioning: np.ndarray,
    noise: Callable[[int], np.ndarray],
    max_redraws: int = DEFAULT_MAX_REDRAWS,
) -> tuple[np.ndarray, SampleCounts]:
    """Safe physical targets ``(N, n_targets)`` float64 for preprocessed ``conditioning``.

    Args:
        model: the trained flow (its checkpoint's record gives the valid values).
        conditioning: ``(N, n_conditioning)`` float32, preprocessed.
        noise: ``noise(attempt)`` gives the base noise ``(N, n_targets)`` of every row for
            draw ``attempt`` (0: the first draw); only the rows being redrawn are used.
        max_redraws: redraws of a bad object before clipping (0: clip at once).
    """
    from flashsim.sampling import sample_with_noise

    values = model.target_values
    names = model.layout.target_columns
    unbounded = np.full(len(names), np.inf)
    lo, hi = values.bounds() if values is not None else (-unbounded, unbounded)
    targets = model.to_physical(sample_with_noise(model.flow, conditioning, noise(0)))
    bad = bad_cells(targets, lo, hi)
    counts = SampleCounts(redrawn=_per_column(names, bad))
    for attempt in range(1, max_redraws + 1):
        rows = np.flatnonzero(bad.any(axis=1))
        if not len(rows):
            break
        fresh = sample_with_noise(model.flow, conditioning[rows], noise(attempt)[rows])
        targets[rows] = model.to_physical(fresh)
        bad[rows] = bad_cells(targets[rows], lo, hi)
    counts.clipped = _per_column(names, bad)
    return finalize(targets, values), counts


def count_lines(counts: Mapping[str, SampleCounts]) -> list[str]:
    """One line per object with bad samples, for the summary ``flashsim generate`` prints."""
    lines = []
    for obj, c in counts.items():
        for what, per_column in (("redrawn", c.redrawn), ("clipped", c.clipped)):
            if per_column:
                cols = ", ".join(f"{col} {n}" for col, n in per_column.items())
                lines.append(f"  {obj}: objects {what} ({cols})")
    return lines
