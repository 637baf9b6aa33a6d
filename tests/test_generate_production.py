"""Production generation: valid values, safe samples, oversampling, and the histogram
helper for oversampled output.

Real toy NanoAOD, real prep stores, real tiny nflows models trained by the real trainer
(``generation_workflow`` of conftest), real ROOT output read back with uproot, real
``hist`` histograms.
"""

from __future__ import annotations

import json

import awkward as ak
import hist
import numpy as np
import pytest
import uproot

from flashsim.analysis import fill_oversampled
from flashsim.checkpoint import read_checkpoint, save_checkpoint
from flashsim.generate import EVENT_INDEX_BRANCH, FOLD_BRANCH, generate
from flashsim.layouts import JETS, MUONS
from flashsim.store import find_store, read_metadata
from flashsim.valid import nearest_valid

DISCRETE_BRANCHES = {
    "MJet_jetId": "Jet_jetId",
    "MJet_puId": "Jet_puId",
    **{c: "Muon_" + c.removeprefix("MMuon_") for c in MUONS.discrete},
}


def _flat(path, branch) -> np.ndarray:
    with uproot.open(path) as f:
        values = f["Events"][branch].array()
    return ak.to_numpy(ak.flatten(values) if values.ndim > 1 else values)


def _all_finite(path) -> bool:
    events = _read_ak(path)
    for name in events.fields:
        values = events[name]
        flat = ak.to_numpy(ak.flatten(values) if values.ndim > 1 else values)
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            return False
    return True


def test_nearest_valid_value_rule():
    # jetId is a bit field: 2 = tight, 6 = tight + lepton veto (NanoAOD v9)
    valid = np.array([0.0, 2.0, 6.0])
    got = nearest_valid(np.array([-2.0, 0.9, 1.0, 1.1, 4.0, 4.1, 11.0]), valid)
    np.testing.assert_array_equal(got, [0, 0, 0, 2, 2, 6, 6])  # a tie goes down
    # another NanoAOD version, another set (v12 has jetId 4 too)
    np.testing.assert_array_equal(
        nearest_valid(np.array([4.0, 3.1]), np.array([0, 2, 4, 6])), [4, 4]
    )
    np.testing.assert_array_equal(nearest_valid(np.array([3.0, -1.0]), np.array([1.0])), [1, 1])


def test_prep_records_the_full_simulation_values_of_each_discrete_target(generation_workflow):
    toy = generation_workflow["toy"]
    meta = read_metadata(find_store(generation_workflow["base"] / "shards", "jets"))
    values = meta["target_values"]
    assert values["MJet_jetId"]["values"] == sorted(set(_flat(toy, "Jet_jetId").tolist()))
    assert values["MJet_puId"]["values"] == [0, 4, 6, 7]
    assert "values" not in values["MJet_nConstituents"]  # a count: its range only
    assert values["MJet_ptRatio"]["min"] > 0 and set(values) == set(JETS.target_columns)
    # the checkpoint carries them (generate reads nothing else)
    ckpt = read_checkpoint(generation_workflow["jets"] / "checkpoints" / "best.pt")
    assert ckpt["store_metadata"]["target_values"] == values


def test_generated_discrete_branches_take_only_full_simulation_values(
    generation_workflow, tmp_path
):
    out = tmp_path / "flash.root"
    wf = generation_workflow
    summary = generate([wf["small"]], out, jets=wf["jets"], muons=wf["muons"], progress=False)
    for branch in DISCRETE_BRANCHES.values():
        full_sim = set(_flat(wf["toy"], branch).tolist())
        generated = set(_flat(out, branch).tolist())
        assert generated <= full_sim, (branch, generated - full_sim)
    assert set(_flat(out, "Jet_jetId").tolist()) == {0, 2, 6}  # the toy's full set
    # every target within the recorded range: a pT ratio never negative
    meta = read_metadata(find_store(wf["base"] / "shards", "jets"))
    ratio = _flat(out, "Jet_pt") / _flat(out, "GenJet_pt")[_gen_jet_of_each_jet(out)]
    assert ratio.min() >= meta["target_values"]["MJet_ptRatio"]["min"] * (1 - 1e-5)
    # the tiny flow samples out of range now and then: redrawn, rarely clipped, counted
    jets = summary.samples["jets"]
    assert sum(jets.redrawn.values()) > 0
    assert all(jets.clipped.get(c, 0) <= n for c, n in jets.redrawn.items())
    with uproot.open(out) as f:
        provenance = json.loads(str(f["flashsim"]))
    assert provenance["samples"]["jets"] == jets.to_dict() and provenance["max_redraws"] == 10


def _gen_jet_of_each_jet(path) -> np.ndarray:
    with uproot.open(path) as f:
        ev = f["Events"].arrays(["Jet_genJetIdx", "nGenJet"], library="ak")
    counts = ak.to_numpy(ev.nGenJet).astype(np.int64)
    starts = np.cumsum(counts) - counts
    return ak.to_numpy(ak.flatten(ev.Jet_genJetIdx + starts))


def test_a_model_that_samples_nan_gives_a_nan_free_file_and_the_counts(
    generation_workflow, tmp_path
):
    wf = generation_workflow
    ckpt = read_checkpoint(wf["jets"] / "checkpoints" / "best.pt")
    # an infinite bias in the flow's last linear map: every sample is NaN or inf
    bias = "_transform._transforms.3._transforms.1.bias"
    ckpt["model"][bias][JETS.target_columns.index("MJet_ptRatio")] = float("inf")
    broken = save_checkpoint(
        tmp_path / "inf.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")}
    )
    out = tmp_path / "flash.root"
    summary = generate([wf["small"]], out, jets=broken, max_redraws=2, progress=False)
    n_jets = summary.counts["Jet"]
    jets = summary.samples["jets"]
    assert jets.redrawn["MJet_ptRatio"] == n_jets and jets.clipped["MJet_ptRatio"] == n_jets
    assert _all_finite(out)
    # clipped into the recorded range: NaN to its lower end, discrete values still valid
    assert set(_flat(out, "Jet_jetId").tolist()) <= {0, 2, 6}
    meta = read_metadata(find_store(wf["base"] / "shards", "jets"))
    np.testing.assert_allclose(
        _flat(out, "Jet_area"), meta["target_values"]["MJet_area"]["min"], rtol=1e-6
    )


def test_oversampling_writes_k_independent_copies_of_each_event(generation_workflow, tmp_path):
    wf = generation_workflow
    kw = {"jets": wf["jets"], "max_redraws": 3, "progress": False}
    k1 = generate([wf["small"]], tmp_path / "k1.root", **kw)
    k5 = generate([wf["small"]], tmp_path / "k5.root", oversample=5, step_events=70, **kw)
    again = generate([wf["small"]], tmp_path / "again.root", oversample=5, step_events=70, **kw)
    n = k1.events
    assert k5.events == 5 * n and k5.counts["Jet"] == 5 * k1.counts["Jet"]
    index, fold = _flat(k5.out, EVENT_INDEX_BRANCH), _flat(k5.out, FOLD_BRANCH)
    np.testing.assert_array_equal(index, np.repeat(np.arange(n), 5))
    np.testing.assert_array_equal(fold, np.tile(np.arange(5), n))
    a, b = _read_ak(k5.out), _read_ak(k1.out)
    # the generator level is repeated as it is; run/lumi/event numbers too
    for name in ("GenJet_pt", "GenPart_pdgId", "event", "luminosityBlock"):
        assert ak.all(a[name][::5] == b[name]) and ak.all(a[name][4::5] == b[name])
    # folds differ from each other
    assert not ak.all(ak.flatten(a.Jet_pt[0::5] == a.Jet_pt[1::5]))
    # fold 0 is the K = 1 sample (same noise stream), though read in other steps: the
    # samples do not depend on the batching (up to float rounding)
    np.testing.assert_allclose(_flat_ak(a.Jet_pt[::5]), _flat_ak(b.Jet_pt), rtol=1e-4)
    np.testing.assert_allclose(_flat_ak(a.Jet_qgl[::5]), _flat_ak(b.Jet_qgl), atol=1e-5)
    # reproducible
    assert ak.all(ak.flatten(_read_ak(again.out).Jet_pt == a.Jet_pt))
    with uproot.open(k5.out) as f:
        assert json.loads(str(f["flashsim"]))["oversample"] == 5


@pytest.mark.multiprocess
def test_workers_and_dask_write_the_bytes_of_a_serial_run(generation_workflow, tmp_path):
    from flashsim.toy import generate_toy

    wf = generation_workflow
    inputs = [tmp_path / f"in{i}.root" for i in range(2)]
    for i, path in enumerate(inputs):
        generate_toy(path, 80, seed=20 + i, progress=False)
    kw = {
        "jets": wf["jets"],
        "oversample": 2,
        "step_events": 30,
        "max_redraws": 1,
        "progress": False,
    }
    runs = {
        "serial": {},
        "workers": {"workers": 2},
        "dask": {"workers": 2, "dask_scheduler": "local"},
    }
    outs = {
        name: generate(inputs, tmp_path / f"{name}.root", **extra, **kw)
        for name, extra in runs.items()
    }
    with uproot.open(outs["serial"].out) as f:
        reference = f["Events"].arrays(library="np")
        provenance = str(f["flashsim"])
    assert reference["FlashSim_eventIndex"].max() == 159  # continues over the inputs
    for name in ("workers", "dask"):
        assert outs[name].samples == outs["serial"].samples
        with uproot.open(outs[name].out) as f:
            assert f["Events"].keys() == list(reference) and str(f["flashsim"]) == provenance
            for branch, expected in reference.items():
                got = f["Events"][branch].array(library="np")
                if expected.dtype == object:  # jagged: one array per event
                    got, expected = np.concatenate(list(got)), np.concatenate(list(expected))
                assert got.tobytes() == expected.tobytes(), (name, branch)


def _read_ak(path):
    with uproot.open(path) as f:
        return f["Events"].arrays(library="ak")


def _flat_ak(array) -> np.ndarray:
    return ak.to_numpy(ak.flatten(array))


def test_histogram_helper_on_a_generated_file(generation_workflow, tmp_path):
    wf = generation_workflow
    out = generate(
        [wf["small"]],
        tmp_path / "k5.root",
        jets=wf["jets"],
        oversample=5,
        max_redraws=1,
        progress=False,
    ).out
    ev = _read_ak(out)
    pt = _flat_ak(ev.Jet_pt)
    event = _flat_ak(ak.broadcast_arrays(ev[EVENT_INDEX_BRANCH], ev.Jet_pt)[0])
    h = hist.Hist(hist.axis.Regular(10, 0, 200), storage=hist.storage.Weight())
    fill_oversampled(h, pt, event_index=event, oversample=5)
    assert h.sum(flow=True).value == pytest.approx(len(pt) / 5)
    naive = hist.Hist(hist.axis.Regular(10, 0, 200), storage=hist.storage.Weight()).fill(
        pt, weight=0.2
    )
    np.testing.assert_allclose(h.values(), naive.values())
    assert (h.variances() >= naive.variances() - 1e-12).all()  # copies are correlated


def _oversampled_replica(rng, n_mean: int, k: int):
    """Poisson(n_mean) gen events (pT ~ exponential), each reconstructed k times with a
    5 % resolution: the flat reco pT and each entry's original event."""
    gen = rng.exponential(40.0, rng.poisson(n_mean))
    reco = gen[:, None] * (1.0 + 0.05 * rng.standard_normal((len(gen), k)))
    return reco.ravel(), np.repeat(np.arange(len(gen)), k)


def test_histogram_errors_match_the_spread_of_independent_samples():
    """The helper's error of each bin equals the standard deviation of that bin over
    independent samples of events (each oversampled K times); the naive error, which
    treats the K copies as independent, is too small by up to sqrt(K)."""
    rng = np.random.default_rng(7)
    k, replicas, axis = 5, 400, hist.axis.Regular(12, 0, 120)
    values, errors, naive = [], [], []
    for _ in range(replicas):
        reco, event = _oversampled_replica(rng, 1000, k)
        h = fill_oversampled(
            hist.Hist(axis, storage=hist.storage.Weight()), reco, event_index=event, oversample=k
        )
        plain = hist.Hist(axis, storage=hist.storage.Weight()).fill(reco, weight=1.0 / k)
        values.append(h.values())
        errors.append(np.sqrt(h.variances()))
        naive.append(np.sqrt(plain.variances()))
    spread = np.std(values, axis=0, ddof=1)
    # the std of `replicas` samples has a relative error of 1/sqrt(2 * replicas) = 3.5 %
    np.testing.assert_allclose(np.mean(errors, axis=0), spread, rtol=0.12)
    assert (np.mean(naive, axis=0) < 0.75 * spread).all()
