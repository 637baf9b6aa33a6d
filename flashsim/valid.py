"""The valid values of each target: recorded by ``prep``, enforced by ``generate``.

For every target column, prep records the range ``[min, max]`` of the physical values it
kept (train and validation rows, after dropping non-finite ones) and, for the discrete
columns of the layout (:attr:`flashsim.layouts.Layout.discrete`: ids, bit fields,
flags; not the counts such as ``MJet_nConstituents``, whose every integer is valid), the
sorted set of values that occur. They are stored under the
``"target_values"`` key of the store metadata, and travel into every checkpoint with
it::

    "target_values": {"MJet_jetId": {"min": 0, "max": 6, "values": [0, 2, 6]},
                      "MJet_ptRatio": {"min": 0.031, "max": 2.98}, ...}

Generation uses them (:func:`flashsim.safe_sampling.draw_targets`): a sample that is not
finite or lies outside ``[min, max]`` is redrawn, and a discrete sample is mapped to the
**nearest valid value** (smallest ``|sample - v|`` over the recorded set; a tie goes to
the smaller value). The set is whatever the training NanoAOD held, so a model trained on
a NanoAOD version whose ``Jet_jetId`` takes ``{0, 2, 6}`` generates exactly those, and one
trained on a version with ``{0, 2, 4, 6}`` generates those.

Examples
--------
>>> import numpy as np
>>> nearest_valid(np.array([-2.0, 1.0, 3.9, 4.0, 11.0]), np.array([0.0, 2.0, 6.0]))
array([0., 0., 2., 2., 6.])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from flashsim.layouts import Layout

METADATA_KEY = "target_values"
"""Key of the store metadata (and so of a checkpoint's ``store_metadata``)."""

MAX_DISCRETE_VALUES = 4096
"""A discrete column with more distinct values keeps only its range (it is a count)."""


def nearest_valid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each of ``values`` (finite, float64) mapped to the nearest of the sorted ``valid``;
    ties go to the smaller valid value."""
    if len(valid) == 1:
        return np.full(np.shape(values), valid[0], dtype=np.float64)
    above = np.clip(np.searchsorted(valid, values, side="left"), 1, len(valid) - 1)
    lower, upper = valid[above - 1], valid[above]
    return np.where(values - lower <= upper - values, lower, upper).astype(np.float64)


@dataclass
class ColumnValues:
    """What one target column takes: ``[lo, hi]`` and, if discrete, the sorted ``values``."""

    lo: float
    hi: float
    values: np.ndarray | None = None

    def to_dict(self) -> dict:
        out: dict = {"min": float(self.lo), "max": float(self.hi)}
        if self.values is not None:
            out["values"] = [float(v) if not float(v).is_integer() else int(v) for v in self.values]
        return out

    @classmethod
    def from_dict(cls, entry: Mapping) -> ColumnValues:
        values = entry.get("values")
        return cls(
            float(entry["min"]),
            float(entry["max"]),
            None if values is None else np.asarray(values, dtype=np.float64),
        )


@dataclass
class TargetValues:
    """The recorded values of the target columns of one layout (physical units).

    ``columns`` maps a target column name to its :class:`ColumnValues`; a column with no
    row yet is absent.
    """

    layout: Layout
    columns: dict[str, ColumnValues] = field(default_factory=dict)

    @classmethod
    def of_rows(cls, layout: Layout, rows: np.ndarray) -> TargetValues:
        """The values of the finite raw rows ``(N, n_columns)`` (physical, before any
        preprocessing)."""
        out = cls(layout)
        if not len(rows):
            return out
        targets = rows[:, layout.targets].astype(np.float64)
        lo, hi = targets.min(axis=0), targets.max(axis=0)
        for j, name in enumerate(layout.target_columns):
            values = None
            if name in layout.discrete and name not in layout.counts:
                values = np.unique(targets[:, j])
            out.columns[name] = ColumnValues(lo[j], hi[j], values)
        return out

    def merge(self, other: TargetValues) -> None:
        """Add the values of ``other`` (same layout) to these."""
        for name, theirs in other.columns.items():
            mine = self.columns.get(name)
            if mine is None:
                self.columns[name] = theirs
                continue
            mine.lo, mine.hi = min(mine.lo, theirs.lo), max(mine.hi, theirs.hi)
            if mine.values is not None and theirs.values is not None:
                mine.values = np.union1d(mine.values, theirs.values)

    def to_dict(self) -> dict:
        """JSON-serialisable, in layout order; a discrete column with more than
        :data:`MAX_DISCRETE_VALUES` values keeps only its range."""
        out = {}
        for name in self.layout.target_columns:
            if name in self.columns:
                entry = self.columns[name]
                if entry.values is not None and len(entry.values) > MAX_DISCRETE_VALUES:
                    entry = ColumnValues(entry.lo, entry.hi)
                out[name] = entry.to_dict()
        return out

    @classmethod
    def from_metadata(cls, layout: Layout, metadata: Mapping) -> TargetValues | None:
        """The record of a store's (or checkpoint's) metadata; ``None`` if it has none
        (stores written before flashsim recorded them)."""
        entries = metadata.get(METADATA_KEY)
        if not entries:
            return None
        columns = {
            name: ColumnValues.from_dict(entry)
            for name, entry in entries.items()
            if name in layout.target_columns
        }
        return cls(layout, columns)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` arrays ``(n_targets,)`` in layout order; ±inf where unrecorded."""
        lo = np.full(self.layout.n_targets, -np.inf)
        hi = np.full(self.layout.n_targets, np.inf)
        for j, name in enumerate(self.layout.target_columns):
            if name in self.columns:
                lo[j], hi[j] = self.columns[name].lo, self.columns[name].hi
        return lo, hi
