"""Streaming store writers: zarr v3, webdataset and HDF5 (the original FlashSim format).

All three share one interface (:class:`StoreWriter`): rows arrive in blocks of any
size through :meth:`~StoreWriter.append`, are buffered up to ``chunk_rows`` and written
as whole-row chunks, so memory stays bounded by one chunk per split whatever the
input size. :meth:`~StoreWriter.close` writes the metadata and, through
:func:`flashsim.outputs.atomic_output`, moves the store to its final name; an
exception inside the ``with`` block leaves nothing under that name.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "jets.zarr"
>>> with open_writer(out, "zarr", n_columns=31, chunk_rows=4) as w:
...     w.append("train", np.ones((10, 31), np.float32))
...     w.append("val", np.zeros((3, 31), np.float32))
...     w.metadata = {"object": "jets"}
>>> import zarr
>>> zarr.open_group(out, mode="r")["train"].shape
(10, 31)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flashsim.integrity import ChunkLog
from flashsim.layouts import DTYPE
from flashsim.outputs import atomic_output
from flashsim.store import (
    FORMAT_VERSION,
    HDF5_SPLIT_DATASETS,
    META_KEY,
    SPLITS,
    WDS_MANIFEST,
)

if TYPE_CHECKING:
    import webdataset as wds
    from zarr.core.array_spec import ArrayConfigParams

DEFAULT_CHUNK_BYTES = 4 * 2**20
"""Target uncompressed chunk size (design: 1-8 MB of whole rows)."""

DEFAULT_SHARD_CHUNKS = 8
"""webdataset: chunks (samples) per tar shard, so even 2 M rows give several shards to split."""


def default_chunk_rows(n_columns: int) -> int:
    """Rows per chunk: the power of two nearest to 4 MiB of float32 rows (32768 for jets)."""
    rows = DEFAULT_CHUNK_BYTES / (n_columns * DTYPE.itemsize)
    return int(2 ** round(np.log2(rows)))


class StoreWriter:
    """Base class: buffers rows per split and hands whole chunks to ``_write_chunk``.

    Subclasses implement ``_open``, ``_write_chunk(split, rows)`` and ``_finish``.
    ``metadata`` must be set (a dict) before the writer is closed.
    """

    format: str = ""

    def __init__(self, path: Path, n_columns: int, chunk_rows: int | None = None) -> None:
        self.path = path
        self.n_columns = n_columns
        self.chunk_rows = chunk_rows or default_chunk_rows(n_columns)
        self.metadata: dict | None = None
        self.rows = dict.fromkeys(SPLITS, 0)
        self._pending: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self._pending_rows = dict.fromkeys(SPLITS, 0)
        self._chunks = ChunkLog(SPLITS)
        self._open()

    def append(self, split: str, rows: np.ndarray) -> None:
        """Add ``rows`` (``(n, n_columns)``, cast to float32) to ``split``."""
        if rows.ndim != 2 or rows.shape[1] != self.n_columns:
            raise ValueError(f"expected rows of shape (n, {self.n_columns}), got {rows.shape}")
        if len(rows) == 0:
            return
        self._pending[split].append(np.ascontiguousarray(rows, dtype=DTYPE))
        self._pending_rows[split] += len(rows)
        if self._pending_rows[split] >= self.chunk_rows:
            self._flush(split, final=False)

    def _flush(self, split: str, final: bool) -> None:
        if not self._pending[split]:
            return
        block = np.concatenate(self._pending[split])
        n_full = len(block) // self.chunk_rows * self.chunk_rows
        cut = len(block) if final else n_full
        for start in range(0, cut, self.chunk_rows):
            chunk = block[start : min(start + self.chunk_rows, cut)]
            self._write_chunk(split, chunk)
            self._chunks.add(split, chunk)
            self.rows[split] += len(chunk)
        rest = block[cut:]
        self._pending[split] = [rest] if len(rest) else []
        self._pending_rows[split] = len(rest)

    def close(self) -> None:
        """Flush the partial last chunks and write the metadata."""
        for split in SPLITS:
            self._flush(split, final=True)
        if self.metadata is None:
            raise RuntimeError("StoreWriter.metadata must be set before close()")
        # Set after the caller's keys, so that metadata copied from another store
        # (bench's derived stores) cannot carry that store's version or chunk record.
        meta = {"format_version": FORMAT_VERSION, **self.metadata}
        meta.update(
            format_version=FORMAT_VERSION,
            format=self.format,
            rows=dict(self.rows),
            chunk_rows=self.chunk_rows,
            integrity=self._chunks.to_dict(),
        )
        self._finish(meta)

    def _open(self) -> None:
        raise NotImplementedError

    def _write_chunk(self, split: str, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self, meta: dict) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Release open files after a failure (the partial store is then removed)."""


class ZarrWriter(StoreWriter):
    """zarr v3 group with arrays ``train``/``val`` of shape (N, n_columns), chunks of
    ``chunk_rows`` whole rows, Blosc-LZ4 with byte shuffle (fast to decode)."""

    format = "zarr"

    def _open(self) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        self._group = zarr.open_group(self.path, mode="w", zarr_format=3)
        codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=DTYPE.itemsize)
        # zarr leaves out chunks equal to the fill value by default; write them all, so
        # that an absent chunk file always means a damaged store. Row-major (zarr's default
        # order) stated: mypy, checking for Python 3.10, reads ArrayConfigParams' keys as
        # required (zarr imports NotRequired from typing only on 3.11+).
        config: ArrayConfigParams = {"order": "C", "write_empty_chunks": True}
        self._arrays = {
            split: self._group.create_array(
                split,
                shape=(0, self.n_columns),
                chunks=(self.chunk_rows, self.n_columns),
                dtype=DTYPE,
                compressors=codec,
                fill_value=0.0,
                config=config,
            )
            for split in SPLITS
        }

    def _write_chunk(self, split: str, rows: np.ndarray) -> None:
        arr = self._arrays[split]
        start = arr.shape[0]
        arr.resize((start + len(rows), self.n_columns))
        arr[start:] = rows

    def _finish(self, meta: dict) -> None:
        self._group.attrs[META_KEY] = meta


class WebDatasetWriter(StoreWriter):
    """Directory of tar shards ``{split}-{k:06d}.tar``; each sample is one chunk of rows
    (key ``{split}-{i:08d}``, a single ``rows.npy`` of shape (n, n_columns)), never one
    row per file. ``manifest.json`` lists shards with their samples' row counts."""

    format = "webdataset"

    def __init__(self, *args, shard_chunks: int = DEFAULT_SHARD_CHUNKS, **kwargs) -> None:
        self.shard_chunks = shard_chunks
        super().__init__(*args, **kwargs)

    def _open(self) -> None:
        self.path.mkdir(parents=True)
        self._shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self._tars: dict[str, wds.TarWriter] = {}
        self._samples = dict.fromkeys(SPLITS, 0)

    def _write_chunk(self, split: str, rows: np.ndarray) -> None:
        import webdataset as wds

        shards = self._shards[split]
        if not shards or len(shards[-1]["sample_rows"]) >= self.shard_chunks:
            if split in self._tars:
                self._tars[split].close()
            name = f"{split}-{len(shards):06d}.tar"
            self._tars[split] = wds.TarWriter(str(self.path / name))
            shards.append({"name": name, "sample_rows": []})
        key = f"{split}-{self._samples[split]:08d}"
        self._tars[split].write({"__key__": key, "rows.npy": rows})
        shards[-1]["sample_rows"].append(len(rows))
        self._samples[split] += 1

    def _finish(self, meta: dict) -> None:
        for tar in self._tars.values():
            tar.close()
        manifest = {
            META_KEY: meta,
            "splits": {
                split: {"rows": self.rows[split], "shards": self._shards[split]} for split in SPLITS
            },
        }
        (self.path / WDS_MANIFEST).write_text(json.dumps(manifest, indent=1))

    def abort(self) -> None:
        # Unclosed tar streams flush at garbage collection and print "Exception ignored"
        # tracebacks when the disk is full; close them (and their files) now, quietly.
        for tar in self._tars.values():
            with contextlib.suppress(Exception):
                tar.tarstream.close()
            with contextlib.suppress(Exception):
                tar.stream.close()
        self._tars.clear()


class HDF5Writer(StoreWriter):
    """The original FlashSim HDF5 format: dataset ``data`` (train rows) and ``val``,
    float32 (N, n_columns), chunked by whole rows; metadata as a JSON file attribute."""

    format = "hdf5"

    def _open(self) -> None:
        import h5py

        self._file = h5py.File(self.path, "w")
        self._dsets = {
            split: self._file.create_dataset(
                HDF5_SPLIT_DATASETS[split],
                shape=(0, self.n_columns),
                maxshape=(None, self.n_columns),
                chunks=(min(self.chunk_rows, _hdf5_chunk_rows(self.n_columns)), self.n_columns),
                dtype=DTYPE,
            )
            for split in SPLITS
        }

    def _write_chunk(self, split: str, rows: np.ndarray) -> None:
        _check_free_space(self.path, rows.nbytes + HDF5_SPACE_MARGIN)
        ds = self._dsets[split]
        start = ds.shape[0]
        try:
            ds.resize(start + len(rows), axis=0)
            ds[start:] = rows
            # Flushed chunk by chunk so that a full disk fails here, where abort() can
            # still release the file, rather than in close().
            self._file.flush()
        except RuntimeError as err:  # HDF5 reports some failed writes as RuntimeError
            raise _hdf5_os_error(err, self.path) from None

    def _finish(self, meta: dict) -> None:
        self._file.attrs[META_KEY] = json.dumps(meta)
        try:
            self._file.close()
        except RuntimeError as err:  # HDF5 reports a failed final write as RuntimeError
            raise _hdf5_os_error(err, self.path) from None

    def abort(self) -> None:
        # After a failed write (full disk) HDF5 crashes the interpreter at exit
        # (segfault) when it flushes the still-open file again. Emptying the file (the
        # partial store is removed anyway) frees the space that flush needs, and closing
        # the file id releases it; a plain File.close() does not.
        with contextlib.suppress(Exception):
            os.ftruncate(self._file.id.get_vfd_handle(), 0)
        with contextlib.suppress(Exception):
            self._file.id.close()
        with contextlib.suppress(Exception):
            self._file.close()


HDF5_SPACE_MARGIN = 4 * 2**20
"""Free bytes kept beyond each HDF5 chunk write, for HDF5's metadata and the final close."""


def _check_free_space(path: Path, needed: int) -> None:
    # h5py cannot recover from a failed write: after one, the interpreter crashes at exit
    # (segfault) whatever we close. So a write that would not fit is refused beforehand
    # (the dataset is uncompressed: its size is known); flush() and abort() are the
    # fallback when another process fills the disk meanwhile.
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _hdf5_os_error(err: Exception, path: Path) -> Exception:
    """An ``OSError`` with the errno HDF5 put in its message ("errno = 28"), else ``err``."""
    found = re.search(r"errno = (\d+)", str(err))
    if found is None:
        return err
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def _hdf5_chunk_rows(n_columns: int) -> int:
    # Largest power of two of rows under 1 MiB: h5py's default chunk cache holds 1 MiB,
    # and the original per-row datasets re-decompress a chunk per row read when it
    # does not fit (3.4x slower for muons' 52 columns at 8192 rows).
    return int(2 ** np.floor(np.log2(2**20 / (n_columns * DTYPE.itemsize))))


WRITERS: dict[str, type[StoreWriter]] = {
    w.format: w for w in (ZarrWriter, WebDatasetWriter, HDF5Writer)
}


@contextlib.contextmanager
def open_writer(
    path: str | os.PathLike,
    fmt: str,
    n_columns: int,
    chunk_rows: int | None = None,
    overwrite: bool = False,
) -> Iterator[StoreWriter]:
    """Open a ``fmt`` writer whose store appears at ``path`` only when the block succeeds.

    Set ``writer.metadata`` inside the block. On an exception the partial store is
    removed and an existing store at ``path`` is left untouched.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        writer = WRITERS[fmt](tmp, n_columns, chunk_rows)
        try:
            yield writer
            writer.close()
        except BaseException:
            writer.abort()
            raise


def write_store(
    path: str | os.PathLike,
    fmt: str,
    splits: dict[str, np.ndarray],
    metadata: dict,
    chunk_rows: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write in-memory ``{"train": rows, "val": rows}`` as one store (tests, benchmarks)."""
    n_columns = next(iter(splits.values())).shape[1]
    with open_writer(path, fmt, n_columns, chunk_rows, overwrite) as writer:
        for split, rows in splits.items():
            writer.append(split, rows)
        writer.metadata = metadata
    return Path(path)
