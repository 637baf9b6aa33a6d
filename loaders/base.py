"""The contract every loader kind keeps: iteration, length, epochs, ranks and resume.

``for x, y in loader`` yields ``x`` = targets ``(B, n_targets)`` and ``y`` =
conditioning ``(B, n_conditioning)``, float32, on the loader's device. The order is a
function of ``(seed, epoch)``; each rank of ``world_size`` gets ``len(loader)``
batches (the same on every rank) from its own part of the epoch (see
:mod:`loaders.plan` for the exact arithmetic and the padding rule).

Epochs and resume
-----------------
* ``set_epoch(e)`` selects the epoch's order. Calling it with the current epoch
  changes nothing, so a resumed position survives the usual
  ``for epoch in range(start, n): loader.set_epoch(epoch)`` loop.
* ``state_dict()`` records the epoch and the batches handed out in it;
  ``load_state_dict(sd)`` on a new loader (same store, seed, batch size, world size,
  ``drop_last``, ``shuffle``, buffer) makes its next iteration yield exactly the
  batches not yet seen. In DDP every rank hands out the same number of batches, so
  one rank's state (e.g. rank 0's checkpoint) resumes every rank.
* Iterating again (without ``load_state_dict``) replays the whole epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flashsim.devices import resolve_device
from flashsim.errors import FlashSimError
from flashsim.layouts import Layout
from loaders.plan import batches_per_rank
from loaders.sources import StoreInfo

Batch = tuple[torch.Tensor, torch.Tensor]


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else torch.distributed's, else ``(0, 1)``."""
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise FlashSimError(
            f"rank={rank}, world_size={world_size} is not a valid distributed setup: "
            "need world_size >= 1 and 0 <= rank < world_size."
        )
    return int(rank), int(world_size)


@dataclass(frozen=True)
class LoaderOptions:
    """The keywords every loader kind shares (documented at :func:`loaders.open`).

    A loader takes them as one object, or as keywords: ``ChunkedZarrLoader(store,
    batch_size=512)`` is ``ChunkedZarrLoader(store, LoaderOptions(batch_size=512))``.
    ``num_workers``, ``prefetch`` and ``buffer_chunks`` mean what each kind says.
    """

    batch_size: int = 2048
    shuffle: bool = True
    seed: int = 0
    device: str | torch.device = "cpu"
    drop_last: bool = False
    rank: int | None = None
    world_size: int | None = None
    num_workers: int = 0
    prefetch: int = 2
    buffer_chunks: int = 4

    @classmethod
    def of(cls, options: LoaderOptions | None = None, **changes: Any) -> LoaderOptions:
        """``options`` (default: the defaults) with ``changes`` applied."""
        return dataclasses.replace(options or cls(), **changes)

    def check_window(self) -> None:
        """Validate the shuffle-window options of the chunked and webdataset loaders."""
        if int(self.buffer_chunks) < 1 or int(self.prefetch) < 1 or int(self.num_workers) < 0:
            raise FlashSimError(
                f"buffer_chunks and prefetch must be >= 1 and num_workers >= 0 (got "
                f"{self.buffer_chunks}, {self.prefetch}, {self.num_workers})."
            )


class BaseLoader:
    """Common state of all loader kinds; subclasses implement :meth:`_open` (and, if
    they need it, :meth:`_ready`) and :meth:`_batches`. Every kind is built as
    ``Kind(store, split, options)`` or ``Kind(store, split, **keywords)``
    (:class:`LoaderOptions`).

    Attributes:
        kind: the loader kind (``"chunked"``, ``"resident"``, ...).
        layout: the store's :class:`~flashsim.layouts.Layout`.
        metadata: the store's metadata dictionary.
        n_rows: rows in the split (all ranks together).
        path: the store read.
    """

    kind = ""

    def __init__(
        self,
        store: StoreInfo,
        split: str = "train",
        options: LoaderOptions | None = None,
        **kwargs: Any,
    ) -> None:
        options = LoaderOptions.of(options, **kwargs)
        n_rows = self._open(store, split, options)
        if int(options.batch_size) < 1:
            raise FlashSimError(
                f"batch_size must be a positive number of rows, got {options.batch_size}."
            )
        if int(options.seed) < 0:
            raise FlashSimError(f"seed must be a non-negative integer, got {options.seed}.")
        self.options = options
        self.store = store
        self.split = split
        self.layout: Layout = store.layout
        self.metadata: dict = store.metadata
        self.path: Path = store.path
        self.n_rows = int(n_rows)
        self.batch_size = int(options.batch_size)
        self.shuffle = bool(options.shuffle)
        self.seed = int(options.seed)
        self.device = resolve_device(options.device)
        self.drop_last = bool(options.drop_last)
        self.rank, self.world_size = resolve_rank(options.rank, options.world_size)
        self.num_workers = int(options.num_workers)
        self.prefetch = int(options.prefetch)
        self.buffer_chunks = int(options.buffer_chunks)
        self.epoch = 0
        self._resume_from = 0
        self._consumed = 0
        self._ready()

    def _open(self, store: StoreInfo, split: str, options: LoaderOptions) -> int:
        """Open the split (checking the store and the kind's options); its row count."""
        raise NotImplementedError

    def _ready(self) -> None:
        """Set up what needs the common attributes (``device``, ``layout``, ...)."""

    # ---------------------------------------------------------------- contract

    def __len__(self) -> int:
        return batches_per_rank(self.n_rows, self.world_size, self.batch_size, self.drop_last)

    def __iter__(self) -> Generator[Batch, None, None]:
        start = self._resume_from
        self._resume_from = 0
        self._consumed = start
        if start >= len(self):
            return
        batches = self._batches(self.epoch, start)
        try:
            for batch in batches:
                self._consumed += 1  # counted when handed out: a checkpoint now includes it
                yield batch
        finally:  # also on `break`: stop prefetch threads / DataLoader workers now
            batches.close()

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._resume_from = 0
            self._consumed = 0

    def state_dict(self) -> dict:
        """Position in the epoch, plus what must match for an exact resume."""
        return {"epoch": self.epoch, "batches_consumed": self._consumed, **self._order_key()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration yields the batches not yet seen."""
        mine = self._order_key()
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(
                f"{k}: saved {theirs[k]!r} vs now {mine[k]!r}" for k in mine if theirs[k] != mine[k]
            )
            raise FlashSimError(
                f"This loader state cannot resume here: the batch order would differ ({diff}). "
                "Open the loader with the same store, seed, batch_size, world_size, shuffle, "
                "drop_last and buffer settings as the run that saved it."
            )
        consumed = int(state["batches_consumed"])
        if not 0 <= consumed <= len(self):
            raise FlashSimError(
                f"Saved loader state says {consumed} batches were consumed, but an epoch has "
                f"{len(self)}; it belongs to another loader."
            )
        self.epoch = int(state["epoch"])
        self._resume_from = consumed
        self._consumed = consumed

    def _order_key(self) -> dict:
        """Everything the batch order depends on (besides the epoch)."""
        return {
            "kind": self.kind,
            "n_rows": self.n_rows,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def _batches(self, epoch: int, start_batch: int) -> Generator[Batch, None, None]:
        """Batches ``start_batch, ...`` of ``epoch`` for this rank."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, split={self.split!r}, "
            f"rows={self.n_rows}, batch_size={self.batch_size}, rank={self.rank}/"
            f"{self.world_size}, device={str(self.device)!r}, batches={len(self)})"
        )
