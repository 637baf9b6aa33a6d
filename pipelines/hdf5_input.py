"""Read FlashSim HDF5 files: a ``data`` dataset of 31 (jets) or 52 (muons) columns.

These rows are already preprocessed (the original FlashSim training files, or an
``.h5`` store written by ``flashsim prep``); prep only re-chunks and re-splits
them. A flashsim-written store also holds a ``val`` dataset and its metadata; both are
used (the rows of ``data`` then ``val``, and the recorded preprocessing).

Examples
--------
>>> info = inspect_hdf5("jets.h5")  # doctest: +SKIP
>>> info.layout.object, info.n_rows  # doctest: +SKIP
('jets', 362)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flashsim.errors import InputError
from flashsim.layouts import DTYPE, Layout, layout_for_width
from flashsim.store import HDF5_SPLIT_DATASETS, META_KEY

if TYPE_CHECKING:
    import h5py  # imported where a file is opened

DATA = HDF5_SPLIT_DATASETS["train"]  # "data", the original FlashSim dataset name
VAL = HDF5_SPLIT_DATASETS["val"]


@dataclass(frozen=True)
class HDF5Info:
    """One HDF5 input: its layout, row counts and (for flashsim stores) metadata."""

    path: Path
    layout: Layout
    n_data: int
    n_val: int
    metadata: dict | None

    @property
    def n_rows(self) -> int:
        return self.n_data + self.n_val


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(
            f"{path} starts like an HDF5 file but h5py cannot open it ({err}). The file is "
            "probably truncated or damaged; copy it again."
        ) from None


def inspect_hdf5(path: str | os.PathLike) -> HDF5Info:
    """Check that ``path`` holds a FlashSim ``data`` dataset (N, 31|52) and describe it.

    Raises:
        InputError: no ``data`` dataset, not 2-D, or neither 31 nor 52 columns.
    """
    import h5py

    p = Path(path)
    with _open(p) as f:
        if DATA not in f or not hasattr(f[DATA], "shape"):
            found = ", ".join(sorted(f.keys())) or "nothing"
            raise InputError(
                f"{p} is an HDF5 file without a 'data' dataset (it holds: {found}). "
                "flashsim prep reads FlashSim HDF5 files, whose rows are in 'data' "
                "(31 columns for jets, 52 for muons)."
            )
        shape, dtype = f[DATA].shape, f[DATA].dtype
        if dtype.kind not in "fiu":
            raise InputError(
                f"{p}: the 'data' dataset holds {dtype} values, not numbers. FlashSim HDF5 "
                "rows are float32 (31 columns for jets, 52 for muons); pass NanoAOD ROOT "
                "files to build such a file."
            )
        layout = layout_for_width(shape[1]) if len(shape) == 2 else None
        if layout is None:
            raise InputError(
                f"{p}: the 'data' dataset has shape {shape}, but FlashSim HDF5 rows have 31 "
                "columns (jets) or 52 columns (muons). This is not a FlashSim training file; "
                "pass NanoAOD ROOT files to build one."
            )
        meta = None
        if META_KEY in f.attrs:
            try:
                meta = json.loads(f.attrs[META_KEY])
            except (TypeError, ValueError):
                meta = None
        n_val = 0
        val = f.get(VAL)
        if (
            meta is not None
            and isinstance(val, h5py.Dataset)
            and val.shape[1:] == shape[1:]
            and val.dtype.kind in "fiu"
        ):
            n_val = int(f[VAL].shape[0])
    return HDF5Info(p, layout, int(shape[0]), n_val, meta)


def iterate_row_steps(
    info: HDF5Info, start: int, stop: int, step_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(step index, rows)`` for rows ``[start, stop)`` of ``data`` followed by ``val``.

    ``start`` must be a multiple of ``step_rows``; rows are float32 ``(n, n_columns)``.
    """
    if start % step_rows:
        raise ValueError("start must be a multiple of step_rows")
    with _open(info.path) as f:
        for lo in range(start, stop, step_rows):
            hi = min(lo + step_rows, stop)
            yield lo // step_rows, _read_rows(f, info, lo, hi)


def _read_rows(f: h5py.File, info: HDF5Info, lo: int, hi: int) -> np.ndarray:
    """Rows ``[lo, hi)`` of ``data`` then ``val`` as float32; a damaged file is an InputError."""
    try:
        parts = []
        if lo < info.n_data:
            parts.append(f[DATA][lo : min(hi, info.n_data)])
        if hi > info.n_data:
            parts.append(f[VAL][max(lo, info.n_data) - info.n_data : hi - info.n_data])
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.asarray(rows, dtype=DTYPE)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"Cannot read rows {lo} to {hi - 1} of {info.path} ({type(err).__name__}: {err}); "
            "the file is damaged or was changed since prep inspected it. Copy it again."
        ) from None
