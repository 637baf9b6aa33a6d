"""`flashsim validate`: metrics of real trained flows against real stores, outputs, errors.

The flows are trained with the real trainer on stores written with
``pipelines.writers.write_store``; targets are a learnable function of the
conditioning, stored in a preprocessed space where ``MJet_ptRatio`` is ``log(x)``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from flashsim.cli import main
from flashsim.errors import FlashSimError
from flashsim.layouts import JETS, MUONS
from flashsim.train import TrainConfig, train
from flashsim.transforms import Log, Preprocessing
from flashsim.validate import Moments, column_metrics, read_rows, validate
from pipelines.writers import write_store

# Without the standardisation: a 1-step flow then really is far from the data (with it, a
# flow starts at the data's mean and std per column, already close on these Gaussian-ish rows).
FLOW = {
    "num_flow_steps": 3,
    "hidden_features": 32,
    "num_blocks": 1,
    "num_bins": 8,
    "standardize": False,
}
PREPROCESSING = Preprocessing(JETS, (("MJet_ptRatio", Log()),)).to_dict()
N_TRAIN, N_VAL = 8192, 2048


def rows(layout, n: int, seed: int) -> np.ndarray:
    """``conditioning | targets`` (preprocessed space), targets a smooth function of the
    conditioning plus noise: something a flow can learn in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, layout.n_conditioning))
    k = np.arange(layout.n_targets)
    x = np.sin(y[:, k % layout.n_conditioning]) + 0.3 * rng.normal(size=(n, layout.n_targets))
    return np.concatenate([y, x], axis=1).astype(np.float32)


def write(path, layout=JETS, fmt="zarr", n_val=N_VAL, preprocessing=PREPROCESSING):
    meta = {"object": layout.object, "layout": layout.to_dict(), "preprocessing": preprocessing}
    splits = {"train": rows(layout, N_TRAIN, 0), "val": rows(layout, n_val, 1)}
    return write_store(path, fmt, splits, meta, chunk_rows=1000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A jets store in ``shards/``, a trained run and a barely trained one (1 step)."""
    base = tmp_path_factory.mktemp("validate")
    write(base / "shards" / "jets.zarr")

    def run(name: str, **kw) -> None:
        config = TrainConfig(
            "jets",
            monitor_every=0,  # the monitor has its own tests (test_monitor)
            data=base / "shards",
            out=base / "runs" / name,
            batch_size=512,
            lr=2e-3,
            flow=dict(FLOW),
            progress=False,
            tensorboard=False,
            threads=1,
            **kw,
        )
        assert train(config).status == "completed"

    run("jets", epochs=4)
    run("untrained", epochs=1, max_steps_per_epoch=1)
    return base


def _metrics(report_json) -> dict:
    record = json.loads(report_json.read_text())
    return {"columns": record["columns"], "summary": record["summary"]}


# ----------------------------------------------------------------------- metrics


def test_trained_flow_is_closer_to_fullsim_than_an_untrained_one(setup, tmp_path):
    trained = validate(setup / "runs/jets", setup / "shards", out=tmp_path / "t", progress=False)
    untrained = validate(
        setup / "runs/untrained", setup / "shards", out=tmp_path / "u", progress=False
    )

    assert trained.json_path == tmp_path / "t" / "validation.json"
    assert trained.png_path.read_bytes()[:4] == b"\x89PNG"
    record = json.loads(trained.json_path.read_text())
    assert record["rows"] == N_VAL and record["split"] == "val" and record["seed"] == 0
    assert record["checkpoint"] == str(setup / "runs/jets/checkpoints/best.pt")
    assert record["store"] == str(setup / "shards/jets.zarr")
    assert [c["column"] for c in record["columns"]] == list(JETS.target_columns)
    for c in record["columns"]:
        numbers = [c["w1"], c["w1_floor"], *c["fullsim"].values(), *c["flashsim"].values()]
        assert all(np.isfinite(numbers)), c
        assert c["w1_floor"] > 0 and c["nonfinite"] == 0
    assert set(record["summary"]) >= {"mean_w1", "mean_w1_floor", "worst_column"}

    # FullSim in physical units: the stored log(ptRatio) mapped back with exp.
    j = JETS.target_columns.index("MJet_ptRatio")
    stored = rows(JETS, N_VAL, 1)[:, JETS.targets][:, j].astype(np.float64)
    assert record["columns"][j]["fullsim"]["mean"] == pytest.approx(np.exp(stored).mean(), 1e-5)
    assert record["columns"][j]["flashsim"]["q05"] > 0  # FlashSim also mapped through exp

    assert trained.summary["mean_w1"] < 0.75 * untrained.summary["mean_w1"], (
        trained.summary,
        untrained.summary,
    )
    table = trained.table()
    assert all(name in table for name in JETS.target_columns)
    assert f"{trained.summary['mean_w1']:.4f}" in table


def test_same_seed_same_metrics_and_max_rows(setup, tmp_path):
    kw = dict(max_rows=700, progress=False)
    a = validate(setup / "runs/jets", setup / "shards", out=tmp_path / "a", seed=3, **kw)
    b = validate(setup / "runs/jets", setup / "shards", out=tmp_path / "b", seed=3, **kw)
    c = validate(setup / "runs/jets", setup / "shards", out=tmp_path / "c", seed=4, **kw)
    assert _metrics(a.json_path) == _metrics(b.json_path)
    assert _metrics(a.json_path) != _metrics(c.json_path)
    assert a.rows == 700
    # The first 700 rows in store order: their FullSim moments.
    j = JETS.target_columns.index("MJet_area")
    first = rows(JETS, N_VAL, 1)[:700, JETS.targets][:, j]
    assert a.columns[j].fullsim == Moments.of(first)


def test_column_metrics_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    full = rng.normal(0.0, 2.0, 200_000)
    flash = rng.normal(1.0, 2.0, 200_000)
    flash[:5] = np.nan  # non-finite samples are counted and left out
    m = column_metrics("x", flash, full, flash, full, rng.permutation(len(full)))
    assert m.w1 == pytest.approx(0.5, abs=0.02)  # W1 = shift = 1, over std = 2
    assert m.w1_floor < 0.02 and m.nonfinite == 5
    assert m.fullsim.mean == pytest.approx(0.0, abs=0.02)
    assert m.flashsim.mean == pytest.approx(1.0, abs=0.02)
    assert m.flashsim.q95 - m.flashsim.q05 == pytest.approx(2 * 1.645 * 2.0, rel=0.02)


@pytest.mark.parametrize("fmt", ["zarr", "webdataset", "hdf5"])
def test_read_rows_keeps_store_order(tmp_path, fmt):
    store = write(tmp_path / {"zarr": "j.zarr", "webdataset": "j-wds", "hdf5": "j.h5"}[fmt])
    conditioning, targets = read_rows(store, "val", 1500)
    expected = rows(JETS, N_VAL, 1)[:1500]
    np.testing.assert_array_equal(conditioning, expected[:, JETS.conditioning])
    np.testing.assert_array_equal(targets, expected[:, JETS.targets])


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_the_table_and_writes_into_the_run(setup):
    args = ["validate", "jets", "--data", str(setup / "shards"), "--run", str(setup / "runs/jets")]
    result = CliRunner().invoke(main, [*args, "--max-rows", "500", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "MJet_ptRatio" in result.output and "W1/std" in result.output
    out = setup / "runs/jets/validation"
    assert str(out / "validation.json") in result.output
    assert json.loads((out / "validation.json").read_text())["rows"] == 500
    assert (out / "validation.png").is_file()


def test_cli_spline_override_samples_with_that_engine(setup, tmp_path):
    args = ["validate", "jets", "--data", str(setup / "shards"), "--run", str(setup / "runs/jets")]
    records = {}
    for engine in ("fused", "nflows"):
        out = tmp_path / engine
        cli = [*args, "--max-rows", "300", "--spline", engine, "--out", str(out), "-q"]
        result = CliRunner().invoke(main, cli)
        assert result.exit_code == 0, result.output + repr(result.exception)
        records[engine] = json.loads((out / "validation.json").read_text())
        assert records[engine]["spline"] == engine
    w1 = {e: [c["w1"] for c in r["columns"]] for e, r in records.items()}
    assert w1["nflows"] == pytest.approx(w1["fused"], rel=1e-3, abs=1e-5)


def test_cli_default_run_is_runs_object(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "muons", "-q"])
    assert result.exit_code == 2
    assert "runs/muons" in result.output and "Traceback" not in result.output


# -------------------------------------------------------------------------- errors


def test_refusals_name_the_path(setup, tmp_path):
    run = setup / "runs/jets"
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "no-jets").mkdir()
    write(tmp_path / "no-jets" / "muons.zarr", layout=MUONS, preprocessing=[])
    other_prep = write(tmp_path / "plain.zarr", preprocessing=[])
    no_val = write(tmp_path / "no-val.zarr", n_val=0)
    cases = [
        (tmp_path / "empty-run", setup / "shards", "empty-run", "checkpoints/best.pt"),
        (run, tmp_path / "no-jets", "no-jets", "holds no jets data"),
        (run, tmp_path / "no-jets" / "muons.zarr", "muons.zarr", "not 'jets'"),
        (run, other_prep, "plain.zarr", "different preprocessing"),
        (run, no_val, "no-val.zarr", "holds 0 row(s)"),
    ]
    for run_dir, data, path_part, what in cases:
        with pytest.raises(FlashSimError) as err:
            validate(run_dir, data, out=tmp_path / "out", progress=False)
        assert path_part in str(err.value) and what in str(err.value), str(err.value)
        cli = ["validate", "jets", "--run", str(run_dir), "--data", str(data), "-q"]
        result = CliRunner().invoke(main, [*cli, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and path_part in result.output, result.output
    assert not (tmp_path / "out").exists()

    with pytest.raises(FlashSimError, match="is a jets flow, not muons"):
        validate(run, setup / "shards", object="muons", out=tmp_path / "out", progress=False)


def test_failed_run_leaves_the_earlier_validation_intact(setup, tmp_path):
    out = tmp_path / "val"
    done = validate(setup / "runs/jets", setup / "shards", out=out, max_rows=300, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"validation.json", *done.plots} >= {"validation.json", "validation.png"}
    bad = write(tmp_path / "muons.zarr", layout=MUONS, preprocessing=[])
    with pytest.raises(FlashSimError, match=r"muons\.zarr"):
        validate(setup / "runs/jets", bad, out=out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert done.json_path.read_bytes() == before["validation.json"]
