"""Which rows each rank reads in an epoch, and in which order (pure numpy).

Every loader kind follows the same arithmetic, so they agree on batch counts and on
what "exactly once per epoch" means:

* The epoch's *stream* is the split's rows in a seeded order. For the chunked kinds it
  is the store's units (zarr chunks, webdataset samples) with their *groups* (a zarr
  chunk on its own; a webdataset shard of samples, read sequentially) in the order
  of a permutation drawn from ``(seed, epoch)``; rows keep store order inside a unit.
* Rank ``r`` of ``W`` takes the contiguous *segment* of stream positions
  ``[r*S, (r+1)*S)`` with ``S = ceil(N / W)`` rows per rank. The last rank's segment
  wraps to the start of the stream, so at most ``W - 1`` rows (the first ones of the
  epoch's order) appear twice: the documented padding that gives every rank the same
  number of rows and batches. With ``drop_last`` instead, ``S = N // W`` and every rank
  then keeps only whole batches: ``(S // batch_size) * batch_size`` rows; the rest of
  its (shuffled) segment is dropped for this epoch.
* A rank's segment is cut into *pieces* (one unit, or part of one at the segment's
  ends), ``buffer_chunks`` consecutive pieces form a *window*, and a window's rows are
  shuffled together with a permutation drawn from ``(seed, epoch, rank, window)``.
  Batches are consecutive slices of the concatenated shuffled windows.

Everything is a function of ``(seed, epoch, rank, world_size)`` and the store's unit
sizes, so a resumed loader can jump straight to any batch (:meth:`EpochPlan.locate`).

Examples
--------
>>> plan = chunk_plan(np.array([4, 4, 4]), seed=0, epoch=0, rank=0, world_size=2,
...                   batch_size=2, drop_last=False, shuffle=True, buffer_chunks=2)
>>> plan.rows, plan.n_batches, int(plan.window_rows.sum())
(6, 3, 6)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rows_per_rank(n_rows: int, world_size: int, drop_last: bool) -> int:
    """Rows in one rank's segment: ``ceil(N/W)`` (padded) or ``N // W`` with ``drop_last``."""
    return n_rows // world_size if drop_last else -(-n_rows // world_size)


def batches_per_rank(n_rows: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches one rank yields per epoch (the same on every rank)."""
    s = rows_per_rank(n_rows, world_size, drop_last)
    return s // batch_size if drop_last else -(-s // batch_size)


def rows_yielded(n_rows: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Rows one rank yields per epoch (its segment, or its whole batches with ``drop_last``)."""
    s = rows_per_rank(n_rows, world_size, drop_last)
    return s // batch_size * batch_size if drop_last else s


def segment(n_rows: int, world_size: int, rank: int, drop_last: bool) -> list[tuple[int, int]]:
    """Stream positions ``[start, stop)`` of ``rank``'s segment; the padding wraps to 0.

    >>> segment(10, 3, 2, drop_last=False)
    [(8, 10), (0, 2)]
    """
    s = rows_per_rank(n_rows, world_size, drop_last)
    if n_rows == 0 or s == 0:
        return []
    out = []
    pos, stop = rank * s, (rank + 1) * s
    while pos < stop:
        a = pos % n_rows
        take = min(stop - pos, n_rows - a)
        out.append((a, a + take))
        pos += take
    return out


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """Generator for ``(seed, epoch)`` and a sub-stream tag (independent streams)."""
    return np.random.default_rng([int(seed), int(epoch), *map(int, stream)])


def group_order(n_groups: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order of the unit groups in the epoch's stream (the same on every rank)."""
    if not shuffle:
        return np.arange(n_groups)
    return epoch_rng(seed, epoch, 0).permutation(n_groups)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's reading plan for one epoch of a chunked store.

    Attributes:
        pieces: ``(P, 3)`` int64, rows ``[lo, hi)`` of unit ``pieces[i, 0]``
            (``lo, hi`` local to the unit), in stream order.
        window_bounds: ``(n_windows + 1,)`` window ``w`` is ``pieces[bounds[w]:bounds[w+1]]``.
        window_rows: ``(n_windows,)`` rows in each window.
        rows: rows this rank yields this epoch (``<= window_rows.sum()`` with ``drop_last``).
        n_batches: batches this rank yields this epoch.
    """

    pieces: np.ndarray
    window_bounds: np.ndarray
    window_rows: np.ndarray
    rows: int
    n_batches: int
    seed: int
    epoch: int
    rank: int
    shuffle: bool

    @property
    def n_windows(self) -> int:
        return len(self.window_rows)

    def window_pieces(self, w: int) -> np.ndarray:
        """``(k, 3)`` pieces of window ``w``: unit, lo, hi."""
        return self.pieces[self.window_bounds[w] : self.window_bounds[w + 1]]

    def window_order(self, w: int) -> np.ndarray | None:
        """Row permutation of window ``w`` (``None``: keep order, when not shuffling)."""
        if not self.shuffle:
            return None
        return epoch_rng(self.seed, self.epoch, 1, self.rank, w).permutation(
            int(self.window_rows[w])
        )

    def locate(self, row: int) -> tuple[int, int]:
        """``(window, offset)`` of the rank's ``row``-th yielded row (resume point)."""
        ends = np.cumsum(self.window_rows)
        w = int(np.searchsorted(ends, row, side="right"))
        return w, row - (int(ends[w - 1]) if w else 0)


def chunk_plan(
    unit_rows: np.ndarray,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    shuffle: bool,
    buffer_chunks: int,
    group_sizes: np.ndarray | None = None,
) -> EpochPlan:
    """Plan one epoch for ``rank`` over units of ``unit_rows`` rows each.

    Args:
        unit_rows: ``(U,)`` rows per unit (zarr chunk, webdataset sample), store order.
        group_sizes: ``(G,)`` consecutive units per group (webdataset: samples per
            shard); groups are shuffled, units inside a group keep their order.
            ``None``: every unit is its own group.
        buffer_chunks: pieces per shuffle window.
    """
    unit_rows = np.asarray(unit_rows, dtype=np.int64)
    n_rows = int(unit_rows.sum())
    if group_sizes is None:
        group_sizes = np.ones(len(unit_rows), dtype=np.int64)
    group_first = np.concatenate([[0], np.cumsum(group_sizes)[:-1]]).astype(np.int64)
    order = group_order(len(group_sizes), seed, epoch, shuffle)
    # Units in stream order: the units of each group, groups in the shuffled order.
    if len(order):
        units = np.concatenate(
            [np.arange(group_first[g], group_first[g] + group_sizes[g]) for g in order]
        ).astype(np.int64)
    else:
        units = np.zeros(0, np.int64)
    stream_end = np.cumsum(unit_rows[units])
    stream_start = stream_end - unit_rows[units]

    pieces = []
    for a, b in segment(n_rows, world_size, rank, drop_last):
        first = int(np.searchsorted(stream_end, a, side="right"))
        last = int(np.searchsorted(stream_start, b, side="left"))
        idx = np.arange(first, last)
        lo = np.maximum(a - stream_start[idx], 0)
        hi = np.minimum(b, stream_end[idx]) - stream_start[idx]
        pieces.append(np.stack([units[idx], lo, hi], axis=1))
    pieces_arr = np.concatenate(pieces) if pieces else np.zeros((0, 3), np.int64)
    pieces_arr = pieces_arr[pieces_arr[:, 2] > pieces_arr[:, 1]]

    bounds = np.append(np.arange(0, len(pieces_arr), buffer_chunks), len(pieces_arr))
    sizes = pieces_arr[:, 2] - pieces_arr[:, 1]
    window_rows = np.add.reduceat(sizes, bounds[:-1]) if len(sizes) else np.zeros(0, np.int64)
    return EpochPlan(
        pieces=pieces_arr,
        window_bounds=bounds,
        window_rows=window_rows.astype(np.int64),
        rows=rows_yielded(n_rows, world_size, batch_size, drop_last),
        n_batches=batches_per_rank(n_rows, world_size, batch_size, drop_last),
        seed=seed,
        epoch=epoch,
        rank=rank,
        shuffle=shuffle,
    )
