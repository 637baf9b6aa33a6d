"""The data a benchmark reads: one store per format, all holding the same rows.

Every loader must read exactly the same rows for the comparison to be fair: the
chunked and resident loaders read the zarr store, the webdataset loader the tar shards,
the original per-row datasets the HDF5 file (the original FlashSim format). Where the
stores come from (:func:`prepare_bench_data`):

* ``--data DIR_OR_STORE``: the stores found there; any missing format is derived from
  one that exists, row for row, with :mod:`pipelines.writers`, into the cache directory
  (the user's directory is never modified);
* no ``--data``: ``shards/`` if it holds a store of the object (same completion), else
  toy data made with :func:`flashsim.toy.generate_toy` and :func:`pipelines.prep.prep`,
  cached under ``<cache_dir>/toy-<object>-<rows>-seed<seed>-<code hash>/`` and reused
  next time (not after the toy generator, prep or the writers change).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashsim.errors import StoreError
from flashsim.options import ZARR
from flashsim.outputs import atomic_output
from flashsim.store import (
    DEFAULT_DATA_DIR,
    FORMATS,
    SPLITS,
    detect_format,
    find_store,
    read_metadata,
    store_layout,
    store_path,
)

DEFAULT_CACHE_DIR = Path("bench-out") / "data"
"""Where derived stores and toy data are cached (git-ignored)."""

QUICK_ROWS = {"jets": 200_000, "muons": 60_000}
"""Training rows of the ``--quick`` toy data. Fewer muons: the original muon dataset
reads row by row with h5py (a few thousand rows/s) and a load trial reads two epochs."""

DEFAULT_ROWS = 200_000
"""Minimum training rows of toy data made for a full run."""

_DERIVED_KEYS = ("format", "rows", "chunk_rows", "format_version")


def format_for_kind(kind: str) -> str:
    """The store format the benchmark gives a loader kind: its preferred one in
    :data:`loaders.sources.KIND_FORMATS` (originals: HDF5, webdataset: tar shards,
    chunked/resident/auto: zarr)."""
    from loaders.sources import KIND_FORMATS

    return KIND_FORMATS[kind][0]


def rows_for_run(batch_size: int, warmup: int, steps: int, minimum: int = DEFAULT_ROWS) -> int:
    """Training rows for toy data: at least ``minimum`` and enough that the training
    warm-up and timed steps fit in one epoch with a margin."""
    needed = math.ceil(1.25 * batch_size * (warmup + steps))
    return max(minimum, needed)


@dataclass
class BenchData:
    """The stores of one object that a benchmark reads.

    Attributes:
        object: ``"jets"`` or ``"muons"``.
        stores: ``{format: path}`` for every format needed.
        rows: rows per split (``{"train": n, "val": m}``), the same in every store.
        source: ``"given"`` (``--data``), ``"shards"`` (the default directory) or ``"toy"``.
        derived: formats written by the benchmark from another store's rows.
        prepare_s: seconds spent making toy data or deriving stores (0 when cached).
        notes: what was done, for the report.
    """

    object: str
    stores: dict[str, Path]
    rows: dict[str, int]
    source: str
    derived: list[str] = field(default_factory=list)
    prepare_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "object": self.object,
            "stores": {f: str(p) for f, p in self.stores.items()},
            "rows": dict(self.rows),
            "source": self.source,
            "derived": list(self.derived),
            "prepare_s": self.prepare_s,
        }


# Reading the rows of any store, in storage order ------------------------------------------
def iter_rows(path: str | os.PathLike, split: str) -> Iterator[np.ndarray]:
    """Blocks of rows ``(n, n_columns)`` float32 of ``split`` of the store at ``path``, in
    storage order, one chunk at a time, each checked against the store's chunk record (a
    damaged source must not be copied into derived stores)."""
    from pipelines.verify import checked_blocks

    return checked_blocks(path, split)


def derive_store(source: Path, fmt: str, dest: Path) -> Path:
    """Write the rows of store ``source`` (both splits, same order) as a ``fmt`` store at
    ``dest``, with the same chunking and metadata plus ``derived_from``."""
    from pipelines.writers import open_writer

    meta = read_metadata(source)
    layout = store_layout(meta, path=str(source))
    kept = {k: v for k, v in meta.items() if k not in _DERIVED_KEYS}
    kept["derived_from"] = {"path": str(source), "format": meta.get("format")}
    with open_writer(dest, fmt, layout.n_columns, chunk_rows=meta.get("chunk_rows")) as writer:
        for split in SPLITS:
            for block in iter_rows(source, split):
                writer.append(split, block)
        writer.metadata = kept
    return dest


def code_fingerprint() -> str:
    """Short hash of the code that makes benchmark data (toy generator, prep, writers,
    layouts, transforms): cached data made by other code is not reused, since e.g. the
    HDF5 chunking decides how fast the original per-row datasets read."""
    import flashsim.toy
    import pipelines

    roots = [Path(flashsim.toy.__file__).parent, Path(pipelines.__file__).parent]
    files = [f for r in roots for f in sorted(r.glob("*.py"))]
    here = Path(__file__).parent.parent
    files += [here / "layouts.py", here / "transforms.py", here / "store.py"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


def _derived_dir(cache_dir: Path, source: Path) -> Path:
    # Keyed by the source's absolute path and modification time (a re-prepared source
    # gets fresh derived stores) and by the writers' code.
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_mtime_ns}|{code_fingerprint()}"
    return cache_dir / f"derived-{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _stores_in(data: Path, obj: str, formats: Iterable[str]) -> dict[str, Path]:
    """The stores of ``obj`` already present at ``data`` (a store or a directory).

    Raises:
        StoreError: ``data`` is a store of another object.
    """
    try:
        fmt = detect_format(data)
    except StoreError:
        fmt = None
    if fmt is not None:
        store_layout(read_metadata(data), obj, str(data))
        return {fmt: data}
    found = {}
    for fmt in formats:
        with contextlib.suppress(StoreError):
            found[fmt] = find_store(data, obj, fmt)
    return found


def _complete(
    obj: str, found: dict[str, Path], formats: tuple[str, ...], cache_dir: Path, source_kind: str
) -> BenchData:
    if not found:
        raise StoreError(f"no {obj} store found")  # caller's message replaces this
    metas = {f: read_metadata(p) for f, p in found.items()}
    for f, p in found.items():
        store_layout(metas[f], obj, str(p))
    # The source for derived formats: zarr (the fastest to read), else HDF5, else wds.
    src_fmt = next(f for f in FORMATS if f in found)
    src = found[src_fmt]
    rows = {s: int(metas[src_fmt]["rows"][s]) for s in SPLITS}
    for f, m in metas.items():
        if {s: int(m["rows"][s]) for s in SPLITS} != rows:
            raise StoreError(
                f"{found[f]} holds {m['rows']} rows but {src} holds {rows}: they are not the "
                "same data, so the loaders would not read the same rows. Point --data at one "
                "`flashsim prep` output, or at a single store to derive the others from."
            )
    data = BenchData(obj, dict(found), rows, source_kind)
    missing = [f for f in formats if f not in found]
    if missing:
        t0 = time.perf_counter()
        out = _derived_dir(cache_dir, src)
        for fmt in missing:
            dest = store_path(out, obj, fmt)
            if dest.exists():
                data.notes.append(f"{fmt} store derived from {src} earlier, reused: {dest}")
            else:
                derive_store(src, fmt, dest)
                data.notes.append(f"{fmt} store derived from the rows of {src}: {dest}")
            data.stores[fmt] = dest
            data.derived.append(fmt)
        data.prepare_s = time.perf_counter() - t0
    return data


def prepare_bench_data(
    obj: str,
    formats: Iterable[str],
    data: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    toy_rows: int = DEFAULT_ROWS,
    seed: int = 0,
    use_shards: bool = True,
    progress: bool = False,
    min_shard_rows: int = 0,
) -> BenchData:
    """Find or make the stores of ``obj`` in every format of ``formats``, same rows in all.

    Args:
        obj: ``"jets"`` or ``"muons"``.
        formats: formats needed (see :func:`format_for_kind`).
        data: a store or a directory of stores (``flashsim prep --out``); ``None``: use
            ``shards/`` when it holds the object (and ``use_shards``), else toy data.
        cache_dir: where toy data and derived stores go (never inside ``data``).
        toy_rows: training rows wanted when toy data is made.
        seed: seed of the toy generation and of prep.
        use_shards: whether ``shards/`` may be used when ``data`` is ``None``.
        progress: show the toy generation's and prep's progress bars.
        min_shard_rows: training rows ``shards/`` must hold to be used; fewer (say the
            few hundred jets of a sample file) cannot feed the run, so toy data is made.

    Raises:
        StoreError: ``data`` holds no store of ``obj``, or stores that differ in rows.
    """
    formats = tuple(dict.fromkeys(formats))
    cache_dir = Path(cache_dir)
    if data is not None:
        found = _stores_in(Path(data), obj, FORMATS)
        if not found:
            find_store(data, obj)  # raises the standard "no data / no store" message
        return _complete(obj, found, formats, cache_dir, "given")
    if use_shards:
        found = _stores_in(DEFAULT_DATA_DIR, obj, FORMATS) if DEFAULT_DATA_DIR.is_dir() else {}
        if found:
            train_rows = read_metadata(next(iter(found.values())))["rows"]["train"]
            if train_rows >= min_shard_rows:
                return _complete(obj, found, formats, cache_dir, "shards")
            note = (
                f"{DEFAULT_DATA_DIR}/ holds only {train_rows:,} {obj} training rows, fewer "
                f"than the {min_shard_rows:,} this run needs: toy data was made instead "
                "(pass --data to insist)"
            )
            toy = make_toy_data(obj, formats, cache_dir, toy_rows, seed, progress)
            toy.notes.insert(0, note)
            return toy
    return make_toy_data(obj, formats, cache_dir, toy_rows, seed, progress)


PILOT_EVENTS = 4000
"""Toy events of the pilot run that measures how many rows of an object one event gives."""


def toy_events_for(obj: str, rows: int, workdir: Path, seed: int = 0) -> int:
    """Toy events needed for ``rows`` training rows of ``obj`` (with a 10 % margin).

    The yield per event (jets ~5, muons ~0.5 in ttbar, after matching, cleaning and the
    validation split) is measured on a small pilot through the same generator and
    ``prep``, so it stays right whatever the toy model or the split become.
    """
    from flashsim.toy import generate_toy
    from pipelines.prep import prep

    pilot = workdir / "pilot"
    pilot.mkdir(parents=True)
    generate_toy(pilot / "pilot.root", PILOT_EVENTS, seed=seed + 1)
    prep([pilot / "pilot.root"], pilot, objects=(obj,), formats=(ZARR,), seed=seed, progress=False)
    per_event = read_metadata(store_path(pilot, obj, ZARR))["rows"]["train"] / PILOT_EVENTS
    shutil.rmtree(pilot)
    if per_event <= 0:
        raise StoreError(
            f"The toy generator gave no {obj} rows in {PILOT_EVENTS} events, so no benchmark "
            "data can be made. Pass prepared data with --data instead."
        )
    return math.ceil(1.1 * rows / per_event)


def make_toy_data(
    obj: str,
    formats: tuple[str, ...],
    cache_dir: Path,
    rows: int,
    seed: int = 0,
    progress: bool = False,
) -> BenchData:
    """Toy NanoAOD ttbar events (:func:`flashsim.toy.generate_toy`) prepared into every
    format of ``formats`` (:func:`pipelines.prep.prep`), cached by object, rows, seed and
    :func:`code_fingerprint`."""
    from flashsim.events import branch_types
    from flashsim.toy import generate_toy
    from pipelines.branches import required_branches
    from pipelines.prep import prep

    lacking = sorted(set(required_branches(obj)) - set(branch_types()))
    if lacking:
        raise StoreError(
            f"The toy generator cannot make {obj} rows: its events have no {lacking[0]} "
            f"(nor {len(lacking) - 1} more branches the {obj} layout reads). Prepare a store "
            f"from real NanoAOD (`flashsim prep FILE --layout {obj} --out DIR`) and pass it "
            "with --data DIR."
        )
    final = cache_dir / f"toy-{obj}-{rows}-seed{seed}-{code_fingerprint()}"
    t0 = time.perf_counter()
    have = _stores_in(final, obj, FORMATS) if final.is_dir() else {}
    if not have:
        with atomic_output(final, overwrite=True) as tmp:
            tmp.mkdir(parents=True)
            n_events = toy_events_for(obj, rows, tmp, seed)
            root = tmp / "ttbar_toy.root"
            generate_toy(root, n_events, seed=seed, progress=progress)
            prep([root], tmp, objects=(obj,), formats=tuple(FORMATS), seed=seed, progress=progress)
            root.unlink()  # the stores are what is cached; the ROOT file is rebuilt on demand
        have = _stores_in(final, obj, FORMATS)
        made = True
    else:
        made = False
    bench = _complete(obj, have, formats, cache_dir, "toy")
    bench.prepare_s = time.perf_counter() - t0 if made else bench.prepare_s
    bench.notes.insert(
        0,
        (
            f"toy data made in {bench.prepare_s:.0f} s: {final}"
            if made
            else f"toy data reused from {final}"
        )
        + f" ({bench.rows['train']:,} train rows of {obj})",
    )
    return bench
