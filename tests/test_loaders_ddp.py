"""Loaders under real torch.distributed: 2 gloo processes, rank and world size taken
from the initialised process group (not passed explicitly)."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import loaders
from flashsim.layouts import JETS
from pipelines.writers import write_store

pytestmark = pytest.mark.multiprocess  # several processes: label for `-m "not multiprocess"`

N_ROWS = 3001
KINDS = ("chunked", "webdataset", "resident", "original-jets")
STORES = {
    "chunked": "jets.zarr",
    "webdataset": "jets-wds",
    "resident": "jets.zarr",
    "original-jets": "jets.h5",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        for kind in KINDS:
            ld = loaders.open(f"{out}/{STORES[kind]}", kind=kind, batch_size=200, seed=7)
            assert (ld.rank, ld.world_size) == (rank, world_size)
            ld.set_epoch(2)
            ids = [x[:, 0].to(torch.int64) for x, _ in ld]
            count = torch.tensor([len(ids), len(ld)])
            counts = [torch.zeros_like(count) for _ in range(world_size)]
            dist.all_gather(counts, count)  # every rank must reach this point equally often
            np.save(f"{out}/{kind}-{rank}.npy", torch.cat(ids).numpy())
            np.save(f"{out}/{kind}-{rank}-counts.npy", torch.stack(counts).numpy())
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_split_every_kind_exactly(tmp_path):
    rows = np.random.default_rng(0).random((N_ROWS, JETS.n_columns), dtype=np.float32)
    rows[:, JETS.n_conditioning] = np.arange(N_ROWS)
    meta = {"object": "jets", "layout": JETS.to_dict()}
    for name, fmt in [("jets.zarr", "zarr"), ("jets-wds", "webdataset"), ("jets.h5", "hdf5")]:
        write_store(tmp_path / name, fmt, {"train": rows, "val": rows[:10]}, meta, chunk_rows=128)

    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    for kind in KINDS:
        parts = [np.load(tmp_path / f"{kind}-{r}.npy") for r in range(2)]
        counts = np.load(tmp_path / f"{kind}-0-counts.npy")
        assert (counts == counts[0]).all(), f"{kind}: unequal batch counts {counts}"
        assert counts[0, 0] == counts[0, 1] == math.ceil(math.ceil(N_ROWS / 2) / 200)
        assert len(parts[0]) == len(parts[1]) == math.ceil(N_ROWS / 2)
        union = np.concatenate(parts)
        np.testing.assert_array_equal(np.unique(union), np.arange(N_ROWS), err_msg=kind)
        # 3001 rows on 2 ranks: exactly one row is repeated (the documented padding).
        assert len(union) - len(np.unique(union)) == 1
        assert len(np.intersect1d(parts[0], parts[1])) <= 1
