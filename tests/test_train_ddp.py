"""`flashsim train --nproc 2`: real torch.distributed (gloo) on the CPU."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from flashsim.checkpoint import read_checkpoint
from flashsim.layouts import layout_for
from flashsim.model import load_model
from flashsim.train import TrainConfig, train
from flashsim.train.loop import row_fingerprints
from pipelines.writers import write_store

from conftest import read_metrics

pytestmark = pytest.mark.multiprocess  # several processes: label for `-m "not multiprocess"`


def _rows(n: int, seed: int) -> np.ndarray:
    layout = layout_for("jets")
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, layout.n_conditioning))
    x = 0.5 * np.tanh(y[:, :1]) + 0.3 * rng.normal(size=(n, layout.n_targets))
    return np.concatenate([y, x], axis=1).astype(np.float32)


def test_two_gloo_processes_split_the_data_and_stay_in_sync(tmp_path):
    layout = layout_for("jets")
    train_rows = _rows(4096, 0)
    store = write_store(
        tmp_path / "jets.zarr",
        "zarr",
        {"train": train_rows, "val": _rows(1024, 1)},
        {"object": "jets", "layout": layout.to_dict(), "preprocessing": []},
        chunk_rows=512,
    )
    out = tmp_path / "run"
    result = train(
        TrainConfig(
            "jets",
            monitor_rows=256,  # rank 0 measures while rank 1 waits at the checkpoint
            data=store,
            out=out,
            epochs=2,
            batch_size=256,
            lr=2e-3,
            flow={"num_flow_steps": 2, "hidden_features": 16, "num_blocks": 1, "num_bins": 4},
            loader="chunked",
            nproc=2,
            trace=True,
            progress=False,
            tensorboard=False,
        )
    )
    assert result.status == "completed" and result.epochs_done == 2
    # 4096 rows / 2 ranks / 256 per batch = 8 steps per rank and epoch, 4096 rows in all
    assert [r["rows"] for r in result.history] == [4096, 4096]
    assert [r["steps"] for r in result.history] == [8, 8]

    traces = {
        rank: [
            json.loads(s) for s in (out / "trace" / f"rank{rank}.jsonl").read_text().splitlines()
        ]
        for rank in (0, 1)
    }
    assert len(traces[0]) == len(traces[1]) == 16
    store_rows = {int(v) for v in row_fingerprints(train_rows)}
    seen: dict[tuple[int, int], set[int]] = defaultdict(set)
    for rank, steps in traces.items():
        for s in steps:
            seen[s["epoch"], rank] |= {int(v) for v in s["rows"]}
    for epoch in (0, 1):
        a, b = seen[epoch, 0], seen[epoch, 1]
        assert len(a) == len(b) == 2048
        assert not a & b  # disjoint shards
        assert a | b == store_rows  # together: every training row once
    # DDP all-reduces gradients: identical parameters on both ranks after every step
    for s0, s1 in zip(traces[0], traces[1], strict=True):
        assert (s0["epoch"], s0["step"]) == (s1["epoch"], s1["step"])
        assert s0["param_checksum"] == s1["param_checksum"]
    assert len({s["param_checksum"] for s in traces[0]}) == 16  # and they do change

    # Rank 0 alone wrote the checkpoints and metrics.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert all(r["conditioning_score"] > 0 for r in read_metrics(out))  # the monitor ran
    flow, config, meta = load_model(out / "checkpoints" / "best.pt")
    assert config.num_flow_steps == 2 and meta["object"] == "jets" and not flow.training


@pytest.mark.slow
def test_ctrl_c_under_nproc_2_resumes_exactly(tmp_path):
    layout = layout_for("jets")
    store = write_store(
        tmp_path / "jets.zarr",
        "zarr",
        {"train": _rows(4096, 0), "val": _rows(1024, 1)},
        {"object": "jets", "layout": layout.to_dict(), "preprocessing": []},
        chunk_rows=512,
    )

    def config(out, **kw):
        return TrainConfig(
            "jets",
            monitor_every=0,  # the monitor has its own tests (test_monitor)
            data=store,
            out=out,
            epochs=2,
            batch_size=128,
            lr=2e-3,
            flow={"num_flow_steps": 2, "hidden_features": 16, "num_blocks": 1, "num_bins": 4},
            loader="chunked",
            nproc=2,
            check_every=2,
            progress=False,
            tensorboard=False,
            **kw,
        )

    full = train(config(tmp_path / "full"))
    out = tmp_path / "part"
    trace = out / "trace" / "rank0.jsonl"

    def interrupt_in_second_epoch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if trace.exists() and any(
                json.loads(s)["epoch"] == 1 for s in trace.read_text().splitlines() if s
            ):
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C to the launcher: it forwards
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_in_second_epoch, daemon=True)
    watcher.start()
    stopped = train(config(out, trace=True))
    watcher.join()
    assert stopped.status == "interrupted" and "--nproc 2" in stopped.resume_command
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["mid_epoch"] and ckpt["epochs_done"] == 1
    assert len(ckpt["epoch_progress"]) == 2 and len(ckpt["loader"]["states"]) == 2
    resumed = train(config(out, resume=True))
    assert resumed.status == "completed"
    assert [(r["train_loss"], r["val_loss"]) for r in resumed.history] == [
        (r["train_loss"], r["val_loss"]) for r in full.history
    ]
