"""Shuffle windows and the batches cut from them (array operations only, no per-row Python).

A *window* is the rows of ``buffer_chunks`` consecutive pieces of a rank's plan
(:mod:`loaders.plan`), permuted once (one gather). Its *product* has the shape the
device wants, so that cutting batches from it costs nothing:

* CPU device: ``(x, y)``: contiguous ``(L, n_targets)`` and ``(L, n_conditioning)``
  float32 tensors; every batch is a pair of zero-copy slices.
* CUDA device: ``(rows,)``: one ``(L, n_columns)`` tensor in pinned host memory; every
  batch slice is copied to the device with ``non_blocking=True`` in one transfer and
  split into ``x``/``y`` there.

Batches are consecutive row ranges of the concatenated products; the few that straddle
two windows are concatenated (one small copy per window). :class:`WindowedLoader` is
what the two kinds that read this way (chunked, webdataset) share.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import numpy as np
import torch

from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import DTYPE, Layout
from loaders.base import BaseLoader, Batch, LoaderOptions
from loaders.plan import EpochPlan, chunk_plan
from loaders.sources import StoreInfo, open_units

Product = tuple[torch.Tensor, ...]


class WindowBuffer:
    """One window's rows while they are read, kept in the layout its product needs.

    CPU: targets and conditioning in two contiguous arrays, split as blocks arrive
    (in the decode threads), so the shuffle is two ``np.take`` of short contiguous
    records. CUDA (``whole_rows``): whole rows, decoded straight into ``rows``.

    Args:
        n_rows: rows in the window.
        whole_rows: keep whole rows (CUDA product) instead of split columns.
    """

    def __init__(self, n_rows: int, layout: Layout, whole_rows: bool) -> None:
        self.layout = layout
        self.whole_rows = whole_rows
        if whole_rows:
            self.rows = np.empty((n_rows, layout.n_columns), DTYPE)
        else:
            self.x = np.empty((n_rows, layout.n_targets), DTYPE)
            self.y = np.empty((n_rows, layout.n_conditioning), DTYPE)
        self.n_rows = n_rows

    def put(self, dest: int, block: np.ndarray) -> None:
        """Store ``block`` (``(k, n_columns)`` rows) at window rows ``[dest, dest + k)``."""
        k = len(block)
        if self.whole_rows:
            self.rows[dest : dest + k] = block
        else:
            self.x[dest : dest + k] = block[:, self.layout.targets]
            self.y[dest : dest + k] = block[:, self.layout.conditioning]

    def product(self, order: np.ndarray | None, pin: bool = False) -> Product:
        """The window permuted by ``order`` (``None``: as read).

        Args:
            pin: put the whole-rows product in pinned memory (not in DataLoader worker
                processes, where the DataLoader pins instead).
        """
        if self.whole_rows:
            out = torch.empty(
                (self.n_rows, self.layout.n_columns), dtype=torch.float32, pin_memory=pin
            )
            if order is None:
                np.copyto(out.numpy(), self.rows)
            else:
                # mode="clip": with out= and the default "raise", numpy gathers into a
                # temporary and copies it over (order is a permutation, clip is a no-op).
                np.take(self.rows, order, axis=0, out=out.numpy(), mode="clip")
            return (out,)
        if order is None:
            return torch.from_numpy(self.x), torch.from_numpy(self.y)
        return (
            torch.from_numpy(np.take(self.x, order, axis=0)),
            torch.from_numpy(np.take(self.y, order, axis=0)),
        )


def slice_batches(
    products: Iterator[Product], offset: int, n_rows: int, batch_size: int
) -> Iterator[list[Product]]:
    """Cut ``batch_size``-row batches from consecutive window products.

    Starts ``offset`` rows into the first product and stops after ``n_rows`` rows
    (the last batch may be short). Each batch is a list of parts, each part a tuple of
    tensor slices (one part unless the batch straddles windows).
    """
    parts: list[Product] = []
    have = 0
    left = n_rows
    for product in products:
        length = len(product[0])
        at = offset
        offset = 0
        while at < length and left > 0:
            take = min(batch_size - have, length - at, left)
            parts.append(tuple(t[at : at + take] for t in product))
            have += take
            at += take
            left -= take
            if have == batch_size or left == 0:
                yield parts
                parts, have = [], 0
        if left == 0:
            return
    if left > 0:
        raise StoreError(
            f"The store ended {left} rows before the epoch's plan; it changed or is damaged "
            "while being read. Re-create it with `flashsim prep`."
        )


class BatchEmitter:
    """Turns a batch's parts into ``(x, y)`` tensors on ``device``."""

    def __init__(self, device: torch.device, layout: Layout) -> None:
        self.device = device
        self.layout = layout
        self.pinned = device.type == "cuda"

    def __call__(self, parts: list[Product]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pinned:
            # One non_blocking host-to-device copy per part (the rows are pinned).
            moved = [p[0].to(self.device, non_blocking=True) for p in parts]
            rows = moved[0] if len(moved) == 1 else torch.cat(moved)
            return (
                rows[:, self.layout.targets].contiguous(),
                rows[:, self.layout.conditioning].contiguous(),
            )
        if len(parts) == 1:
            x, y = parts[0]
        else:  # numpy: torch.cat would wake torch's OpenMP threads for one small copy
            x = torch.from_numpy(np.concatenate([p[0].numpy() for p in parts]))
            y = torch.from_numpy(np.concatenate([p[1].numpy() for p in parts]))
        if self.device.type != "cpu":  # e.g. mps: no pinned path, plain copy
            x, y = x.to(self.device), y.to(self.device)
        return x, y


class WindowedLoader(BaseLoader):
    """A loader that reads whole units in shuffled windows of ``buffer_chunks`` units
    (:func:`loaders.plan.chunk_plan`); subclasses say which units they read and how.

    Attributes:
        unit_types: the unit classes (:mod:`loaders.sources`) this kind reads.
        wrong_format: the error for another store format (``{path}``, ``{format}``).
    """

    unit_types: tuple[type, ...] = ()
    wrong_format = ""

    def _open(self, store: StoreInfo, split: str, options: LoaderOptions) -> int:
        units = open_units(store, split)
        if not isinstance(units, self.unit_types):
            raise FlashSimError(self.wrong_format.format(path=store.path, format=store.format))
        options.check_window()
        self.units = units
        return units.n_rows

    def _ready(self) -> None:
        self._emit = BatchEmitter(self.device, self.layout)

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's reading plan for ``epoch``."""
        return chunk_plan(
            self.units.unit_rows,
            group_sizes=getattr(self.units, "group_sizes", None),
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            shuffle=self.shuffle,
            buffer_chunks=self.buffer_chunks,
        )

    def _batches(self, epoch: int, start_batch: int) -> Generator[Batch, None, None]:
        plan = self.plan(epoch)
        first_row = start_batch * self.batch_size
        window, offset = plan.locate(first_row)
        products = self._products(plan, window)
        try:
            for parts in slice_batches(products, offset, plan.rows - first_row, self.batch_size):
                yield self._emit(parts)
        finally:  # stop the kind's read-ahead (threads, DataLoader workers) now
            close = getattr(products, "close", None)
            if close is not None:
                close()

    def _products(self, plan: EpochPlan, first_window: int) -> Iterator[Product]:
        """The products of windows ``first_window, ...`` of ``plan``, read ahead as the
        kind does it; closed (if it can be) when the epoch ends or is abandoned."""
        raise NotImplementedError
