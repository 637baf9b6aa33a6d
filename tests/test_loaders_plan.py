"""The reading plan (pure numpy): exact coverage, equal shares, windows, resume points."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.plan import (
    batches_per_rank,
    chunk_plan,
    rows_per_rank,
    rows_yielded,
    segment,
)


def single_rank_plan(unit_rows, **settings):
    """:func:`chunk_plan` of rank 0 of 1, seed 0, epoch 0, no drop_last, shuffled windows
    of 2 units; ``settings`` override."""
    kw = dict(seed=0, epoch=0, rank=0, world_size=1, drop_last=False, shuffle=True)
    return chunk_plan(unit_rows, **{**kw, "buffer_chunks": 2, **settings})


def plan_rows(plan, unit_start) -> np.ndarray:
    """Global store row indices of a plan's pieces, in stream order."""
    return np.concatenate(
        [np.arange(unit_start[u] + lo, unit_start[u] + hi) for u, lo, hi in plan.pieces]
        or [np.zeros(0, np.int64)]
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_cover_every_row_with_equal_shares(seed, drop_last):
    rng = np.random.default_rng(seed)
    unit_rows = rng.integers(1, 50, size=rng.integers(1, 40))
    groups = None
    if seed % 2:  # webdataset-like: units grouped in shards
        cuts = np.sort(
            rng.choice(np.arange(1, len(unit_rows)), size=min(3, len(unit_rows) - 1), replace=False)
        )
        groups = np.diff(np.concatenate([[0], cuts, [len(unit_rows)]]))
    n = int(unit_rows.sum())
    unit_start = np.concatenate([[0], np.cumsum(unit_rows)[:-1]])
    for world_size in (1, 2, 3, 5):
        batch = int(rng.integers(1, 30))
        plans = [
            chunk_plan(
                unit_rows,
                group_sizes=groups,
                seed=seed,
                epoch=1,
                rank=r,
                world_size=world_size,
                batch_size=batch,
                drop_last=drop_last,
                shuffle=True,
                buffer_chunks=3,
            )
            for r in range(world_size)
        ]
        share = rows_per_rank(n, world_size, drop_last)
        every = [plan_rows(p, unit_start) for p in plans]
        assert {len(r) for r in every} == {share}
        assert {p.n_batches for p in plans} == {batches_per_rank(n, world_size, batch, drop_last)}
        assert {p.rows for p in plans} == {rows_yielded(n, world_size, batch, drop_last)}
        union = np.concatenate(every)
        if drop_last:
            assert len(np.unique(union)) == len(union) == share * world_size
        else:
            np.testing.assert_array_equal(np.unique(union), np.arange(n))
            assert len(union) - n == share * world_size - n < world_size
        for p in plans:
            assert int(p.window_rows.sum()) == share
            assert all(len(p.window_pieces(w)) <= 3 for w in range(p.n_windows))
            for w in range(p.n_windows):
                order = p.window_order(w)
                np.testing.assert_array_equal(np.sort(order), np.arange(p.window_rows[w]))


def test_groups_stay_together_and_in_order():
    unit_rows = np.full(12, 10)
    plan = single_rank_plan(unit_rows, group_sizes=np.array([4, 4, 4]), seed=3, batch_size=7)
    units = plan.pieces[:, 0]
    assert sorted(units.tolist()) == list(range(12))
    for g in range(3):  # each shard's samples are contiguous and ascending in the stream
        pos = np.flatnonzero((units >= 4 * g) & (units < 4 * g + 4))
        assert np.all(np.diff(pos) == 1) and np.all(np.diff(units[pos]) == 1)


def test_order_depends_on_seed_and_epoch_only():
    units = np.full(30, 16)
    a = single_rank_plan(units, seed=1, epoch=2, batch_size=8)
    b = single_rank_plan(units, seed=1, epoch=2, batch_size=8)
    c = single_rank_plan(units, seed=1, epoch=3, batch_size=8)
    np.testing.assert_array_equal(a.pieces, b.pieces)
    np.testing.assert_array_equal(a.window_order(0), b.window_order(0))
    assert not np.array_equal(a.pieces, c.pieces)


def test_locate_finds_the_window_and_offset_of_a_row():
    plan = single_rank_plan(np.array([5, 5, 5, 5, 3]), batch_size=4, shuffle=False)
    np.testing.assert_array_equal(plan.window_rows, [10, 10, 3])
    assert plan.locate(0) == (0, 0)
    assert plan.locate(9) == (0, 9)
    assert plan.locate(10) == (1, 0)
    assert plan.locate(22) == (2, 2)


def test_segment_pads_by_wrapping_and_handles_tiny_splits():
    assert segment(10, 3, 0, False) == [(0, 4)]
    assert segment(10, 3, 2, False) == [(8, 10), (0, 2)]
    assert segment(10, 3, 2, True) == [(6, 9)]
    assert segment(2, 5, 4, False) == [(0, 1)]
    assert segment(0, 2, 1, False) == []
