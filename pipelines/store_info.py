"""Describe a store: its metadata in readable form and per-column min/mean/max/std.

Statistics are computed chunk by chunk (one chunk of rows in memory at a time), for
zarr, webdataset and HDF5 stores alike. This module reads stores directly (zarr,
tarfile, h5py; :mod:`pipelines.verify`) so that ``pipelines`` does not depend on
``loaders``; every chunk read is checked against the store's chunk record.

Examples
--------
>>> print(describe_store("shards/jets.zarr"))  # doctest: +SKIP
jets store (zarr) at shards/jets.zarr
...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashsim.integrity import chunk_record
from flashsim.store import SPLITS, read_metadata, store_layout
from pipelines.verify import checked_blocks


def iter_blocks(path: str | os.PathLike, split: str) -> Iterator[np.ndarray]:
    """Yield the rows of ``split`` of the store at ``path``, one chunk at a time, each
    checked against the store's chunk record (:func:`pipelines.verify.checked_blocks`)."""
    return checked_blocks(path, split)


@dataclass
class ColumnStats:
    """Per-column statistics over ``rows`` rows (float64 arrays of n_columns)."""

    rows: int
    min: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    std: np.ndarray
    """Population standard deviation."""


def column_stats(path: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> ColumnStats:
    """min/mean/max/std of every column over ``splits``, computed chunk-wise (bounded
    memory; chunk means and squared deviations merged pairwise, which stays accurate
    for columns whose mean is large compared with their spread)."""
    n_columns = len(read_metadata(path)["layout"]["columns"])
    lo = np.full(n_columns, np.inf)
    hi = np.full(n_columns, -np.inf)
    mean = np.zeros(n_columns)
    m2 = np.zeros(n_columns)  # sum of squared deviations from the running mean
    rows = 0
    for split in splits:
        for block in iter_blocks(path, split):
            if not len(block):
                continue
            block = np.asarray(block, dtype=np.float64)
            lo = np.minimum(lo, block.min(axis=0))
            hi = np.maximum(hi, block.max(axis=0))
            n_b = len(block)
            mean_b = block.mean(axis=0)
            m2_b = ((block - mean_b) ** 2).sum(axis=0)
            delta = mean_b - mean
            total = rows + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (rows * n_b / total)
            rows = total
    if not rows:
        nan = np.full(n_columns, np.nan)
        return ColumnStats(0, nan, nan.copy(), nan.copy(), nan.copy())
    return ColumnStats(rows, lo, mean, hi, np.sqrt(m2 / rows))


def _count(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def describe_store(path: str | os.PathLike, stats: bool = True) -> str:
    """A readable description of the store at ``path`` (metadata, then column statistics)."""
    p = Path(path)
    meta = read_metadata(p)
    layout = store_layout(meta, path=str(p))
    rows = meta.get("rows", {})
    lines = [
        f"{meta.get('object')} store ({meta.get('format')}) at {p}",
        f"  rows: train {_count(rows.get('train'))}, val {_count(rows.get('val'))}"
        f"   chunk rows: {meta.get('chunk_rows')}",
        f"  source: {meta.get('source_format')}; seed {meta.get('seed')}; "
        f"flashsim {meta.get('tool_version')}; created {meta.get('created')}",
    ]
    records = [r for s in SPLITS if (r := chunk_record(meta, s)) is not None]
    if len(records) == len(SPLITS):
        lines.append(
            f"  integrity: {' + '.join(str(len(r.rows)) for r in records)} chunks recorded "
            f"(row counts, xxh3_64); `flashsim info --verify {p}` checks them all"
        )
    else:
        lines.append(
            f"  integrity: no chunk checksums (store format version "
            f"{meta.get('format_version', 1)}); it cannot be verified"
        )
    dropped = meta.get("dropped", {})
    lines.append(
        f"  matched objects: {meta.get('matched', '?')}, dropped rows: {dropped.get('rows', 0)}"
    )
    for reason, info in dropped.items():
        if isinstance(info, dict):
            cols = ", ".join(f"{c} {n}" for c, n in info.get("by_column", {}).items())
            lines.append(f"    {reason.replace('_', ' ')}: {info.get('rows')} rows ({cols})")
    options = meta.get("options", {})
    if options:
        lines.append("  options: " + "; ".join(f"{k}={v}" for k, v in options.items()))
    for inp in meta.get("inputs", []):
        n = inp.get("events", inp.get("rows"))
        unit = "events" if "events" in inp else "rows"
        sha = (inp.get("sha256") or "")[:12]
        lines.append(
            f"  input: {inp.get('path')} ({n} {unit}, {inp.get('size_bytes')} B, sha256 {sha}...)"
        )
    for sub in meta.get("substitutions", []):
        lines.append(f"  substitution: {sub.get('branch')} <- {sub.get('substitute')}")
    for own in meta.get("generation_branches", []):  # jets-run3's ParT tagger, per generation
        lines.append(f"  {own.get('branch')}: {own.get('description')} ({own.get('profile')})")
    steps: dict[str, list[str]] = {}
    for entry in meta.get("preprocessing", []):
        steps.setdefault(entry["column"], []).append(entry["formula"])
    col_stats = column_stats(p) if stats else None
    lines.append("")
    header = (
        f"  {'#':>3} {'column':<24} {'role':<5} {'min':>11} {'mean':>11} {'max':>11} "
        f"{'std':>11}  preprocessing"
    )
    lines.append(header)
    for j, name in enumerate(layout.columns):
        role = "cond" if j < layout.n_conditioning else "tgt"
        if col_stats is not None:
            nums = " ".join(
                f"{_fmt(v[j]):>11}"
                for v in (col_stats.min, col_stats.mean, col_stats.max, col_stats.std)
            )
        else:
            nums = " ".join([f"{'':>11}"] * 4)
        lines.append(f"  {j:>3} {name:<24} {role:<5} {nums}  {' ; '.join(steps.get(name, []))}")
    return "\n".join(lines)
