"""Conditioning checks (flashsim.conditioning): each metric against a known answer, and
validation telling a trained toy flow from conditioning-blind cases.

The flows are trained with the real trainer (small preset) on stores prepared by the
real ``flashsim prep`` from toy NanoAOD events; the blind cases are real stores written
with the conditioning rows permuted against their targets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import norm

from flashsim.cli import main
from flashsim.conditioning import CheckRows, cheap_metrics, table_lines
from flashsim.conditioning.correlations import correlation_check
from flashsim.conditioning.floors import split_halves
from flashsim.conditioning.information import delta_nll, row_nll
from flashsim.conditioning.physics import auc, binned_moments, chi2_ndf, profiles, roc_checks
from flashsim.conditioning.pit import draw_ranks, ks_of_counts, null_floors, pit_check
from flashsim.flow_config import FlowConfig
from flashsim.layouts import DTYPE, JETS
from flashsim.model import build_flow
from flashsim.sampling import TrainedFlow, sample_with_noise
from flashsim.store import read_metadata
from flashsim.train import TrainConfig, train
from flashsim.transforms import Preprocessing
from flashsim.validate import read_rows, validate
from pipelines.writers import write_store

IDENTITY = Preprocessing(JETS, ())
HADRON_FLAVOUR = JETS.conditioning_columns.index("MGenJet_hadronFlavour")
GEN_PT = JETS.conditioning_columns.index("MGenJet_pt")
CHECKS = dict(samples=16, pit_rows=1500, max_rows=10_000, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: small flows gain nothing from more, and stall on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ synthetic rows


def synthetic_conditioning(n: int, seed: int) -> np.ndarray:
    """Jets conditioning: normal columns, a hadron flavour of 0/4/5, gen pT 20-200 GeV."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, JETS.n_conditioning)).astype(DTYPE)
    y[:, HADRON_FLAVOUR] = rng.choice([0.0, 4.0, 5.0], n)
    y[:, GEN_PT] = rng.uniform(20, 200, n)
    return y


def synthetic_rows(full: np.ndarray, flash: np.ndarray, seed: int = 0) -> CheckRows:
    return CheckRows.build(JETS, IDENTITY, synthetic_conditioning(len(full), seed), full, flash)


def small_flow(seed: int):
    config = FlowConfig(
        JETS.n_targets, JETS.n_conditioning, num_flow_steps=2, hidden_features=16, num_bins=4
    )
    return build_flow(config, seed=seed).eval()


def test_ks_floor_of_uniform_ranks_is_the_kolmogorov_median():
    # many draws per row: the discrete KS is the continuous one, whose median is 0.8276/sqrt(N)
    floor, _ = null_floors([10_000], n_targets=4, samples=1000, seed=0, replicas=200)
    assert floor[0] == pytest.approx(0.8276 / np.sqrt(10_000), rel=0.08)
    # uniform ranks sit at the floor; ranks piled at one end are far above it
    rng = np.random.default_rng(1)
    uniform = np.bincount(rng.integers(0, 33, 10_000), minlength=33)
    floor32, _ = null_floors([10_000], n_targets=1, samples=32, seed=0)
    assert 0.3 < ks_of_counts(uniform) / floor32[0] < 2.5
    biased = np.bincount(np.minimum(rng.integers(0, 40, 10_000), 32), minlength=33)
    assert ks_of_counts(biased) > 10 * floor32[0]


def test_pit_of_a_perfect_model_is_at_its_floor_and_of_a_wrong_one_far_above():
    n = 3000
    y = synthetic_conditioning(n, 2)
    truth_flow = small_flow(seed=0)
    noise = np.random.default_rng(3).standard_normal((n, JETS.n_targets), dtype=DTYPE)
    full = sample_with_noise(truth_flow, y, noise)  # "FullSim" drawn from the flow itself

    def worst_ratio(flow) -> float:
        rows = CheckRows.build(JETS, IDENTITY, y, full, full)
        ranks = draw_ranks(flow, IDENTITY, rows, samples=16, seed=0)
        assert ranks.min() >= 0 and ranks.max() <= 16
        pit = pit_check(rows, ranks, 16, seed=0)
        assert pit.cells[:2] == ["all", "b"] and pit.rows[0] == n
        w = pit.worst()
        return w["ks"] / w["floor"]

    # the integer columns (nConstituents, puId, jetId) are rounded: ties broken at random
    assert 0.5 < worst_ratio(truth_flow) < 1.6
    assert worst_ratio(small_flow(seed=1)) > 5


def test_identical_samples_have_no_auc_profile_or_correlation_difference():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(20_000, JETS.n_targets)).astype(DTYPE)
    rows = synthetic_rows(full, full.copy())
    splits = split_halves(len(rows), np.random.default_rng(1))
    rocs = roc_checks(rows, splits)
    assert len(rocs) == len(JETS.roles.discriminants) == 10
    assert all(r.delta_auc == 0 and r.to_dict()["floor"] > 0 for r in rocs)
    for p in profiles(rows, splits):
        assert all(np.all(p.chi2_ndf[s] == 0) for s in ("mean", "rms"))
        # two FullSim halves differ by noise only: χ²/ndf about 1 (the errors are right)
        assert 0.4 < np.mean(p.halves["mean"]) < 2.0
    corr = correlation_check(rows, splits)
    assert corr.max_delta()["all"] == 0 and corr.floors["all"] > 0


def test_auc_and_correlation_shift_have_their_known_values():
    rng = np.random.default_rng(0)
    # two unit Gaussians one sigma apart: AUC = Phi(1 / sqrt(2))
    assert auc(rng.normal(1, 1, 100_000), rng.normal(0, 1, 100_000)) == pytest.approx(
        norm.cdf(1 / np.sqrt(2)), abs=0.004
    )
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count a half

    n = 200_000
    full = rng.normal(size=(n, JETS.n_targets)).astype(DTYPE)
    flash = rng.normal(size=(n, JETS.n_targets)).astype(DTYPE)
    a, b = JETS.target_columns.index("MJet_ptRatio"), JETS.target_columns.index("MJet_area")
    z = rng.normal(size=n)
    full[:, b] = 0.5 * full[:, a] + np.sqrt(1 - 0.5**2) * z  # rho = 0.5
    flash[:, b] = 0.8 * flash[:, a] + np.sqrt(1 - 0.8**2) * z  # rho = 0.8
    corr = correlation_check(synthetic_rows(full, flash), split_halves(n, rng))
    assert corr.max_delta()["all"] == pytest.approx(0.3, abs=0.01)
    assert {corr.worst()["target"], corr.worst()["column"]} == {"MJet_ptRatio", "MJet_area"}
    assert corr.floors["all"] < 0.03


def test_binned_moments_and_chi2_of_gaussians():
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, 500_000)
    values = rng.normal(index * 1.0, 1 + index * 0.5)
    m = binned_moments(values, index, 5)
    np.testing.assert_allclose(m["mean"], np.arange(5), atol=0.02)
    np.testing.assert_allclose(m["rms"], 1 + 0.5 * np.arange(5), rtol=0.01)
    np.testing.assert_allclose(m["mean_err"], m["rms"] / np.sqrt(m["count"]), rtol=1e-9)
    # Gaussian: the error of the RMS is rms / sqrt(2 n)
    np.testing.assert_allclose(m["rms_err"], m["rms"] / np.sqrt(2 * m["count"]), rtol=0.03)
    shifted = binned_moments(values + 0.05, index, 5)
    expected = np.mean(0.05**2 / (2 * m["mean_err"] ** 2))
    value, ndf = chi2_ndf(shifted, m, "mean")
    assert ndf == 5 and value == pytest.approx(expected, rel=1e-6)


def test_delta_nll_is_the_mean_paired_difference():
    flow = small_flow(seed=0)
    y = synthetic_conditioning(500, 0)
    x = np.random.default_rng(1).normal(size=(500, JETS.n_targets)).astype(DTYPE)
    with torch.no_grad():
        expected = -flow.log_prob(torch.from_numpy(x), context=torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(row_nll(flow, x, y, batch_rows=128), expected, rtol=1e-5)
    out = delta_nll(flow, x, y, seed=0, columns=JETS.conditioning_columns)
    assert out["delta_nll"] == pytest.approx(out["nll_permuted"] - out["nll"], abs=1e-9)
    assert set(out["per_column"]) == set(JETS.conditioning_columns)
    assert out == delta_nll(flow, x, y, seed=0, columns=JETS.conditioning_columns)


# ---------------------------------------------------------- trained and blind flows


def _copy_store(src, dst, *, shuffle_train: bool = False, shuffle_val: bool = False):
    """A copy of the jets store ``src`` with the conditioning rows of a split permuted."""
    rng = np.random.default_rng(7)
    splits = {}
    for split, shuffle in (("train", shuffle_train), ("val", shuffle_val)):
        y, x = read_rows(src, split, 10**9)
        if shuffle:
            y = y[rng.permutation(len(y))]
        splits[split] = np.concatenate([y, x], axis=1)
    return write_store(dst, "zarr", splits, read_metadata(src), chunk_rows=4096)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy jets store, a flow trained on it, and one trained on permuted conditioning."""
    from flashsim.toy import generate_toy
    from pipelines.prep import prep

    base = tmp_path_factory.mktemp("conditioning")
    generate_toy(base / "toy.root", 5_000, seed=0, progress=False)
    # a large val split: the profiles and ROC curves use every compared row
    prep([base / "toy.root"], base / "shards", objects=["jets"], val_fraction=0.3, progress=False)
    store = base / "shards" / "jets.zarr"
    blind_store = _copy_store(store, base / "blind" / "jets.zarr", shuffle_train=True)
    permuted_val = _copy_store(store, base / "permuted" / "jets.zarr", shuffle_val=True)
    for name, data in (("good", store), ("blind", blind_store)):
        config = TrainConfig(
            "jets",
            monitor_every=0,  # the monitor has its own tests (test_monitor)
            data=data,
            out=base / "runs" / name,
            preset="small",
            epochs=2,
            batch_size=256,  # more steps per row: learns the conditioning in fewer rows
            seed=0,
            threads=1,
            progress=False,
            tensorboard=False,
        )
        assert train(config).status == "completed"
    reports = {
        "good": validate(base / "runs/good", store, out=base / "v-good", **CHECKS),
        "blind": validate(base / "runs/blind", store, out=base / "v-blind", **CHECKS),
        "permuted": validate(base / "runs/good", permuted_val, out=base / "v-perm", **CHECKS),
    }
    return base, store, reports


def ratio(summary: dict, key: str, floor: str) -> float:
    return summary[key] / summary[floor]


def mean_abs_delta_auc(report) -> float:
    rocs = json.loads(report.json_path.read_text())["conditioning"]["roc"]
    return float(np.mean([abs(r["delta_auc"]) for r in rocs]))


def test_blind_cases_keep_the_marginals_but_fail_the_conditioning_checks(toy):
    _, _, reports = toy
    good, blind, permuted = (reports[k].summary for k in ("good", "blind", "permuted"))
    # the per-column marginals barely move
    assert permuted["mean_w1"] == pytest.approx(good["mean_w1"], rel=0.1)
    assert blind["mean_w1"] == pytest.approx(good["mean_w1"], rel=0.3)
    # no information drawn from the conditioning
    for s in (blind, permuted):
        assert abs(s["delta_nll"]) < max(4 * s["delta_nll_err"], 0.05), s
    assert good["delta_nll"] > 1.0 and good["delta_nll"] > 10 * good["delta_nll_err"]
    # calibration per class, taggers by true flavour, response profiles: far above floors
    checks = (
        ("pit_ks_max", "pit_ks_floor"),
        ("max_delta_auc", "max_delta_auc_floor"),
        ("profile_chi2_ndf_max", "profile_chi2_ndf_floor"),
    )
    for s in (blind, permuted):
        for key, floor in checks:
            assert ratio(s, key, floor) > 4, (key, s)
            assert ratio(good, key, floor) < ratio(s, key, floor), (key, good, s)
        assert ratio(good, "pit_ks_max", "pit_ks_floor") < 0.7 * ratio(
            s, "pit_ks_max", "pit_ks_floor"
        )
    # The briefly trained flow has not learnt everything (its worst ΔAUC is a c tagger,
    # its worst profile a few-% bias at low pT), but over all ten ROC checks it is far
    # closer to FullSim than the blind cases.
    means = {k: mean_abs_delta_auc(r) for k, r in reports.items()}
    assert means["good"] < 0.5 * min(means["blind"], means["permuted"]), means
    # the blind flow learns no correlation with the gen inputs
    assert blind["max_delta_rho"] > 3 * blind["max_delta_rho_floor"]
    assert good["max_delta_rho"] < 0.3 * blind["max_delta_rho"]


def test_validation_json_plots_and_table_carry_the_conditioning_checks(toy):
    report = toy[2]["good"]
    record = json.loads(report.json_path.read_text())
    section = record["conditioning"]
    assert set(section) == {"settings", "information", "pit", "profiles", "roc", "correlations"}
    assert section["settings"]["samples"] == 16 and section["settings"]["pit_rows"] == 1500
    assert len(section["roc"]) == 10 and len(section["profiles"]) == 6
    per_column = section["information"]["per_column"]
    # the flow uses the gen pT and the flavour more than the far-away second muon's phi
    assert (
        per_column["MGenJet_pt"]["delta_nll"] > per_column["MSecondClosestMuon_dphi"]["delta_nll"]
    )
    assert per_column["MGenJet_hadronFlavour"]["delta_nll"] > 0.05
    for key in (
        "pit_ks_max",
        "pit_ks_floor",
        "delta_nll",
        "max_delta_auc",
        "max_delta_auc_floor",
        "max_delta_rho",
        "max_delta_rho_floor",
        "profile_chi2_ndf_max",
    ):
        assert np.isfinite(record["summary"][key]), key
    assert set(report.plots) == {
        "validation.png",
        "profiles.png",
        "roc.png",
        "correlations.png",
        "pit.png",
    }
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report.plots.values())
    lines = report.table().splitlines()
    assert lines[-6:-1] == table_lines(report.summary)[2:-1]
    assert f"{report.summary['delta_nll']:.4g}" in lines[-5]


def test_same_seed_same_conditioning_numbers(toy, tmp_path):
    base, store, _ = toy
    kw = dict(CHECKS, max_rows=1500, pit_rows=600)
    a = validate(base / "runs/good", store, out=tmp_path / "a", seed=5, **kw)
    b = validate(base / "runs/good", store, out=tmp_path / "b", seed=5, **kw)

    def section(r):
        return json.loads(r.json_path.read_text())["conditioning"]

    assert section(a) == section(b) and a.summary == b.summary
    assert a.summary["pit_ks_max"] != toy[2]["good"].summary["pit_ks_max"]  # seed 0


def test_cheap_metrics_are_fixed_for_a_fixed_model(toy):
    base, store, _ = toy
    model = TrainedFlow.load(base / "runs/good")
    y, x = read_rows(store, "val", 1500)
    model.flow.train()  # as during training: evaluated in eval mode, mode restored
    first = cheap_metrics(model.flow, model.layout, model.preprocessing, y, x, seed=3)
    assert model.flow.training
    again = cheap_metrics(model.flow, model.layout, model.preprocessing, y, x, seed=3)
    assert first == again
    assert set(first) >= {"delta_nll", "pit_ks_max", "max_delta_auc", "profile_chi2_ndf_max"}
    assert first["delta_nll"] > 1.0 and all(np.isfinite(list(first.values())))
    blind = TrainedFlow.load(base / "runs/blind")
    other = cheap_metrics(blind.flow, blind.layout, blind.preprocessing, y, x, seed=3)
    assert abs(other["delta_nll"]) < 0.1 and other["max_delta_auc"] > first["max_delta_auc"]


def test_cli_conditioning_options(toy, tmp_path):
    base, store, _ = toy
    args = ["validate", "jets", "--run", str(base / "runs/good"), "--data", str(store)]
    args += ["--max-rows", "800", "--device", "cpu", "--samples", "8", "--pit-rows", "300"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "PIT KS, worst cell" in result.output and "max |ΔAUC|" in result.output
    settings = json.loads((tmp_path / "on/validation.json").read_text())["conditioning"]
    assert settings["settings"]["samples"] == 8 and settings["settings"]["pit_rows"] == 300
    result = CliRunner().invoke(main, [*args, "--no-conditioning", "--out", str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    assert "PIT KS" not in result.output
    assert "conditioning" not in json.loads((tmp_path / "off/validation.json").read_text())
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == [
        "validation.json",
        "validation.png",
    ]
