"""Reading a store chunk by chunk, checked against its chunk record.

:func:`read_chunks` yields every chunk of a split (a zarr chunk, a webdataset sample, a
``chunk_rows`` slab of an HDF5 dataset) with what went wrong reading it;
:func:`checked_blocks` yields the rows and refuses the first absent, short or damaged
chunk (``flashsim info`` statistics, bench's derived stores); :func:`verify_store`
checks every chunk against the row counts and checksums of :mod:`flashsim.integrity`
and names every damaged one (``flashsim info --verify``). The store is read directly
(zarr, tarfile, h5py): ``pipelines`` does not depend on ``loaders``.

Examples
--------
>>> print(verify_store("shards/jets.zarr"))  # doctest: +SKIP
shards/jets.zarr: all 26 chunks (25,405 rows) match their xxh3_64 checksums.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashsim.errors import StoreError
from flashsim.integrity import CHECKSUM, chunk_record
from flashsim.store import (
    HDF5_SPLIT_DATASETS,
    SPLITS,
    WDS_MANIFEST,
    detect_format,
    read_metadata,
)

REPAIR = (
    "`flashsim info --verify STORE` lists every damaged chunk; re-create the store with "
    "`flashsim prep`."
)


@dataclass
class Chunk:
    """Chunk ``index`` of a split: where it is, its rows (``None`` if unreadable) and
    ``error``, what prevented reading it. An unreadable shard stands for ``count`` chunks."""

    index: int
    where: str
    rows: np.ndarray | None = None
    error: str | None = None
    count: int = 1


def read_chunks(path: str | os.PathLike, split: str, meta: dict | None = None) -> Iterator[Chunk]:
    """Every chunk of ``split`` of the store at ``path``, in order; never raises for a
    damaged chunk (its :attr:`Chunk.error` says what is wrong)."""
    p = Path(path)
    meta = read_metadata(p) if meta is None else meta
    fmt = detect_format(p)
    if fmt == "zarr":
        yield from _zarr_chunks(p, split, meta)
    elif fmt == "webdataset":
        yield from _wds_chunks(p, split)
    else:
        yield from _hdf5_chunks(p, split, meta)


def _zarr_chunks(p: Path, split: str, meta: dict) -> Iterator[Chunk]:
    import zarr

    try:
        arr = zarr.open_group(p, mode="r")[split]
        if not isinstance(arr, zarr.Array):
            raise TypeError(f"{split!r} is a group, not an array")
    except Exception as err:  # a deleted array (KeyError), damaged zarr.json
        raise StoreError(
            f"{p} has no readable {split!r} array ({type(err).__name__}: {err}); the store "
            "is damaged. Re-create it with `flashsim prep`."
        ) from None
    step = arr.chunks[0]
    recorded = chunk_record(meta, split) is not None
    for i, start in enumerate(range(0, arr.shape[0], step)):
        where = str(p / split / arr.metadata.encode_chunk_key((i, 0)))
        if recorded and not Path(where).is_file():  # older stores may leave out fill chunks
            yield Chunk(i, where, error="is missing")
            continue
        try:
            yield Chunk(i, where, np.asarray(arr[start : start + step]))
        except Exception as err:  # codec errors surface as RuntimeError, ValueError, ...
            yield Chunk(i, where, error=f"cannot be decoded ({type(err).__name__}: {err})")


def _wds_chunks(p: Path, split: str) -> Iterator[Chunk]:
    try:
        shards = json.loads((p / WDS_MANIFEST).read_text())["splits"][split]["shards"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(
            f"{p / WDS_MANIFEST} does not describe a {split!r} split ({err!r}); re-create "
            "the store with `flashsim prep --format webdataset`."
        ) from None
    index = 0
    for shard in shards:
        path, expected = p / shard["name"], len(shard["sample_rows"])
        got = 0
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    # extractfile gives None for a member that is not a file: skipped, then
                    # counted as a missing sample below
                    f = tar.extractfile(member) if member.name.endswith(".npy") else None
                    if f is not None:
                        data = f.read()
                        rows = np.load(io.BytesIO(data), allow_pickle=False)
                        yield Chunk(index + got, f"{path} sample {member.name}", rows)
                        got += 1
        except (OSError, tarfile.TarError, EOFError, ValueError) as err:
            what = "is missing" if not path.exists() else f"cannot be read ({err})"
            error = f"{what} (samples {got} to {expected - 1})"
            yield Chunk(index + got, str(path), error=error, count=max(expected - got, 0))
        else:
            if got != expected:
                error = f"holds {got} samples; the manifest lists {expected}"
                yield Chunk(index + got, str(path), error=error, count=max(expected - got, 0))
        index += expected


def _hdf5_chunks(p: Path, split: str, meta: dict) -> Iterator[Chunk]:
    import h5py

    name = HDF5_SPLIT_DATASETS[split]
    record = chunk_record(meta, split)
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise StoreError(f"{p} cannot be opened by HDF5 ({err}); re-create it.") from None
    with f:
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.dtype.kind != "f":
            raise StoreError(
                f"{p} has no float dataset {name!r} of shape (N, n_columns) (found "
                f"{getattr(ds, 'dtype', None)} {getattr(ds, 'shape', None)}); re-create it with "
                "`flashsim prep --format hdf5`."
            )
        sizes = record.rows if record is not None else None
        step = int(meta.get("chunk_rows") or (ds.chunks[0] if ds.chunks else 65536))
        starts = np.cumsum(sizes) - sizes if sizes is not None else range(0, ds.shape[0], step)
        for i, start in enumerate(starts):
            stop = int(start + (sizes[i] if sizes is not None else step))
            where = f"{p}:{name} rows {int(start)} to {min(stop, ds.shape[0]) - 1}"
            try:
                yield Chunk(i, where, ds[int(start) : stop])
            except Exception as err:  # HDF5 reports damaged data as OSError
                yield Chunk(i, where, error=f"cannot be read ({err})")
        if sizes is not None and ds.shape[0] != sizes.sum():
            error = f"holds {ds.shape[0]} rows; the metadata records {int(sizes.sum())}"
            yield Chunk(len(sizes), f"{p}:{name}", error=error, count=0)


def _problems(path: Path, split: str, meta: dict) -> Iterator[tuple[Chunk, str | None]]:
    """Every chunk with what is wrong with it (``None``: whole), then a chunk count check."""
    record = chunk_record(meta, split)
    covered = 0
    for chunk in read_chunks(path, split, meta):
        covered += chunk.count
        problem = chunk.error  # set exactly when the chunk could not be decoded
        if chunk.rows is not None and record is not None:
            problem = record.problem(chunk.index, chunk.rows)
        yield chunk, problem
    if record is not None and covered != len(record.rows):
        error = f"holds {covered} chunks; the metadata records {len(record.rows)}"
        yield Chunk(covered, f"{path} ({split})", error=error, count=0), error


def checked_blocks(path: str | os.PathLike, split: str) -> Iterator[np.ndarray]:
    """The rows of ``split``, chunk by chunk; an absent, short or damaged chunk (or one that
    differs from its recorded checksum) raises :class:`StoreError`."""
    p = Path(path)
    for chunk, problem in _problems(p, split, read_metadata(p)):
        if problem is not None or chunk.rows is None:
            raise StoreError(f"{chunk.where} {problem}; the store is damaged. {REPAIR}")
        yield chunk.rows


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_store`."""

    path: Path
    verifiable: bool
    """False for stores written before format version 2 (no checksums recorded)."""
    chunks: int = 0
    rows: int = 0
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verifiable and not self.damaged

    def __str__(self) -> str:
        if self.damaged:
            head = f"{self.path}: {len(self.damaged)} of {self.chunks} chunks are damaged:"
            tail = "Re-create the store with `flashsim prep` (or restore it from a copy)."
            return "\n".join([head, *(f"  {d}" for d in self.damaged), tail])
        if not self.verifiable:
            return (
                f"{self.path}: cannot verify: the store records no chunk checksums (it was "
                f"written before store format version 2). All {self.chunks} chunks "
                f"({self.rows:,} rows) decode; re-create it with `flashsim prep` to make it "
                "verifiable."
            )
        return (
            f"{self.path}: all {self.chunks} chunks ({self.rows:,} rows) match their "
            f"{CHECKSUM} checksums."
        )


def verify_store(path: str | os.PathLike) -> VerifyReport:
    """Read every chunk of every split and check it against the store's chunk record."""
    p = Path(path)
    meta = read_metadata(p)
    report = VerifyReport(p, verifiable=all(chunk_record(meta, s) is not None for s in SPLITS))
    for split in SPLITS:
        for chunk, problem in _problems(p, split, meta):
            report.chunks += chunk.count
            if problem is None and chunk.rows is not None:
                report.rows += len(chunk.rows)
            else:
                report.damaged.append(f"{split} chunk {chunk.index}: {chunk.where} {problem}")
    return report
