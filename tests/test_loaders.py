"""Correctness of every loader kind on real zarr / webdataset / HDF5 stores.

Rows carry their own index (in a target column and a conditioning column), so sets,
duplicates, order and x/y pairing can be checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import loaders
from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import JETS, MUONS
from flashsim.store import FORMATS, store_path
from loaders.plan import batches_per_rank, rows_per_rank
from pipelines.writers import write_store

N_TRAIN = 5003  # odd on purpose: ranks and batches never divide it
N_VAL = 700
CHUNK = 256
BATCH = 128
X_ID = 0  # row index in x[:, 0] (first target column) ...
Y_ID = 0  # ... and in y[:, 0] (first conditioning column)

STREAMING = ["chunked", "webdataset"]
OURS = ["chunked", "webdataset", "resident"]
ALL = [*OURS, "original-jets"]


def make_rows(n: int, layout, seed: int = 1) -> np.ndarray:
    rows = np.random.default_rng(seed).random((n, layout.n_columns), dtype=np.float32)
    rows[:, layout.n_conditioning + X_ID] = np.arange(n)
    rows[:, Y_ID] = np.arange(n)
    return rows


def write_all(out, layout, n_train=N_TRAIN, n_val=N_VAL, chunk=CHUNK, formats=None):
    train, val = make_rows(n_train, layout), make_rows(n_val, layout, seed=2)
    meta = {"object": layout.object, "layout": layout.to_dict()}
    for fmt in formats or FORMATS:
        write_store(
            store_path(out, layout.object, fmt),
            fmt,
            {"train": train, "val": val},
            meta,
            chunk_rows=chunk,
        )
    return train, val


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    train, val = write_all(out, JETS)
    write_all(out, MUONS, n_train=1500, n_val=300, formats=["zarr", "hdf5"])
    return out, train, val


def store_for(out, kind, obj="jets"):
    fmt = {"chunked": "zarr", "resident": "zarr", "webdataset": "webdataset"}.get(kind, "hdf5")
    return store_path(out, obj, fmt)


def open_kind(out, kind, **kw):
    kw.setdefault("batch_size", BATCH)
    if kind in STREAMING:
        kw.setdefault("buffer_chunks", 3)
    return loaders.open(store_for(out, kind), kind=kind, **kw)


def epoch(ld) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in ld]


def ids(batches) -> np.ndarray:
    if not batches:
        return np.zeros(0, np.int64)
    return torch.cat([x[:, X_ID] for x, _ in batches]).numpy().astype(np.int64)


def check_content(batches, rows, layout=JETS):
    """Every batch: float32, right widths, x/y the store's columns of the same row."""
    for x, y in batches:
        assert x.dtype == y.dtype == torch.float32
        assert x.shape[1] == layout.n_targets and y.shape[1] == layout.n_conditioning
        assert x.is_contiguous() and y.is_contiguous()
        i = x[:, X_ID].numpy().astype(np.int64)
        np.testing.assert_array_equal(y[:, Y_ID].numpy().astype(np.int64), i)
        np.testing.assert_array_equal(x.numpy(), rows[i][:, layout.targets])
        np.testing.assert_array_equal(y.numpy(), rows[i][:, layout.conditioning])


# ------------------------------------------------------------------ exactly once


@pytest.mark.parametrize("kind", ALL)
def test_one_process_sees_every_row_once(shards, kind):
    out, train, _ = shards
    ld = open_kind(out, kind)
    batches = epoch(ld)
    assert ld.kind == kind and ld.n_rows == N_TRAIN and ld.layout is JETS
    assert len(batches) == len(ld) == -(-N_TRAIN // BATCH)
    assert [len(x) for x, _ in batches[:-1]] == [BATCH] * (len(batches) - 1)
    np.testing.assert_array_equal(np.sort(ids(batches)), np.arange(N_TRAIN))
    check_content(batches, train)


@pytest.mark.parametrize("kind", ALL)
def test_val_split_is_read(shards, kind):
    out, _, val = shards
    batches = epoch(open_kind(out, kind, split="val"))
    np.testing.assert_array_equal(np.sort(ids(batches)), np.arange(N_VAL))
    check_content(batches, val)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("kind", ALL)
def test_ranks_are_disjoint_cover_the_split_and_have_equal_batches(shards, kind, world_size):
    out, _, _ = shards
    per_rank = [
        epoch(open_kind(out, kind, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    counts = {len(b) for b in per_rank}
    assert counts == {batches_per_rank(N_TRAIN, world_size, BATCH, False)}
    rows = [ids(b) for b in per_rank]
    assert {len(r) for r in rows} == {rows_per_rank(N_TRAIN, world_size, False)}
    union = np.concatenate(rows)
    np.testing.assert_array_equal(np.unique(union), np.arange(N_TRAIN))
    # Padding: only the < world_size rows needed to even out the ranks repeat, once.
    _, times = np.unique(union, return_counts=True)
    assert times.max() <= 2
    assert (times == 2).sum() == world_size * -(-N_TRAIN // world_size) - N_TRAIN


@pytest.mark.parametrize("kind", ALL)
def test_drop_last_gives_full_batches_and_no_repeats(shards, kind):
    out, _, _ = shards
    world_size = 3
    per_rank = [
        epoch(open_kind(out, kind, rank=r, world_size=world_size, drop_last=True))
        for r in range(world_size)
    ]
    n_batches = (N_TRAIN // world_size) // BATCH
    for batches in per_rank:
        assert len(batches) == n_batches
        assert all(len(x) == BATCH for x, _ in batches)
    union = np.concatenate([ids(b) for b in per_rank])
    assert len(np.unique(union)) == len(union) == world_size * n_batches * BATCH


def test_webdataset_workers_give_the_same_batches(shards):
    out, _, _ = shards
    for r in range(2):
        ref = epoch(open_kind(out, "webdataset", rank=r, world_size=2))
        got = epoch(open_kind(out, "webdataset", rank=r, world_size=2, num_workers=2))
        assert len(got) == len(ref)
        for (x0, y0), (x1, y1) in zip(ref, got, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


@pytest.mark.parametrize("kind", ["original-jets", "original-muons"])
def test_originals_with_workers_and_ranks(shards, kind):
    out, _, _ = shards
    obj = kind.split("-")[1]
    n = N_TRAIN if obj == "jets" else 1500
    per_rank = [
        epoch(loaders.open(out, kind=kind, batch_size=BATCH, rank=r, world_size=2, num_workers=2))
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1])
    np.testing.assert_array_equal(
        np.unique(np.concatenate([ids(b) for b in per_rank])), np.arange(n)
    )


def test_chunked_decode_threads_do_not_change_batches(shards):
    out, _, _ = shards
    a = epoch(open_kind(out, "chunked", num_workers=1, prefetch=1))
    b = epoch(open_kind(out, "chunked", num_workers=3, prefetch=4))
    assert all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(a, b, strict=True)) and len(
        a
    ) == len(b)


# ------------------------------------------------------------------ order


@pytest.mark.parametrize("kind", ALL)
def test_order_is_a_function_of_seed_and_epoch(shards, kind):
    out, _, _ = shards

    def order(seed, ep):
        ld = open_kind(out, kind, seed=seed)
        ld.set_epoch(ep)
        return ids(epoch(ld))

    first = order(0, 0)
    np.testing.assert_array_equal(first, order(0, 0))
    assert not np.array_equal(first, order(0, 1))
    assert not np.array_equal(first, order(1, 0))
    assert not np.array_equal(first, np.arange(N_TRAIN))


@pytest.mark.parametrize("kind", OURS)
def test_no_shuffle_keeps_store_order(shards, kind):
    out, _, _ = shards
    np.testing.assert_array_equal(
        ids(epoch(open_kind(out, kind, shuffle=False))), np.arange(N_TRAIN)
    )
    halves = [
        ids(epoch(open_kind(out, kind, shuffle=False, rank=r, world_size=2))) for r in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(halves)[:N_TRAIN], np.arange(N_TRAIN))


def test_iterating_again_replays_the_epoch(shards):
    out, _, _ = shards
    ld = open_kind(out, "chunked")
    np.testing.assert_array_equal(ids(epoch(ld)), ids(epoch(ld)))


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_yields_exactly_the_unseen_batches(shards, kind, world_size):
    out, _, _ = shards
    rank = world_size - 1
    ref_ld = open_kind(out, kind, rank=rank, world_size=world_size)
    ref_ld.set_epoch(3)
    reference = epoch(ref_ld)

    ld = open_kind(out, kind, rank=rank, world_size=world_size)
    ld.set_epoch(3)
    stop = len(reference) // 2 + 1
    seen = []
    for i, (x, _) in enumerate(ld):
        seen.append(x.clone())
        if i + 1 == stop:
            break
    state = ld.state_dict()
    assert state["epoch"] == 3 and state["batches_consumed"] == stop

    resumed = open_kind(out, kind, rank=rank, world_size=world_size)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the usual training loop: same epoch keeps the position
    rest = epoch(resumed)
    assert len(rest) == len(reference) - stop
    for (x, y), (rx, ry) in zip(rest, reference[stop:], strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    for x, (rx, _) in zip(seen, reference[:stop], strict=True):
        assert torch.equal(x, rx)
    # After the resumed epoch, the next one starts from its beginning.
    resumed.set_epoch(4)
    assert len(epoch(resumed)) == len(reference)


def test_state_after_a_full_epoch_resumes_to_nothing_left(shards):
    out, _, _ = shards
    ld = open_kind(out, "chunked")
    epoch(ld)
    fresh = open_kind(out, "chunked")
    fresh.load_state_dict(ld.state_dict())
    assert epoch(fresh) == []


def test_state_from_another_setup_is_refused(shards):
    out, _, _ = shards
    state = open_kind(out, "chunked").state_dict()
    with pytest.raises(FlashSimError, match="batch_size"):
        open_kind(out, "chunked", batch_size=BATCH * 2).load_state_dict(state)
    with pytest.raises(FlashSimError, match="kind"):
        open_kind(out, "resident").load_state_dict(state)


# ------------------------------------------------------------------ shuffle quality


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """Rows in sorted order (index column) in 4096 chunks of 32 rows, so that a chunk-level
    shuffle can show |rho| < 0.05 (its spread is ~1/sqrt(chunks)). Written with zarr in
    one call, in the writers' codec (4096 appends through the writer take ~10 s)."""
    import zarr
    from zarr.codecs import BloscCodec

    path = tmp_path_factory.mktemp("sorted") / "jets.zarr"
    rows = make_rows(2**17, JETS)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)
    for split, data in [("train", rows), ("val", rows[:10])]:
        arr = group.create_array(
            split, shape=data.shape, chunks=(32, 31), dtype="float32", compressors=codec
        )
        arr[:] = data
    group.attrs["flashsim"] = {"object": "jets", "layout": JETS.to_dict()}
    return path


@pytest.mark.parametrize("kind", ["chunked", "resident"])
def test_shuffle_decorrelates_store_position_and_batch(sorted_store, kind):
    buffer_chunks = 16
    ld = loaders.open(sorted_store, kind=kind, batch_size=512, buffer_chunks=buffer_chunks)
    batches = epoch(ld)
    position = ids(batches)
    batch_index = np.repeat(np.arange(len(batches)), [len(x) for x, _ in batches])
    rho = spearmanr(position, batch_index).statistic
    assert abs(rho) < 0.05
    chunks_per_batch = [
        len(np.unique(x[:, X_ID].numpy().astype(np.int64) // 32)) for x, _ in batches
    ]
    assert np.median(chunks_per_batch) >= buffer_chunks


def test_webdataset_batches_mix_several_samples(shards):
    out, _, _ = shards
    batches = epoch(open_kind(out, "webdataset", buffer_chunks=4))
    per_batch = [len(np.unique(x[:, X_ID].numpy().astype(np.int64) // CHUNK)) for x, _ in batches]
    assert np.median(per_batch) >= 4


# ------------------------------------------------------------------ store handling


def test_directory_input_picks_the_store_for_kind_and_object(shards):
    out, _, _ = shards
    assert loaders.open(out, object="muons", kind="chunked").path == out / "muons.zarr"
    assert loaders.open(out, object="jets", kind="webdataset").path == out / "jets-wds"
    assert loaders.open(out, kind="original-muons").path == out / "muons.h5"
    ld = loaders.open(out, object="muons", kind="resident", batch_size=100)
    assert ld.layout is MUONS and ld.metadata["object"] == "muons" and ld.n_rows == 1500
    x, y = next(iter(ld))
    assert x.shape == (100, MUONS.n_targets) and y.shape == (100, MUONS.n_conditioning)


def test_auto_uses_the_memory_budget(shards, tmp_path):
    out, _, _ = shards
    assert loaders.open(out, object="jets", memory_budget_bytes=10**9).kind == "resident"
    small = loaders.open(out, object="jets", memory_budget_bytes=1)
    assert small.kind == "chunked" and small.path.suffix == ".zarr"
    write_all(tmp_path, JETS, n_train=600, n_val=10, formats=["webdataset"])
    assert loaders.open(tmp_path, memory_budget_bytes=1).kind == "webdataset"
    assert loaders.open(tmp_path / "jets-wds").kind == "resident"


def test_original_muons_reads_several_files(tmp_path):
    rows = make_rows(1000, MUONS)
    meta = {"object": "muons", "layout": MUONS.to_dict()}
    files = []
    for k, (a, b) in enumerate([(0, 300), (300, 301), (301, 1000)]):
        files.append(tmp_path / f"muons{k}.h5")
        write_store(files[-1], "hdf5", {"train": rows[a:b], "val": rows[:5]}, meta)
    ld = loaders.open(files, kind="original-muons", batch_size=64)
    batches = epoch(ld)
    assert ld.n_rows == 1000
    np.testing.assert_array_equal(np.sort(ids(batches)), np.arange(1000))
    check_content(batches, rows, MUONS)


def test_zarr_with_another_codec_and_a_missing_chunk(tmp_path):
    """Non-blosc chunks go through zarr; chunks equal to the fill value are not on disk."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    rows = make_rows(1000, JETS)
    rows[200:300] = 0.0  # one whole chunk of zeros: zarr does not write it
    for name, compressors in [("blosc.zarr", BloscCodec(cname="lz4")), ("zstd.zarr", ZstdCodec())]:
        group = zarr.open_group(tmp_path / name, mode="w", zarr_format=3)
        for split, data in [("train", rows), ("val", rows[:10])]:
            arr = group.create_array(
                split,
                shape=data.shape,
                chunks=(100, 31),
                dtype="float32",
                compressors=compressors,
                fill_value=0.0,
            )
            arr[:] = data
        group.attrs["flashsim"] = {"object": "jets", "layout": JETS.to_dict()}
        ld = loaders.open(tmp_path / name, kind="chunked", batch_size=64)
        got = torch.cat([torch.cat([y, x], 1) for x, y in ld]).numpy()
        order = np.lexsort(got.T[::-1])
        np.testing.assert_array_equal(got[order], rows[np.lexsort(rows.T[::-1])])


def test_damaged_chunk_is_reported_with_its_path(tmp_path):
    rows = make_rows(1000, JETS)
    meta = {"object": "jets", "layout": JETS.to_dict()}
    store = write_store(
        tmp_path / "jets.zarr", "zarr", {"train": rows, "val": rows[:10]}, meta, chunk_rows=256
    )
    chunk = store / "train" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(StoreError, match=r"c/1/0 is damaged"):
        epoch(loaders.open(store, kind="chunked", batch_size=64))


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        ("missing", "chunked", "No data"),
        ("jets.zarr", "webdataset", "cannot read"),
        ("jets-wds", "chunked", "cannot read"),
        ("jets.zarr", "original-jets", "cannot read"),
        ("jets.h5", "original-muons", "not 'muons'"),
        ("jets.zarr", "bogus", "Unknown loader kind"),
    ],
)
def test_bad_input_gets_a_clear_error(shards, data, kind, message):
    out, _, _ = shards
    with pytest.raises(FlashSimError, match=message):
        loaders.open(out / data, kind=kind)


def test_bad_arguments_get_clear_errors(shards, tmp_path):
    out, _, _ = shards
    with pytest.raises(FlashSimError, match="split"):
        loaders.open(out / "jets.zarr", "test", kind="chunked")
    with pytest.raises(FlashSimError, match="batch_size"):
        loaders.open(out / "jets.zarr", kind="chunked", batch_size=0)
    with pytest.raises(FlashSimError, match="rank"):
        loaders.open(out / "jets.zarr", kind="resident", rank=2, world_size=2)
    with pytest.raises(FlashSimError, match="both jets and muons"):
        loaders.open(out, kind="chunked")
    with pytest.raises(StoreError, match="no muons data"):
        loaders.open(tmp_path, object="muons")
    if not torch.cuda.is_available():
        with pytest.raises(FlashSimError, match="CUDA"):
            loaders.open(out / "jets.zarr", kind="resident", device="cuda")


# ------------------------------------------------------------------ devices


def test_window_buffer_layouts_agree():
    """The CPU (split columns) and CUDA (whole rows) window layouts hold the same batches."""
    from loaders.windows import WindowBuffer

    rows = make_rows(300, JETS)
    order = np.random.default_rng(0).permutation(300)
    split, whole = (
        WindowBuffer(300, JETS, whole_rows=False),
        WindowBuffer(300, JETS, whole_rows=True),
    )
    for buf in (split, whole):
        buf.put(0, rows[:120])
        buf.put(120, rows[120:])
    x, y = split.product(order)
    (full,) = whole.product(order)
    np.testing.assert_array_equal(full.numpy(), rows[order])
    np.testing.assert_array_equal(x.numpy(), rows[order][:, JETS.targets])
    np.testing.assert_array_equal(y.numpy(), rows[order][:, JETS.conditioning])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("kind", "workers"), [(k, 0) for k in ALL] + [("webdataset", 2)])
def test_cuda_batches_are_on_the_device_and_exact(shards, kind, workers):
    out, train, _ = shards
    ld = open_kind(out, kind, device="cuda", num_workers=workers)
    batches = []
    for x, y in ld:
        assert x.is_cuda and y.is_cuda
        batches.append((x.cpu(), y.cpu()))
    np.testing.assert_array_equal(np.sort(ids(batches)), np.arange(N_TRAIN))
    check_content(batches, train)
