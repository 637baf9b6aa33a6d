"""The conditioning monitor of `flashsim train`: what it records, that it leaves the
training alone, what --best-by conditioning makes best.pt, and that resume keeps it.

Real tiny training runs on real zarr stores (the toy stores of conftest).
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from click.testing import CliRunner

from flashsim.checkpoint import read_checkpoint
from flashsim.cli import main
from flashsim.errors import FlashSimError
from flashsim.train import TrainConfig, train
from flashsim.train.monitor import SCORE, conditioning_score, is_due

from conftest import make_store, quick_config, read_metrics

# ΔAUC and profiles need flavour classes, which the synthetic rows lack (NaN there).
MONITOR_KEYS = ("delta_nll", "pit_ks_max", "pit_ks_floor", "monitor_s")


def _tree(out) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _without_timings(records: list[dict]) -> list[dict]:
    """The records without their timings, NaN as None (comparable with ==)."""
    timing = ("samples_per_s", "data_wait_frac")
    return [
        {k: None if v != v else v for k, v in r.items() if not k.endswith("_s") and k not in timing}
        for r in records
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data"), n_train=4096, n_val=1024)


def monitored(store, out, **kw) -> TrainConfig:
    return quick_config(
        store, out, epochs=3, max_steps_per_epoch=4, monitor_every=1, monitor_rows=512, **kw
    )


def test_score_is_the_geometric_mean_of_the_checks_over_their_floors():
    metrics = {
        "pit_ks_max": 0.2, "pit_ks_floor": 0.1,  # 2
        "max_delta_auc": 0.01, "max_delta_auc_floor": 0.02,  # 0.5
        "profile_chi2_ndf_max": 3.0, "profile_chi2_ndf_floor": 3.0,  # 1
    }  # fmt: skip
    assert conditioning_score(metrics) == pytest.approx(1.0)
    assert conditioning_score({**metrics, "max_delta_auc": math.nan}) == pytest.approx(2**0.5)
    assert conditioning_score({**metrics, "max_delta_auc": 0.0}) == pytest.approx(0.02 ** (1 / 3))
    assert math.isnan(conditioning_score({"delta_nll": 1.0}))
    assert [e for e in range(1, 6) if is_due(e, 2, 5)] == [2, 4, 5]
    assert not any(is_due(e, 0, 5) for e in range(1, 6))


def test_monitor_records_every_epoch_and_leaves_the_training_alone(store, tmp_path):
    plain = train(quick_config(store, tmp_path / "plain", epochs=3, max_steps_per_epoch=4))
    result = train(monitored(store, tmp_path / "run", tensorboard=True))
    for record in result.history:
        assert all(math.isfinite(record[k]) for k in (*MONITOR_KEYS, SCORE)), record
        assert record["pit_ks_floor"] > 0 and record["monitor_s"] > 0
    # Its own noise and RNG: the losses are bit-identical to the unmonitored run's.
    assert [(r["train_loss"], r["val_loss"]) for r in result.history] == [
        (r["train_loss"], r["val_loss"]) for r in plain.history
    ]
    out = tmp_path / "run"
    assert [r[SCORE] for r in read_metrics(out)] == [r[SCORE] for r in result.history]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars(f"conditioning/{SCORE}")] == pytest.approx(
        [r[SCORE] for r in result.history]
    )
    assert "conditioning score" in (out / "train.log").read_text()
    info = json.loads((out / "run.json").read_text())["config"]
    assert (info["monitor_every"], info["monitor_rows"], info["best_by"]) == (1, 512, "nll")


def test_best_by_conditioning_picks_the_lowest_score_and_resume_keeps_it(store, tmp_path):
    full = train(monitored(store, tmp_path / "full", best_by="conditioning"))
    part = tmp_path / "part"
    train(monitored(store, part, best_by="conditioning", stop_after_epochs=1))
    resumed = train(TrainConfig("jets", out=part, resume=True, progress=False))
    # Fixed rows, fixed noise: the resumed run measures what the uninterrupted one did.
    assert _without_timings(resumed.history) == _without_timings(full.history)
    scores = [r[SCORE] for r in resumed.history]
    best = read_checkpoint(part / "checkpoints" / "best.pt")
    assert best["epochs_done"] == 1 + scores.index(min(scores))
    assert best["run_options"]["best_by"] == "conditioning"

    before = _tree(part)
    for extra, reason in ((["--best-by", "nll"], "best_by='nll'"),
                          (["--monitor-rows", "100"], "monitor_rows=100")):  # fmt: skip
        refused = CliRunner().invoke(
            main, ["train", "jets", "--out", str(part), "--resume", *extra]
        )
        assert refused.exit_code != 0 and reason in refused.output, refused.output
    assert _tree(part) == before


def test_best_by_conditioning_needs_the_monitor(store, tmp_path):
    with pytest.raises(FlashSimError, match="--monitor-every 0 turns off"):
        train(quick_config(store, tmp_path / "run", best_by="conditioning", monitor_every=0))
    assert not (tmp_path / "run").exists()
