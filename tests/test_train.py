"""`flashsim train`: learning, exact resume, Ctrl-C, non-finite losses, refused inputs.

Every test trains a real nflows spline flow on real stores written with
``pipelines.writers.write_store`` and read through ``loaders.open``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from flashsim.checkpoint import read_checkpoint
from flashsim.errors import FlashSimError
from flashsim.layouts import JETS, layout_for
from flashsim.model import build_flow, load_model
from flashsim.train import NonFiniteLossError, TrainConfig, train
from flashsim.train import loop as loop_module
from pipelines.writers import write_store

from conftest import TINY_FLOW, make_store, read_metrics, synthetic_rows
from conftest import quick_config as quick


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _losses(history):
    return [(r["epoch"], r["train_loss"], r["val_loss"], r["lr"]) for r in history]


# ------------------------------------------------------------------------- learning


def test_small_preset_learns_and_writes_its_outputs(tmp_path):
    store = make_store(tmp_path, n_train=16384, n_val=4096)
    config = TrainConfig("jets", data=store, out=tmp_path / "run", epochs=3, progress=False)
    config.threads = 1
    result = train(config)
    assert result.status == "completed" and result.epochs_done == 3
    val = [r["val_loss"] for r in result.history]
    train_loss = [r["train_loss"] for r in result.history]
    assert val[-1] < val[0] - 1.0, val  # nats per row: a clear margin
    assert train_loss[-1] < train_loss[0]
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(3e-3) and all(a > b for a, b in itertools.pairwise(lrs))

    out = tmp_path / "run"
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert any((out / "tensorboard").iterdir())
    assert (
        "1 CPU thread(s); tf32 off, compile off, deterministic on"
        in (out / "train.log").read_text()
    )
    assert json.loads((out / "run.json").read_text())["hparams"]["preset"] == "small"
    for rec in result.history:
        parts = rec["data_wait_s"] + rec["compute_s"] + rec["host_s"]
        assert min(rec["data_wait_s"], rec["compute_s"], rec["host_s"]) >= 0
        assert parts == pytest.approx(rec["epoch_s"], rel=1e-6) or parts <= rec["epoch_s"] * 1.01
        assert rec["rows"] == 16 * 1024 and rec["samples_per_s"] > 0

    # Samples of the trained flow are closer to the truth than the untrained flow's.
    flow, config, meta = load_model(result.best_checkpoint)
    assert meta["object"] == "jets"
    untrained = build_flow(config, seed=0).eval()
    val_rows = synthetic_rows("jets", 4096, 1)  # the store's val split (same seed)
    layout = layout_for("jets")
    y = torch.from_numpy(val_rows[:, layout.conditioning])
    truth = val_rows[:, layout.targets]

    def mean_w1(model) -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            samples = model.sample(1, context=y)[:, 0].numpy()
        return float(
            np.mean(
                [wasserstein_distance(samples[:, j], truth[:, j]) for j in range(truth.shape[1])]
            )
        )

    trained_w1, untrained_w1 = mean_w1(flow), mean_w1(untrained)
    assert trained_w1 < 0.75 * untrained_w1, (trained_w1, untrained_w1)


# --------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("loader", ["resident", "chunked"])
def test_resume_after_an_epoch_reproduces_the_uninterrupted_run(tmp_path, loader):
    store = make_store(tmp_path)
    full = train(quick(store, tmp_path / "full", loader=loader))
    paused = train(quick(store, tmp_path / "part", loader=loader, stop_after_epochs=1))
    assert paused.status == "paused" and paused.epochs_done == 1
    assert "--resume" in paused.resume_command
    ckpt = read_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert ckpt["epochs_done"] == 1 and not ckpt["mid_epoch"]
    resumed = train(
        TrainConfig(
            "jets",
            data=store,
            out=tmp_path / "part",
            loader=loader,
            resume=True,
            progress=False,
            tensorboard=False,
        )
    )
    assert resumed.status == "completed"
    assert _losses(resumed.history) == _losses(full.history)  # bit-identical
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_metrics(tmp_path / "part")] == [1, 2, 3]


def test_ctrl_c_mid_epoch_writes_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    store = make_store(tmp_path)  # 8192 rows: 16 steps of 512 per epoch
    full = train(quick(store, tmp_path / "full", loader="chunked"))
    out = tmp_path / "part"

    # A real SIGINT through the real handler, sent by the training thread itself right
    # after step 3 of the second epoch: deterministic, unlike a watcher thread's timing.
    trace_step = loop_module.StepTrace.write

    def trace_then_interrupt(self, epoch, step, x, y):
        trace_step(self, epoch, step, x, y)
        if epoch == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop_module.StepTrace, "write", trace_then_interrupt)
    stopped = train(quick(store, out, loader="chunked", trace=True))
    monkeypatch.undo()
    assert stopped.status == "interrupted"
    assert stopped.resume_command.endswith("--resume") and str(out) in stopped.resume_command
    ckpt = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["mid_epoch"] and ckpt["epochs_done"] == 1
    steps_done = ckpt["epoch_progress"][0]["steps"]
    assert steps_done == 3  # the stop is honoured at the next step boundary
    assert ckpt["loader"]["states"][0]["batches_consumed"] == steps_done

    resumed = train(
        quick(
            store,
            out,
            loader="chunked",
            resume=True,
            epochs=None,
            lr=None,
            batch_size=None,
            flow={},
        )
    )
    assert resumed.status == "completed"
    assert _losses(resumed.history) == _losses(full.history)


def test_standardized_run_takes_the_statistics_of_the_training_split(tmp_path):
    store = make_store(tmp_path)
    train(quick(store, tmp_path / "run", epochs=1, flow={**TINY_FLOW, "standardize": True}))
    flow, config, _ = load_model(tmp_path / "run" / "checkpoints" / "best.pt")
    assert config.standardize
    rows = synthetic_rows("jets", 8192, 0).astype(np.float64)  # make_store's train split
    x, y = rows[:, JETS.targets], rows[:, JETS.conditioning]
    affine, context = flow._transform._transforms[0], flow._embedding_net
    np.testing.assert_allclose(affine._scale.numpy(), 1 / x.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(affine._shift.numpy(), -x.mean(axis=0) / x.std(axis=0), atol=1e-5)
    np.testing.assert_allclose(context.mean.numpy(), y.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(context.std.numpy(), y.std(axis=0), rtol=1e-5)


# ------------------------------------------------------------------- failure modes


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    good = make_store(tmp_path)
    bad = make_store(tmp_path, name="poisoned.zarr", poison=True)
    out = tmp_path / "run"
    train(quick(good, out, stop_after_epochs=1))
    last = out / "checkpoints" / "last.pt"
    before = _sha(last)
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite at epoch 2.*intact"):
        train(quick(bad, out, resume=True, epochs=None, lr=None, batch_size=None, flow={}))
    assert _sha(last) == before
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())


def test_absurd_learning_rate_is_caught_before_anything_is_saved(tmp_path):
    store = make_store(tmp_path, n_train=4096, n_val=1024)
    with pytest.raises(NonFiniteLossError, match="learning rate"):
        train(quick(store, tmp_path / "run", lr=1e10, check_every=2))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_store_of_the_wrong_object_is_refused(tmp_path):
    muons = make_store(tmp_path, obj="muons", n_train=2048, n_val=512)
    with pytest.raises(FlashSimError, match="muons") as err:
        train(quick(muons, tmp_path / "run"))
    assert "jets" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_store_with_an_unknown_layout_is_refused(tmp_path):
    rows = np.zeros((1024, 31), np.float32)
    store = write_store(
        tmp_path / "jets.zarr",
        "zarr",
        {"train": rows, "val": rows[:256]},
        {"object": "jets", "layout": {"columns": ["c"] * 30}},
    )
    with pytest.raises(FlashSimError, match="unknown layout"):
        train(quick(store, tmp_path / "run"))


def test_existing_run_resume_conflicts_and_bad_options_are_refused(tmp_path):
    store = make_store(tmp_path, n_train=2048, n_val=512)
    out = tmp_path / "run"
    with pytest.raises(FlashSimError, match="no checkpoint to resume"):
        train(quick(store, out, resume=True))
    train(quick(store, out, epochs=2, stop_after_epochs=1))
    with pytest.raises(FlashSimError, match="already holds a training run"):
        train(quick(store, out))
    with pytest.raises(FlashSimError, match=r"lr=0\.1 \(checkpoint: 0\.002\)"):
        train(quick(store, out, resume=True, lr=0.1))
    with pytest.raises(FlashSimError, match="original-jets"):
        train(quick(store, tmp_path / "other", loader="original-muons"))
    with pytest.raises(FlashSimError, match="do not override them"):
        train(quick(store, tmp_path / "other", flow={**TINY_FLOW, "n_targets": 3}))


def test_cli_trains_and_reports_errors_without_traceback(tmp_path):
    from click.testing import CliRunner

    from flashsim.cli import main

    store = make_store(tmp_path, n_train=2048, n_val=512)
    runner = CliRunner()
    args = [
        "train",
        "jets",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--flow-steps",
        "2",
        "--hidden",
        "16",
        "--blocks",
        "1",
        "--bins",
        "4",
        "--no-progress",
        "--no-tensorboard",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Done: 1 epochs" in result.output
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-0001.pt", "last.pt"]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["store"] == str(store)

    make_store(tmp_path / "m", obj="muons", n_train=1024, n_val=256)
    bad = runner.invoke(
        main,
        [
            "train",
            "jets",
            "--data",
            str(tmp_path / "m" / "muons.zarr"),
            "--out",
            str(tmp_path / "run2"),
        ],
    )
    assert bad.exit_code == 2
    assert "muons" in bad.output and "Traceback" not in bad.output


def test_both_spline_engines_train_the_same_run_and_record_their_engine(tmp_path):
    store = make_store(tmp_path, n_train=2048, n_val=512)
    histories = {}
    for engine in ("fused", "nflows"):
        out = tmp_path / engine
        flow = {**TINY_FLOW, "spline": engine}
        result = train(quick(store, out, epochs=2, flow=flow))
        histories[engine] = [v for record in _losses(result.history) for v in record]
        saved = read_checkpoint(out / "checkpoints" / "last.pt")
        assert saved["flow_config"]["spline"] == engine
        assert json.loads((out / "run.json").read_text())["flow_config"]["spline"] == engine
        assert f"spline engine {engine}" in (out / "train.log").read_text()
    # the same mathematics on the same weights and batches: the same losses up to rounding
    assert histories["fused"] == pytest.approx(histories["nflows"], rel=1e-4)


def test_cuda_graphs_on_a_cpu_run_is_refused_clearly(tmp_path):
    store = make_store(tmp_path, n_train=1024, n_val=256)
    with pytest.raises(FlashSimError, match=r"--cuda-graphs .* on cpu"):
        train(quick(store, tmp_path / "run", device="cpu", cuda_graphs=True))


@pytest.mark.slow
def test_compiled_training_step_trains_like_the_eager_one(tmp_path):
    store = make_store(tmp_path, n_train=2048, n_val=512)
    eager = train(quick(store, tmp_path / "eager", epochs=1))
    compiled = train(quick(store, tmp_path / "compiled", epochs=1, compile=True))
    flat = {
        k: [v for rec in _losses(r.history) for v in rec]
        for k, r in (("e", eager), ("c", compiled))
    }
    assert flat["c"] == pytest.approx(flat["e"], rel=1e-4)
