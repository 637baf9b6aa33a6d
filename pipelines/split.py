"""Seeded train/val split of N rows, applied block by block (memory O(val rows), not O(N)).

The rule when nothing is asked (:func:`val_row_count`): 100 000 validation rows, as
the original work, when the object has at least 1 000 000 rows; otherwise 10 % of the
rows. ``val_rows`` or ``val_fraction`` override it. The validation rows are a seeded
uniform choice among all rows; both splits keep the input order.

Examples
--------
>>> import numpy as np
>>> split = ValSplit.choose(10, 3, seed=0)
>>> train, val = split.take(np.arange(10)[:, None], offset=0)
>>> len(train), len(val)
(7, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashsim.errors import FlashSimError

DEFAULT_VAL_ROWS = 100_000
LARGE_INPUT_ROWS = 1_000_000
DEFAULT_VAL_FRACTION = 0.1
VAL_RULE = (
    f"default: {DEFAULT_VAL_ROWS} rows when an object has >= {LARGE_INPUT_ROWS} rows, "
    f"else {DEFAULT_VAL_FRACTION:.0%} of its rows"
)

_SPLIT_STREAM = 1  # keeps the split's random stream apart from preprocessing's (tag 0)


def check_val_options(val_rows: int | None, val_fraction: float | None) -> None:
    """Reject contradictory or out-of-range ``val_rows``/``val_fraction``."""
    if val_rows is not None and val_fraction is not None:
        raise FlashSimError("Give either --val-rows or --val-fraction, not both.")
    if val_rows is not None and val_rows < 0:
        raise FlashSimError(f"--val-rows must be >= 0, not {val_rows}.")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise FlashSimError(f"--val-fraction must be in [0, 1), not {val_fraction}.")


def val_row_count(
    n_rows: int, val_rows: int | None = None, val_fraction: float | None = None
) -> tuple[int, str]:
    """How many of ``n_rows`` go to validation, and the rule used (for the metadata)."""
    check_val_options(val_rows, val_fraction)
    if val_rows is not None:
        return min(val_rows, n_rows), f"--val-rows {val_rows}"
    if val_fraction is not None:
        return round(n_rows * val_fraction), f"--val-fraction {val_fraction}"
    if n_rows >= LARGE_INPUT_ROWS:
        return DEFAULT_VAL_ROWS, VAL_RULE
    return round(n_rows * DEFAULT_VAL_FRACTION), VAL_RULE


@dataclass(frozen=True)
class ValSplit:
    """Sorted global positions (int64) of the validation rows among ``n_rows``."""

    n_rows: int
    val_positions: np.ndarray

    @classmethod
    def choose(cls, n_rows: int, n_val: int, seed: int, stream: int = 0) -> ValSplit:
        """Draw ``n_val`` of ``n_rows`` positions, seeded by ``(seed, stream)``."""
        rng = np.random.default_rng([seed, _SPLIT_STREAM, stream])
        picks = rng.choice(n_rows, size=n_val, replace=False) if n_val else np.empty(0)
        return cls(n_rows, np.sort(picks.astype(np.int64)))

    @property
    def n_val(self) -> int:
        return len(self.val_positions)

    def take(self, rows: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Split a block holding global rows ``[offset, offset + len(rows))`` into (train, val)."""
        lo, hi = np.searchsorted(self.val_positions, [offset, offset + len(rows)])
        is_val = np.zeros(len(rows), dtype=bool)
        is_val[self.val_positions[lo:hi] - offset] = True
        return rows[~is_val], rows[is_val]
