"""The store format: naming, metadata and discovery (stores are created atomically
with :func:`flashsim.outputs.atomic_output`).

This is where ``pipelines`` (which write stores) and ``loaders`` (which read them) meet;
neither imports the other. A prepared dataset is a directory holding one store per
object and format::

    shards/jets.zarr        zarr v3 group, arrays ``train`` and ``val`` (N, 31) float32
    shards/jets-wds/        webdataset: ``train-000000.tar`` ..., ``manifest.json``
    shards/jets.h5          HDF5, original FlashSim format: ``data`` (train rows), ``val``

Every store carries the same metadata dictionary (see :func:`read_metadata`), under the
zarr group attribute ``"flashsim"``, in ``manifest.json`` for webdataset, and as a JSON
string in the HDF5 file attribute ``"flashsim"``.

Examples
--------
>>> from flashsim.store import store_path
>>> store_path("shards", "jets", "webdataset").as_posix()
'shards/jets-wds'
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Literal

from flashsim import __version__
from flashsim.errors import StoreError
from flashsim.layouts import LAYOUTS, Layout
from flashsim.options import HDF5, STORE_FORMATS, WEBDATASET, ZARR, Choices, StoreFormat

FORMATS: tuple[StoreFormat, ...] = STORE_FORMATS.values
SPLITS: tuple[str, ...] = ("train", "val")
FORMAT_VERSION = 2
"""Version written. 2 added ``integrity`` (per-chunk row counts and checksums,
:mod:`flashsim.integrity`); version 1 stores still open but cannot be verified."""
KNOWN_FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
META_KEY = "flashsim"
WDS_MANIFEST = "manifest.json"
HDF5_SPLIT_DATASETS = {"train": "data", "val": "val"}
"""HDF5 dataset name of each split: ``data`` is the original FlashSim name."""

LoaderKind = Literal["auto", "chunked", "webdataset", "resident", "original-jets", "original-muons"]
LOADER_KINDS: Choices[LoaderKind] = Choices.of("loader kind", LoaderKind)
"""Loader kinds of :func:`loaders.open`; here (torch-free) so the CLI and configs share them."""

DEFAULT_DATA_DIR = Path("shards")
"""Where ``flashsim prep`` writes and ``train``/``bench-loader`` read by default."""

_SUFFIX = {ZARR: ".zarr", WEBDATASET: "-wds", HDF5: ".h5"}


def store_path(out_dir: str | os.PathLike, obj: str, fmt: str) -> Path:
    """Path of the ``fmt`` store of layout ``obj`` (``jets``, ``jets-run3``, ...) inside
    ``out_dir``: ``out_dir/<obj>.zarr``, ``<obj>-wds``, ``<obj>.h5``."""
    return Path(out_dir) / f"{obj}{_SUFFIX[STORE_FORMATS.normalize(fmt, StoreError)]}"


def detect_format(path: str | os.PathLike) -> str:
    """Format of the store at ``path``: ``"zarr"``, ``"webdataset"`` or ``"hdf5"``."""
    p = Path(path)
    if p.is_dir() and ((p / "zarr.json").exists() or p.suffix == ".zarr"):
        return ZARR
    if p.is_dir() and (p / WDS_MANIFEST).exists():
        return WEBDATASET
    if p.is_file() and p.suffix in (".h5", ".hdf5"):
        return HDF5
    raise StoreError(
        f"{p} is not a flashsim store (expected a .zarr directory, a webdataset directory "
        f"with {WDS_MANIFEST}, or an .h5 file). Create one with `flashsim prep INPUT --out DIR`."
    )


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dictionary of the store at ``path``.

    Keys: ``format_version``, ``object``, ``format``, ``layout`` (columns and slices),
    ``preprocessing`` (every transform with parameters and inverse), ``seed``, ``rows``
    (per split), ``dropped`` (rows dropped, by reason), ``inputs`` (paths, sizes,
    sha256, events), ``substitutions``, ``options``, ``chunk_rows``, ``tool_version``,
    ``created``.
    """
    p = Path(path)
    fmt = detect_format(p)
    try:
        if fmt == ZARR:
            meta = json.loads((p / "zarr.json").read_text())["attributes"][META_KEY]
        elif fmt == WEBDATASET:
            meta = json.loads((p / WDS_MANIFEST).read_text())[META_KEY]
        else:
            import h5py

            with h5py.File(p, "r") as f:
                meta = json.loads(f.attrs[META_KEY])
    except (KeyError, OSError, ValueError) as err:
        raise StoreError(
            f"{p} has no readable flashsim metadata ({type(err).__name__}: {err}); it was not "
            "written by `flashsim prep` or is damaged. Re-create it with `flashsim prep`."
        ) from None
    if not isinstance(meta, dict):
        raise StoreError(
            f"{p} has damaged flashsim metadata (a {type(meta).__name__}, not a mapping). "
            "Re-create the store with `flashsim prep`."
        )
    check_format_version(meta, p)
    return meta


def check_format_version(meta: dict, path: str | os.PathLike) -> int:
    """The store format version of ``meta``; a version this flashsim does not know is refused.

    Metadata without ``format_version`` (hand-made stores, as in the tests) reads as 1.
    """
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or version not in KNOWN_FORMAT_VERSIONS:
        known = ", ".join(map(str, KNOWN_FORMAT_VERSIONS))
        raise StoreError(
            f"{path} has store format version {version!r}, which this flashsim "
            f"({__version__}) does not know (it reads versions {known}). Use the flashsim "
            "version that wrote it, or re-create the store with `flashsim prep`."
        )
    return version


def store_layout(meta: dict, expected_object: str | None = None, path: str = "") -> Layout:
    """Check a store's layout against the known ones (and ``expected_object``); return it."""
    obj = meta.get("object")
    if expected_object is not None and obj != expected_object:
        raise StoreError(
            f"{path or 'The store'} holds {obj!r} rows, not {expected_object!r}. "
            f"Pass the {expected_object} store (e.g. "
            f"{store_path(Path(path).parent if path else DEFAULT_DATA_DIR, expected_object, meta.get('format', 'zarr'))}) instead."
        )
    layout = LAYOUTS.get(obj) if isinstance(obj, str) else None
    stored = meta.get("layout")
    columns = stored.get("columns") if isinstance(stored, dict) else None
    if not isinstance(columns, list):
        raise StoreError(
            f"{path or 'The store'} has damaged metadata: 'layout' is "
            f"{type(stored).__name__} {str(stored)[:40]!r}, not a mapping with a list of "
            "columns. Re-create the store with `flashsim prep`."
        )
    if layout is None or len(columns) != layout.n_columns:
        raise StoreError(
            f"{path or 'The store'} has an unknown layout (object {obj!r}, "
            f"{len(columns or [])} columns); flashsim knows "
            + ", ".join(f"{n} ({lay.n_columns})" for n, lay in LAYOUTS.items())
            + "."
        )
    return layout


def check_store(path: str | os.PathLike, meta: dict, obj: str) -> Layout:
    """The store's layout, after checking it holds ``obj`` rows in the known column order."""
    layout = store_layout(meta, expected_object=obj, path=str(path))
    columns = meta.get("layout", {}).get("columns")
    if columns is not None and tuple(columns) != layout.columns:
        raise StoreError(
            f"{path} has {obj} columns in an order flashsim does not know; re-create it with "
            "`flashsim prep`."
        )
    return layout


def find_store(
    data: str | os.PathLike, obj: str, fmt: str | None = None, preference: tuple[str, ...] = FORMATS
) -> Path:
    """Locate the store of ``obj`` given a store path or a directory of stores.

    ``data`` may be a store itself (``shards/jets.zarr``) or a directory written by
    ``flashsim prep --out`` (``shards/``). With ``fmt`` only that format is accepted;
    otherwise the first of ``preference`` that exists is returned.
    """
    p = Path(data)
    with contextlib.suppress(StoreError):
        detect_format(p)
        return p
    if not p.is_dir():
        raise StoreError(
            f"No data at {p}. Prepare it first: `flashsim prep INPUT.root --out {p}/` "
            "(or `flashsim toy --events 100000 --out ttbar_toy.root` to make an input)."
        )
    for candidate in (fmt,) if fmt else preference:
        sp = store_path(p, obj, candidate)
        if sp.exists():
            return sp
    wanted = f"the {fmt} store" if fmt else "a store"
    raise StoreError(
        f"{p} holds no {obj} data ({wanted} such as {store_path(p, obj, fmt or 'zarr')} is "
        f"missing). Run `flashsim prep INPUT --out {p}/ --layout {obj}"
        + (f" --format {fmt}`." if fmt else "`.")
    )
