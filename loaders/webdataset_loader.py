"""WebDatasetLoader: the chunked loader's plan over webdataset tar shards.

Samples are whole row blocks (``rows.npy``), read with the webdataset library: per
epoch and rank a ``wds.DataPipeline`` runs

1. the shard list, shuffled from ``(seed, epoch)`` and split by node and by worker:
   one read per (window, shard) from :func:`loaders.plan.chunk_plan` with shards as
   the shuffled groups;
2. ``wds.SimpleShardList`` + ``wds.tarfile_to_samples`` over each shard, keeping the
   samples (and row ranges) the plan asks for;
3. window assembly and one gather per window (:class:`loaders.windows.WindowBuffer`).

webdataset's own ``split_by_node`` deals whole shards round-robin, which gives ranks
different row counts whenever shards differ in size; the plan splits the shuffled
shard *stream* at row boundaries instead, so every rank gets the same number of
batches and the union over ranks is the split, exactly once (plus the documented
padding). With ``num_workers > 0`` a ``torch.utils.data.DataLoader`` runs the
pipeline in worker processes, worker ``k`` building windows ``k, k + n, ...``; the
batches are identical to ``num_workers=0`` (the DataLoader returns windows in order;
we check). Otherwise a background thread prefetches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flashsim.errors import StoreError
from flashsim.layouts import Layout
from loaders.plan import EpochPlan
from loaders.prefetch import BackgroundIterator
from loaders.sources import WebDatasetUnits
from loaders.windows import Product, WindowBuffer, WindowedLoader


def shard_reads(plan: EpochPlan, units: WebDatasetUnits, windows: Iterable[int]) -> Iterator[dict]:
    """Pipeline source: one ``{"url", "window", "wanted"}`` per run of a window's pieces
    in one shard; ``wanted`` maps sample position -> ``[(lo, hi, dest_row), ...]``."""
    for w in windows:
        pieces = plan.window_pieces(w)
        dest = np.concatenate([[0], np.cumsum(pieces[:, 2] - pieces[:, 1])])
        shards = units.shard_of_unit[pieces[:, 0]]
        runs = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
        for a, b in zip(runs, [*runs[1:], len(pieces)], strict=True):
            wanted: dict[int, list[tuple[int, int, int]]] = {}
            for i in range(a, b):
                unit, lo, hi = (int(v) for v in pieces[i])
                wanted.setdefault(int(units.position[unit]), []).append((lo, hi, int(dest[i])))
            yield {"url": str(units.shards[shards[a]]), "window": w, "wanted": wanted}


def read_wanted(reads: Iterator[dict], units: WebDatasetUnits) -> Iterator[tuple]:
    """Pipeline stage: ``(window, dest_row, rows)`` for every wanted row range."""
    for read in reads:
        wanted = read["wanted"]
        last = max(wanted)
        for pos, sample in enumerate(units.samples(read["url"])):
            if pos in wanted:
                rows = units.decode(sample, read["url"])
                for lo, hi, dest in wanted[pos]:
                    yield read["window"], dest, rows[lo:hi]
            if pos >= last:
                break
        else:
            raise StoreError(
                f"{read['url']} ended before sample {last}; it does not match "
                "manifest.json. Re-create the store."
            )


def assemble_windows(
    pieces: Iterator[tuple],
    plan: EpochPlan,
    layout: Layout,
    whole_rows: bool,
    pin: bool,
) -> Iterator[tuple[int, Product]]:
    """Pipeline stage: ``(window, product)`` once all of a window's rows are in."""
    window, filled = -1, 0
    buffer: WindowBuffer | None = None

    def finish(buffer: WindowBuffer) -> tuple[int, Product]:
        if filled != buffer.n_rows:
            raise StoreError(f"window {window}: read {filled} of {buffer.n_rows} planned rows")
        return window, buffer.product(plan.window_order(window), pin=pin)

    for w, dest, block in pieces:
        if buffer is None or w != window:
            if buffer is not None:
                yield finish(buffer)
            window, filled = w, 0
            buffer = WindowBuffer(int(plan.window_rows[w]), layout, whole_rows)
        buffer.put(dest, block)
        filled += len(block)
    if buffer is not None:
        yield finish(buffer)


class WindowDataset(IterableDataset):
    """Windows ``first, first+1, ...`` of one rank's epoch; in a DataLoader worker ``k``
    of ``n`` only windows ``first+k, first+k+n, ...``. Yields ``(window, product)``."""

    def __init__(
        self, units: WebDatasetUnits, plan: EpochPlan, first: int, whole_rows: bool, pin: bool
    ) -> None:
        self.units, self.plan, self.first = units, plan, first
        self.whole_rows, self.pin = whole_rows, pin

    def __iter__(self) -> Iterator[tuple[int, Product]]:
        import webdataset as wds

        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        windows = range(self.first + k, self.plan.n_windows, n)
        pipeline = wds.DataPipeline(
            partial(shard_reads, self.plan, self.units, windows),
            partial(read_wanted, units=self.units),
            partial(
                assemble_windows,
                plan=self.plan,
                layout=self.units.layout,
                whole_rows=self.whole_rows,
                pin=self.pin and info is None,
            ),
        )
        return iter(pipeline)


def in_window_order(items: Iterator[tuple[int, Product]], first: int) -> Iterator[Product]:
    """Products in window order (a guard: the DataLoader already returns them so)."""
    waiting: dict[int, Product] = {}
    expected = first
    for w, product in items:
        waiting[w] = product
        while expected in waiting:
            yield waiting.pop(expected)
            expected += 1
    if waiting:
        raise RuntimeError(f"windows {sorted(waiting)} arrived but window {expected} never did")


class WebDatasetLoader(WindowedLoader):
    """Shuffled batches from a webdataset store (tar shards of row-block samples).

    Args:
        store: the located store (:func:`loaders.sources.locate`).
        num_workers: DataLoader worker processes building windows (0: one thread).
        prefetch: windows prepared ahead (per worker with workers).
        buffer_chunks: samples whose rows are mixed in one shuffle window.

    ``options`` (or keywords): :class:`~loaders.base.LoaderOptions`, as in
    :func:`loaders.open`.
    """

    kind = "webdataset"
    units: WebDatasetUnits
    unit_types = (WebDatasetUnits,)
    wrong_format = "The webdataset loader reads webdataset stores; {path} is {format}."

    def _order_key(self) -> dict:
        return {
            **super()._order_key(),
            "units": len(self.units.unit_rows),
            "buffer_chunks": self.buffer_chunks,
        }

    def _products(self, plan: EpochPlan, window: int) -> Iterator[Product]:
        cuda = self.device.type == "cuda"
        dataset = WindowDataset(self.units, plan, window, whole_rows=cuda, pin=cuda)
        if self.num_workers > 0:
            source = DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch,
                pin_memory=cuda,
            )
            return in_window_order(iter(source), window)
        return BackgroundIterator(in_window_order(iter(dataset), window), self.prefetch)
