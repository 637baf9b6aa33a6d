"""Where rows come from: locating a store for a loader kind, and reading its units.

A *unit* is the smallest block a loader reads at once: a zarr chunk, a slab of HDF5
chunks, or a webdataset sample (one ``rows.npy`` block). Every source knows its
units' row counts (``unit_rows``) and can read a whole split (``read_all``);
:class:`ZarrUnits` and :class:`HDF5Units` also read any unit directly
(``read_into``), which is what the chunked loader needs. Webdataset shards are read
sequentially by :mod:`loaders.webdataset_loader`.

Examples
--------
>>> # store = locate("shards", "chunked", obj="jets")   # -> StoreInfo(path=shards/jets.zarr, ...)
>>> # units = open_units(store, "train"); units.read_into(0, 0, 10, out)
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import sys
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashsim.errors import FlashSimError, StoreError
from flashsim.integrity import ChunkRecord, chunk_record
from flashsim.layouts import DTYPE, OBJECTS, Layout
from flashsim.store import (
    HDF5_SPLIT_DATASETS,
    LOADER_KINDS,
    SPLITS,
    WDS_MANIFEST,
    detect_format,
    find_store,
    read_metadata,
    store_layout,
    store_path,
)

KIND_FORMATS: dict[str, tuple[str, ...]] = {
    "auto": ("zarr", "hdf5", "webdataset"),
    "chunked": ("zarr", "hdf5"),
    "webdataset": ("webdataset",),
    "resident": ("zarr", "hdf5", "webdataset"),
    "original-jets": ("hdf5",),
    "original-muons": ("hdf5",),
}
"""Store formats each loader kind reads, in order of preference."""

log = logging.getLogger("flashsim.loaders")

KIND_OBJECT = {"original-jets": "jets", "original-muons": "muons"}
"""The layout each original loader reads (the original trainings' paper layouts)."""


def own_loader_kind(obj: str) -> str:
    """The loader to suggest for layout ``obj``: its original per-row loader where the
    original trainings had one, else ``chunked``."""
    return f"original-{obj}" if f"original-{obj}" in KIND_OBJECT else "chunked"


TARGET_UNIT_BYTES = 4 * 2**20
"""HDF5 units are whole HDF5 chunks grouped to about this many bytes."""


@dataclass(frozen=True)
class StoreInfo:
    """A located store: its path(s), format, metadata and layout.

    ``paths`` has several entries only for ``original-muons`` over several HDF5 files.
    """

    paths: tuple[Path, ...]
    format: str
    metadata: dict
    layout: Layout

    @property
    def path(self) -> Path:
        return self.paths[0]


def locate(
    data: str | os.PathLike | Sequence[str | os.PathLike], kind: str, obj: str | None = None
) -> StoreInfo:
    """Find the store ``kind`` should read in ``data`` (a store, a prep directory, or,
    for ``original-muons``, a list of HDF5 files) and check it fits the kind.

    Raises:
        FlashSimError: unknown kind, object mismatch, missing store, or a store whose
            format the kind cannot read.
    """
    kind = LOADER_KINDS.normalize(kind)
    implied = KIND_OBJECT.get(kind)
    if obj is not None and implied is not None and obj != implied:
        raise FlashSimError(
            f"Loader kind {kind!r} reads {implied}, but object={obj!r} was asked for. "
            f"Use kind={own_loader_kind(obj)!r} or drop the object argument."
        )
    obj = obj or implied
    paths: tuple[Path, ...]
    if isinstance(data, (str, os.PathLike)):
        paths = (_store_for(data, kind, obj),)
    else:
        if kind != "original-muons" and len(data) != 1:
            raise FlashSimError(
                f"Only the original-muons kind reads several files; kind {kind!r} got "
                f"{len(data)}. Pass one store path or a prep directory."
            )
        paths = tuple(_store_for(p, kind, obj) for p in data)
        if not paths:
            raise FlashSimError("No input files given: pass a store path or a prep directory.")
    metas = [read_metadata(p) for p in paths]
    layout = store_layout(metas[0], expected_object=obj, path=str(paths[0]))
    for p, m in zip(paths[1:], metas[1:], strict=True):
        store_layout(m, expected_object=layout.object, path=str(p))
    for p in paths:
        if detect_format(p) == "hdf5":
            _check_hdf5_datasets(p, layout)
    return StoreInfo(paths=paths, format=detect_format(paths[0]), metadata=metas[0], layout=layout)


def _check_hdf5_datasets(path: Path, layout: Layout) -> None:
    """Refuse an HDF5 store whose split datasets are absent or not float32 (N, n_columns)
    (every HDF5 reader, the original loaders included, assumes that)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            found = {n: f.get(n) for n in HDF5_SPLIT_DATASETS.values()}
            bad = {
                n: f"{getattr(d, 'dtype', 'nothing')} {getattr(d, 'shape', '')}".strip()
                for n, d in found.items()
                if not isinstance(d, h5py.Dataset)
                or d.dtype != DTYPE
                or d.ndim != 2
                or d.shape[1] != layout.n_columns
            }
    except OSError as err:
        raise StoreError(f"{path} cannot be opened by HDF5 ({err}); re-create it.") from None
    if bad:
        name, what = next(iter(bad.items()))
        raise StoreError(
            f"{path}:{name} holds {what}; expected float32 (N, {layout.n_columns}). The store "
            "is damaged or was not written by flashsim; re-create it with "
            "`flashsim prep --format hdf5`."
        )


def _store_for(data: str | os.PathLike, kind: str, obj: str | None) -> Path:
    formats = KIND_FORMATS[kind]
    p = Path(data)
    try:
        fmt = detect_format(p)
    except StoreError:
        fmt = None
    if fmt is not None:
        if fmt not in formats:
            readers = [k for k, f in KIND_FORMATS.items() if fmt in f and k != "auto"]
            raise StoreError(
                f"{p} is a {fmt} store, which the {kind!r} loader cannot read (it reads "
                f"{' or '.join(formats)} stores). Use kind={readers[0]!r} for this store, or "
                f"write a {formats[0]} store with `flashsim prep ... --format {formats[0]}`."
            )
        return p
    if p.is_dir() and obj is None:
        present = sorted({o for o in OBJECTS for f in formats if store_path(p, o, f).exists()})
        if len(present) > 1:
            both = "both " if len(present) == 2 else ""
            raise FlashSimError(
                f"{p} holds {both}{' and '.join(present)} stores; pass "
                + " or ".join(f"object={o!r}" for o in present)
                + "."
            )
        obj = present[0] if present else OBJECTS[0]
    if obj is None:  # not a directory: let find_store explain what is missing
        obj = OBJECTS[0]
    return find_store(p, obj, preference=formats)


# --------------------------------------------------------------------------- units

_DAMAGED_ADVICE = (
    "`flashsim info --verify STORE` lists every damaged chunk; re-create the store with "
    "`flashsim prep`."
)


def check_chunk_rows(record: ChunkRecord | None, unit_rows: np.ndarray, where: str) -> None:
    """Refuse a split whose chunk row counts differ from those its metadata records."""
    if record is None or np.array_equal(record.rows, unit_rows):
        return
    raise StoreError(
        f"{where} holds {int(unit_rows.sum())} rows in {len(unit_rows)} chunks, but the "
        f"store's metadata records {record.n_rows} rows in {len(record.rows)} chunks; the "
        f"store is damaged or was edited. {_DAMAGED_ADVICE}"
    )


class ZarrUnits:
    """The chunks of one split array of a zarr v3 store.

    Chunks whose codec chain is exactly ``bytes`` (little endian) + ``blosc`` are
    decoded straight into the caller's buffer with numcodecs (no intermediate copy,
    GIL released; 0.20 s against 0.27 s through zarr for 2 M jet rows); anything else
    falls back to zarr's synchronous indexing of whole chunk ranges.
    """

    def __init__(
        self, path: Path, split: str, layout: Layout, record: ChunkRecord | None = None
    ) -> None:
        import zarr

        self.path, self.split, self.layout = path, split, layout
        try:
            self._array = zarr.open_array(path, path=split, mode="r")
        except Exception as err:  # missing array, damaged metadata
            raise StoreError(
                f"{path} has no readable {split!r} array ({type(err).__name__}: {err}). "
                "Re-create the store with `flashsim prep`."
            ) from None
        shape, chunks = self._array.shape, self._array.chunks
        if len(shape) != 2 or shape[1] != layout.n_columns or chunks[1] != layout.n_columns:
            raise StoreError(
                f"{path}/{split} has shape {shape} and chunks {chunks}; expected (N, "
                f"{layout.n_columns}) in chunks of whole rows. Re-create it with `flashsim prep`."
            )
        self.n_rows = int(shape[0])
        self.chunk_rows = int(chunks[0])
        n_units = -(-self.n_rows // self.chunk_rows)
        self.unit_rows = np.full(n_units, self.chunk_rows, dtype=np.int64)
        if n_units:
            self.unit_rows[-1] = self.n_rows - (n_units - 1) * self.chunk_rows
        self._record = record
        check_chunk_rows(record, self.unit_rows, f"{path}/{split}")
        self._fast = self._fast_chunk_layout()
        self._check_chunks_present()

    def _chunk_file(self, unit: int) -> Path:
        sep = self._fast[0] if self._fast else "/"
        return self.path / self.split / f"c{sep}{unit}{sep}0"

    def _check_chunks_present(self) -> None:
        """Refuse absent chunk files in a store with a chunk record (whose writer wrote
        every chunk); in an older store zarr reads them as the fill value, so warn."""
        if self._fast is None:
            absent = len(self.unit_rows) - int(self._array.nchunks_initialized)
            first = f"{self.path}/{self.split}"
        else:
            files = [self._chunk_file(u) for u in range(len(self.unit_rows))]
            missing = [f for f in files if not f.is_file()]
            absent, first = len(missing), str(missing[0]) if missing else ""
        if not absent:
            return
        if self._record is not None:
            raise StoreError(
                f"{absent} chunk(s) of {self.path}/{self.split} are missing (first: {first}); "
                f"the store is damaged. {_DAMAGED_ADVICE}"
            )
        log.warning(
            "%d chunk(s) of %s/%s are absent (first: %s) and read as the fill value, as zarr "
            "does for chunks it left out; this store has no chunk record to tell that from "
            "damage. Re-create it with `flashsim prep` to make it verifiable.",
            absent,
            self.path,
            self.split,
            first,
        )

    def _fast_chunk_layout(self) -> tuple[str, float] | None:
        """``(key separator, fill value)`` if chunks can be blosc-decoded directly."""
        try:
            meta = json.loads((self.path / self.split / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        codecs = meta.get("codecs", [])
        names = [c.get("name") for c in codecs]
        key = meta.get("chunk_key_encoding", {})
        ok = (
            sys.byteorder == "little"
            and meta.get("data_type") == "float32"
            and names == ["bytes", "blosc"]
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and key.get("name") == "default"
            and not meta.get("storage_transformers")
        )
        if not ok:
            return None
        sep = key.get("configuration", {}).get("separator", "/")
        return sep, float(meta.get("fill_value") or 0.0)

    def read_into(self, unit: int, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``[lo, hi)`` of chunk ``unit`` into ``out`` (``(hi-lo, n_columns)`` float32)."""
        if self._fast is None:
            start = unit * self.chunk_rows
            out[...] = self._array[start + lo : start + hi]
            return
        from numcodecs import blosc

        chunk = self._chunk_file(unit)
        try:
            # Decode straight from the page cache: mmap saves the read() copy (~15 % of
            # the decode time here) and, with fault-around, costs few page faults.
            with (
                open(chunk, "rb", buffering=0) as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
            ):
                if lo == 0 and hi == self.chunk_rows and out.flags.c_contiguous:
                    blosc.decompress(data, out)
                    whole = out
                else:  # edge chunks are stored full size; decode, then keep [lo, hi)
                    tmp = np.empty((self.chunk_rows, self.layout.n_columns), DTYPE)
                    blosc.decompress(data, tmp)
                    whole = tmp[: self.unit_rows[unit]]
                    out[...] = tmp[lo:hi]
        except FileNotFoundError:
            if self._record is None:  # zarr's rule: chunks equal to the fill value are left out
                out[...] = self._fast[1]
                return
            # Writers of recorded stores write every chunk: absent means damaged.
            raise StoreError(
                f"Chunk {chunk} is missing; the store is damaged. {_DAMAGED_ADVICE}"
            ) from None
        except (RuntimeError, ValueError) as err:  # empty or damaged chunk
            raise StoreError(
                f"Chunk {chunk} is damaged: it cannot be decoded ({err}). {_DAMAGED_ADVICE}"
            ) from None
        # XXH3 of the decoded chunk costs ~15 % of its blosc decode (0.18 of 1.3 ms).
        problem = self._record.problem(unit, whole) if self._record is not None else None
        if problem is not None:
            raise StoreError(f"Chunk {chunk} {problem}; the store is damaged. {_DAMAGED_ADVICE}")

    def read_all(self, out: np.ndarray, threads: int = 4) -> None:
        """The whole split into ``out`` (``(n_rows, n_columns)``), chunks decoded in parallel."""
        starts = np.concatenate([[0], np.cumsum(self.unit_rows)])

        def one(u: int) -> None:
            self.read_into(u, 0, int(self.unit_rows[u]), out[starts[u] : starts[u + 1]])

        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(one, range(len(self.unit_rows))))


class HDF5Units:
    """Slabs of whole HDF5 chunks (about 4 MiB) of one split of an HDF5 store.

    h5py serialises all calls behind one lock, so reads do not run in parallel; this
    source exists so ``chunked``/``resident`` also work on an HDF5-only directory.
    """

    def __init__(
        self, path: Path, split: str, layout: Layout, record: ChunkRecord | None = None
    ) -> None:
        import h5py

        self.path, self.split, self.layout = path, split, layout
        name = HDF5_SPLIT_DATASETS[split]
        try:
            self._file = h5py.File(path, "r")
            self._ds = self._file[name]
        except (OSError, KeyError) as err:
            raise StoreError(
                f"{path} has no readable {name!r} dataset ({err}); re-create it with "
                "`flashsim prep --format hdf5`."
            ) from None
        if self._ds.ndim != 2 or self._ds.shape[1] != layout.n_columns or self._ds.dtype != DTYPE:
            raise StoreError(
                f"{path}:{name} holds {self._ds.dtype} of shape {self._ds.shape}; expected "
                f"float32 (N, {layout.n_columns}). Re-create it with `flashsim prep --format hdf5`."
            )
        self.n_rows = int(self._ds.shape[0])
        if record is not None and record.n_rows != self.n_rows:
            raise StoreError(
                f"{path}:{name} holds {self.n_rows} rows but the store's metadata records "
                f"{record.n_rows}; the store is damaged or was edited. {_DAMAGED_ADVICE}"
            )
        row_bytes = layout.n_columns * DTYPE.itemsize
        h5_rows = self._ds.chunks[0] if self._ds.chunks else 8192
        self.chunk_rows = h5_rows * max(1, round(TARGET_UNIT_BYTES / (h5_rows * row_bytes)))
        n_units = -(-self.n_rows // self.chunk_rows)
        self.unit_rows = np.full(n_units, self.chunk_rows, dtype=np.int64)
        if n_units:
            self.unit_rows[-1] = self.n_rows - (n_units - 1) * self.chunk_rows

    def read_into(self, unit: int, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``[lo, hi)`` of unit ``unit`` into ``out``."""
        start = unit * self.chunk_rows
        if out.dtype == self._ds.dtype and out.flags.c_contiguous:
            self._ds.read_direct(out, np.s_[start + lo : start + hi])
        else:
            out[...] = self._ds[start + lo : start + hi]

    def read_all(self, out: np.ndarray, threads: int = 1) -> None:
        """The whole split into ``out``."""
        if self.n_rows:
            self.read_into(0, 0, self.n_rows, out)

    def close(self) -> None:
        self._file.close()


class WebDatasetUnits:
    """The samples (row blocks) of one split of a webdataset store, from its manifest.

    ``group_sizes`` are samples per shard (shards are shuffled as a whole);
    ``shard_of_unit`` and ``position`` locate a sample in its shard.
    """

    def __init__(
        self, path: Path, split: str, layout: Layout, record: ChunkRecord | None = None
    ) -> None:
        self.path, self.split, self.layout = path, split, layout
        self._record = record
        try:
            manifest = json.loads((path / WDS_MANIFEST).read_text())
            shards = manifest["splits"][split]["shards"]
        except (OSError, ValueError, KeyError) as err:
            raise StoreError(
                f"{path / WDS_MANIFEST} does not describe a {split!r} split ({err!r}); "
                "re-create the store with `flashsim prep --format webdataset`."
            ) from None
        self.shards = [path / s["name"] for s in shards]
        missing = [s for s in self.shards if not s.is_file()]
        if missing:
            raise StoreError(
                f"{path} lists shard {missing[0].name} in {WDS_MANIFEST} but the file is "
                f"missing ({len(missing)} missing in all). Re-create the store."
            )
        rows = [np.asarray(s["sample_rows"], dtype=np.int64) for s in shards]
        self.group_sizes = np.array([len(r) for r in rows], dtype=np.int64)
        self.unit_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.shard_of_unit = np.repeat(np.arange(len(rows)), self.group_sizes)
        first = np.concatenate([[0], np.cumsum(self.group_sizes)[:-1]]).astype(np.int64)
        self.position = np.arange(len(self.unit_rows)) - np.repeat(first, self.group_sizes)
        self._first_unit = {str(p): int(f) for p, f in zip(self.shards, first, strict=True)}
        self.n_rows = int(self.unit_rows.sum())
        check_chunk_rows(record, self.unit_rows, f"{path / WDS_MANIFEST} ({split})")

    def samples(self, shard: str | os.PathLike) -> Iterator[dict]:
        """The samples of ``shard`` in order, read with webdataset; a damaged tar file
        becomes a :class:`StoreError`."""
        import webdataset as wds

        pipeline = wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())
        first = self._first_unit.get(str(shard))
        try:
            for pos, sample in enumerate(pipeline):
                if first is not None:
                    sample["__unit__"] = first + pos  # what the manifest says is here
                yield sample
        except (OSError, tarfile.TarError, EOFError) as err:
            # webdataset re-raises with (message, stream, url) as args
            reason = str(err.args[0] if err.args else err).split(" @ <")[0]
            raise StoreError(
                f"Shard {shard} cannot be read ({type(err).__name__}: {reason}); it is "
                f"truncated or damaged. {_DAMAGED_ADVICE}"
            ) from None

    def _check_sample(self, sample: dict, rows: np.ndarray, shard: Path) -> None:
        # Keys are f"{split}-{unit:08d}" (pipelines.writers): the unit's record entry.
        key = str(sample.get("__key__", ""))
        prefix, _, number = key.rpartition("-")
        if self._record is None or prefix != self.split or not number.isdigit():
            return
        expected = sample.get("__unit__", int(number))
        if int(number) != expected:
            raise StoreError(
                f"{shard} holds sample {key!r} where {WDS_MANIFEST} places sample "
                f"{expected}: shards were swapped, renamed or copied. {_DAMAGED_ADVICE}"
            )
        problem = self._record.problem(int(number), rows)
        if problem is not None:
            raise StoreError(
                f"Sample {key!r} of {shard} {problem}; the store is damaged. {_DAMAGED_ADVICE}"
            )

    def decode(self, sample: dict, shard: Path) -> np.ndarray:
        """The ``(n, n_columns)`` float32 rows of one webdataset sample (no copy)."""
        try:
            data = sample["rows.npy"]
            f = io.BytesIO(data)
            version = np.lib.format.read_magic(f)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = header(f)
        except (KeyError, ValueError) as err:
            raise StoreError(
                f"Sample {sample.get('__key__')!r} of {shard} has no valid rows.npy ({err!r}); "
                "re-create the store with `flashsim prep --format webdataset`."
            ) from None
        if dtype != DTYPE or fortran or len(shape) != 2 or shape[1] != self.layout.n_columns:
            raise StoreError(
                f"Sample {sample.get('__key__')!r} of {shard} holds {dtype} {shape} rows; "
                f"expected float32 (n, {self.layout.n_columns})."
            )
        rows = np.frombuffer(data, DTYPE, count=shape[0] * shape[1], offset=f.tell())
        rows = rows.reshape(shape)
        self._check_sample(sample, rows, shard)
        return rows

    def iter_shard(self, shard: Path) -> Iterator[tuple[int, np.ndarray]]:
        """``(position, rows)`` of every sample of ``shard``, in order, read with webdataset."""
        for pos, sample in enumerate(self.samples(shard)):
            yield pos, self.decode(sample, shard)

    def read_all(self, out: np.ndarray, threads: int = 1) -> None:
        """The whole split into ``out``, shard after shard."""
        at = 0
        for shard in self.shards:
            for _, rows in self.iter_shard(shard):
                out[at : at + len(rows)] = rows
                at += len(rows)
        if at != self.n_rows:
            raise StoreError(
                f"{self.path} holds {at} {self.split} rows but {WDS_MANIFEST} says "
                f"{self.n_rows}; the store is damaged. Re-create it."
            )


Units = ZarrUnits | HDF5Units | WebDatasetUnits


def open_units(store: StoreInfo, split: str) -> Units:
    """The unit source of ``split`` of ``store``."""
    if split not in SPLITS:
        raise FlashSimError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    kinds: dict[str, type[Units]] = {
        "zarr": ZarrUnits,
        "hdf5": HDF5Units,
        "webdataset": WebDatasetUnits,
    }
    cls = kinds[store.format]
    return cls(store.path, split, store.layout, chunk_record(store.metadata, split))
