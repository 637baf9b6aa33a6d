"""loaders: everything that feeds the trainer, behind one entry point.

>>> import loaders
>>> ld = loaders.open("shards", object="jets", batch_size=2048, device="cuda")  # doctest: +SKIP
>>> for x, y in ld:   # x: targets (B, 17), y: conditioning (B, 14), float32 on cuda
...     ...
>>> ld.set_epoch(1); sd = ld.state_dict()   # order = f(seed, epoch); resume mid-epoch

Kinds (:data:`KINDS`):

* ``chunked`` (:class:`ChunkedZarrLoader`): whole zarr chunks, chunk order shuffled,
  rows mixed in a window of ``buffer_chunks`` chunks, background prefetch, pinned
  memory and non-blocking copies on CUDA. Memory independent of the dataset size.
* ``webdataset`` (:class:`WebDatasetLoader`): the same over webdataset tar shards.
* ``resident`` (:class:`DeviceResidentLoader`): the whole split on the device,
  batches drawn with a per-epoch permutation and ``index_select``.
* ``auto``: ``resident`` when the split fits ``memory_budget_bytes``, else ``chunked``
  (``webdataset`` for a webdataset-only directory).
* ``original-jets``, ``original-muons`` (:mod:`loaders.original`): faithful copies
  of the original per-row datasets behind a standard DataLoader, for benchmarks.

All kinds read only the store format (:mod:`flashsim.store`), never ``pipelines``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from flashsim.devices import resolve_device
from flashsim.store import LOADER_KINDS
from loaders.base import BaseLoader, LoaderOptions
from loaders.chunked import ChunkedZarrLoader
from loaders.original import OriginalJetsDataset, OriginalLoader, OriginalMuonsDataset
from loaders.resident import DeviceResidentLoader, split_bytes
from loaders.sources import StoreInfo, locate, open_units
from loaders.webdataset_loader import WebDatasetLoader

KINDS = LOADER_KINDS

_LOADER_CLASSES: dict[str, type[BaseLoader]] = {
    "chunked": ChunkedZarrLoader,
    "webdataset": WebDatasetLoader,
    "resident": DeviceResidentLoader,
}
"""The kinds that are one class each (``auto`` picks one; the originals share one)."""

HOST_BUDGET_FRACTION = 0.25
"""``auto`` on the CPU: resident if the split takes at most this fraction of available RAM."""
DEVICE_BUDGET_FRACTION = 0.5
"""``auto`` on CUDA: resident if the split takes at most this fraction of free device memory."""


def default_memory_budget(device: torch.device) -> int:
    """Bytes ``auto`` lets the resident loader use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEVICE_BUDGET_FRACTION)
    import psutil

    return int(psutil.virtual_memory().available * HOST_BUDGET_FRACTION)


def open(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "train",
    *,
    object: str | None = None,
    kind: str = "auto",
    batch_size: int = 2048,
    shuffle: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    prefetch: int = 2,
    buffer_chunks: int = 4,
    memory_budget_bytes: int | None = None,
) -> BaseLoader:
    """Open a loader of ``(x, y)`` batches over one split of a prepared dataset.

    Args:
        data: a store (``shards/jets.zarr``, ``shards/jets-wds``, ``shards/jets.h5``),
            a directory written by ``flashsim prep`` (then ``object`` picks the store;
            the format follows the kind: chunked -> zarr, webdataset -> webdataset,
            original-* -> hdf5, resident/auto -> any, zarr first), or for
            ``original-muons`` a list of HDF5 files.
        split: ``"train"`` or ``"val"``.
        object: the layout, ``"jets"``, ``"muons"``, ``"jets-run3"`` (needed when a
            directory holds stores of several).
        kind: one of :data:`KINDS`.
        batch_size: rows per batch.
        shuffle: shuffle rows (order a function of ``(seed, epoch)``); ``False`` keeps
            store order.
        seed: non-negative seed of the order.
        device: where the batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        drop_last: drop each rank's last partial batch (and the ``< world_size``
            rows that do not divide evenly) instead of padding with repeated rows.
        rank, world_size: this process's share; default from ``torch.distributed``
            when initialised, else 0 and 1.
        num_workers: original kinds and webdataset: DataLoader worker processes;
            chunked: decode threads (0: up to 4); resident: load threads.
        prefetch: windows (original kinds: batches per worker) prepared ahead.
        buffer_chunks: chunks (samples) whose rows are mixed in one shuffle window.
        memory_budget_bytes: ``auto``: bytes the split may take to be made resident
            (default: half the free CUDA memory, or a quarter of the available RAM).

    Returns:
        A loader: iterate it for ``(x, y)``; ``len()`` is batches per epoch for this
        rank; ``set_epoch``, ``state_dict``, ``load_state_dict``; attributes
        ``layout``, ``metadata``, ``n_rows``, ``kind``.

    Raises:
        FlashSimError: unknown kind or split, missing store, a store the kind cannot
            read, wrong object, bad arguments.
    """
    store = locate(data, kind, object)
    options = LoaderOptions(
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        device=device,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        prefetch=prefetch,
        buffer_chunks=buffer_chunks,
    )
    if kind == "auto":
        kind = _auto_kind(store, split, resolve_device(device), memory_budget_bytes)
    if kind in ("original-jets", "original-muons"):
        return OriginalLoader(store, split, options, kind=kind)
    return _LOADER_CLASSES[kind](store, split, options)


def _auto_kind(store: StoreInfo, split: str, device: torch.device, budget: int | None) -> str:
    """``resident`` if the split fits the budget, else the streaming kind for the format."""
    units = open_units(store, split)
    need = split_bytes(units.n_rows, store.layout.n_columns)
    if budget is None:
        budget = default_memory_budget(device)
    if need <= budget:
        return "resident"
    return "webdataset" if store.format == "webdataset" else "chunked"


__all__ = [
    "KINDS",
    "BaseLoader",
    "ChunkedZarrLoader",
    "DeviceResidentLoader",
    "LoaderOptions",
    "OriginalJetsDataset",
    "OriginalLoader",
    "OriginalMuonsDataset",
    "WebDatasetLoader",
    "open",
]
