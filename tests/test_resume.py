"""Resume continues the same run; a refused resume changes nothing; a run can be extended.

Real training processes (``python -m flashsim train``) on real zarr stores, a real SIGINT,
and the printed "Resume with:" command run as printed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from flashsim.checkpoint import read_checkpoint
from flashsim.cli import main
from flashsim.train import TrainConfig, train

from conftest import make_store, quick_config, read_metrics

FLASHSIM = [sys.executable, "-m", "flashsim"]
# The shape of the run under test: capped epochs (12 of 32 possible steps), no
# TensorBoard; both must survive a resume that names neither.
RUN_OPTIONS = [
    "--epochs", "4", "--max-steps-per-epoch", "12", "--batch-size", "256", "--lr", "2e-3",
    "--flow-steps", "3", "--hidden", "32", "--blocks", "1", "--bins", "8",
    "--threads", "1", "--no-tensorboard", "--no-progress",
]  # fmt: skip


def _tree(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out``."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _losses(records: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["val_loss"], r["lr"]) for r in records]


def _interrupt_in_epoch_3(store: Path, out: Path) -> str:
    """Run ``flashsim train`` and send SIGINT as epoch 3 starts; its stderr."""
    args = [*FLASHSIM, "train", "jets", "--data", str(store), "--out", str(out), *RUN_OPTIONS]
    child = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert child.stderr is not None
    lines = []
    for line in child.stderr:
        lines.append(line)
        if line.startswith("epoch 2/4:"):
            # Past the end-of-epoch check (microseconds after this line), well before
            # the end of epoch 3's 12 steps (about 1 s); a stop that lands after them
            # is honoured after epoch 3, just as resumable.
            time.sleep(0.3)
            child.send_signal(signal.SIGINT)
    assert child.wait(timeout=300) == 130, "".join(lines)
    return "".join(lines)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("data"), n_train=8192, n_val=1024)


@pytest.fixture(scope="module")
def interrupted(store, tmp_path_factory) -> tuple[Path, str, Path]:
    """A run stopped by Ctrl-C in epoch 3, the resume command it printed, and a copy of
    the run directory as the interruption left it."""
    out = tmp_path_factory.mktemp("runs") / "part"
    stderr = _interrupt_in_epoch_3(store, out)
    assert "Stopped in epoch 3" in stderr or "Stopped after epoch 3" in stderr, stderr
    pristine = out.parent / "pristine"
    shutil.copytree(out, pristine)
    return out, stderr.split("Resume with: ", 1)[1].splitlines()[0], pristine


def _copy_of(interrupted, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the interrupted run, and the printed command's arguments for it."""
    _, command, pristine = interrupted
    out = shutil.copytree(pristine, tmp_path / "run")
    args = shlex.split(command)[1:]
    args[args.index("--out") + 1] = str(out)
    return out, args


def test_printed_resume_command_continues_the_same_run(store, interrupted, tmp_path):
    out, command, _ = interrupted
    assert command == f"flashsim train jets --data {store} --out {out} --resume"
    full = tmp_path / "full"
    done = subprocess.run(
        [*FLASHSIM, "train", "jets", "--data", str(store), "--out", str(full), *RUN_OPTIONS],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    resumed = subprocess.run(
        [*FLASHSIM, *shlex.split(command)[1:], "--no-progress"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(read_metrics(out)) == _losses(read_metrics(full))  # bit-identical
    assert [r["steps"] for r in read_metrics(out)] == [12] * 4  # the cap was kept
    a = read_checkpoint(full / "checkpoints" / "last.pt")
    b = read_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["run_options"] == b["run_options"]
    assert b["run_options"]["max_steps_per_epoch"] == 12
    assert not (out / "tensorboard").exists()  # --no-tensorboard was kept too
    infos = [json.loads((d / "run.json").read_text()) for d in (full, out)]
    assert infos[0]["config"].pop("out") == str(full) and infos[1]["config"].pop("out") == str(out)
    assert infos[0] == infos[1]  # the resumed run records the options of the whole run


REFUSED = {
    "step cap": (["--max-steps-per-epoch", "20"], "max_steps_per_epoch=20"),
    "learning rate": (["--lr", "0.1"], "lr=0.1"),
    "flow": (["--hidden", "64"], "hidden_features=64"),
    "loader": (["--loader", "chunked"], "loader='chunked'"),
    "fewer epochs": (["--epochs", "3"], "extended, not shortened"),
    "processes": (["--nproc", "2"], "2 process(es) (checkpoint: 1)"),
    "numerics": (["--no-deterministic"], "deterministic=False"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_resume_changes_nothing(interrupted, case, tmp_path):
    out, args = _copy_of(interrupted, tmp_path)
    before = _tree(out)
    extra, reason = REFUSED[case]
    result = CliRunner().invoke(main, [*args, *extra])
    assert result.exit_code != 0
    assert reason in result.output and "Nothing was changed" in result.output, result.output
    assert "Traceback" not in result.output
    assert _tree(out) == before


def test_resume_on_another_store_is_refused_and_changes_nothing(interrupted, tmp_path):
    # The same layout and preprocessing but other rows: refused before run.json is touched.
    out, args = _copy_of(interrupted, tmp_path)
    other = make_store(tmp_path, n_train=4096, n_val=1024)
    before = _tree(out)
    args[args.index("--data") + 1] = str(other)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "differs in its rows" in result.output, result.output
    assert _tree(out) == before


# ------------------------------------------------------------------ extending a run


def quick(store, out, **kw) -> TrainConfig:
    return quick_config(store, out, max_steps_per_epoch=4, **kw)


def resume(out, **kw) -> TrainConfig:
    return TrainConfig("jets", out=out, resume=True, progress=False, **kw)


def test_extending_a_finished_run_starts_a_new_cosine_cycle(store, tmp_path):
    out = tmp_path / "run"
    first = train(quick(store, out, epochs=2))
    extended = train(resume(out, epochs=4))
    assert extended.status == "completed" and extended.epochs_done == 4
    assert _losses(extended.history[:2]) == _losses(first.history)
    # Two cycles of two epochs: lr, lr (1 + cos(pi/2)) / 2, then a warm restart.
    lrs = [r["lr"] for r in extended.history]
    assert lrs == pytest.approx([2e-3, 1e-3, 2e-3, 1e-3], rel=1e-12)
    info = json.loads((out / "run.json").read_text())
    assert info["hparams"]["epochs"] == 4 and info["hparams"]["restarts"] == [2]
    assert info["lr_schedule"]["cycles"] == [
        {"first_epoch": 1, "last_epoch": 2},
        {"first_epoch": 3, "last_epoch": 4},
    ]
    assert "2 cycles (epochs 1-2, 3-4; warm restarts)" in (out / "train.log").read_text()
    assert read_checkpoint(out / "checkpoints" / "last.pt")["hparams"]["restarts"] == [2]

    # Unchanged, the extended run resumes as it is: nothing left to do, nothing refused.
    again = train(resume(out))
    assert again.status == "completed" and _losses(again.history) == _losses(extended.history)


def test_extending_an_interrupted_run_finishes_its_cycle_first_and_resumes_exactly(store, tmp_path):
    planned = train(quick(store, tmp_path / "planned", epochs=3))
    whole = tmp_path / "whole"
    train(quick(store, whole, epochs=3, stop_after_epochs=1))
    uninterrupted = train(resume(whole, epochs=5))
    # The same extension, paused inside the new cycle and resumed: bit-identical.
    part = tmp_path / "part"
    train(quick(store, part, epochs=3, stop_after_epochs=1))
    assert train(resume(part, epochs=5, stop_after_epochs=3)).status == "paused"
    resumed = train(resume(part))
    assert _losses(resumed.history) == _losses(uninterrupted.history)
    # The first cycle ran as planned; the second restarts at the base learning rate.
    assert _losses(uninterrupted.history[:3]) == _losses(planned.history)
    lrs = [r["lr"] for r in uninterrupted.history]
    assert lrs[3:] == pytest.approx([2e-3, 1e-3], rel=1e-12)
    assert lrs[1] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 3)), rel=1e-12)


def test_extension_with_another_changed_hyperparameter_is_refused(store, tmp_path):
    out = tmp_path / "run"
    train(quick(store, out, epochs=2))
    before = _tree(out)
    args = ["train", "jets", "--out", str(out), "--resume", "--epochs", "4", "--batch-size", "64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "batch_size=64 (checkpoint: 512)" in result.output
    assert _tree(out) == before
