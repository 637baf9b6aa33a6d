"""`flashsim generate`: NanoAOD-like events sampled from trained flows.

Real toy NanoAOD files, real prep stores, real (tiny) nflows models trained by the real
trainer, real ROOT output read back with uproot.
"""

from __future__ import annotations

import json
import shutil

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from flashsim.cli import main
from flashsim.errors import FlashSimError
from flashsim.generate import generate
from flashsim.layouts import JETS, MUONS
from flashsim.sampling import TrainedFlow
from pipelines.branches import resolve_branches
from pipelines.features import gen_jet_conditioning, gen_muon_conditioning
from pipelines.nanoaod import inspect_nanoaod, iterate_steps

from conftest import TTBAR as REAL_TTBAR
from conftest import raw_feature_rows


@pytest.fixture(scope="module")
def workflow(generation_workflow):
    return generation_workflow


def _read(path, branches=None):
    with uproot.open(path) as f:
        return f["Events"].arrays(branches, library="ak"), f["Events"].keys()


def _gen_events(path):
    """The events of ``path`` as generation reads them (one step)."""
    info = inspect_nanoaod(path)
    plan = resolve_branches(info.branches, ("jets", "muons"), generation=True, path=str(path))
    ((_, _, arrays),) = list(iterate_steps(path, plan.reads, 0, info.n_events, info.n_events))
    return arrays


def test_generated_events_are_nanoaod_with_one_object_per_gen_object(workflow, tmp_path):
    out = tmp_path / "flash.root"
    summary = generate(
        [workflow["toy"]], out, jets=workflow["jets"], muons=workflow["muons"], progress=False
    )
    assert summary.events == 3000 and summary.out == out
    ev, keys = _read(out)
    toy, _ = _read(workflow["toy"], ["nGenJet", "GenPart_pdgId", "GenPart_status"])

    # NanoAOD names and types
    for name in (
        "nJet",
        "Jet_pt",
        "Jet_btagDeepB",
        "Jet_genJetIdx",
        "nMuon",
        "Muon_pfRelIso04_all",
    ):
        assert name in keys
    with uproot.open(out) as f:
        tree = f["Events"]
        assert tree["nJet"].interpretation.from_dtype.kind == "u"
        assert tree["Jet_nConstituents"].interpretation.content.to_dtype == np.uint8
        assert tree["Muon_isGlobal"].interpretation.content.to_dtype == np.bool_
        provenance = json.loads(str(f["flashsim"]))
    assert provenance["seed"] == 0 and set(provenance["models"]) == {"jets", "muons"}

    # one reco jet per GenJet, each GenJet exactly once, pt-ordered like NanoAOD
    assert ak.all(ev.nJet == toy.nGenJet)
    assert summary.counts["Jet"] == int(ak.sum(toy.nGenJet)) and summary.skipped["jets"] == 0
    assert ak.all(ak.sort(ev.Jet_genJetIdx) == ak.local_index(ev.GenJet_pt))
    assert ak.all(ev.Jet_pt[:, :-1] >= ev.Jet_pt[:, 1:])
    # reco = gen x sampled response, inside the range the training data had (clip inverse)
    gen_pt = ev.GenJet_pt[ev.Jet_genJetIdx]
    ratio = ak.flatten(ev.Jet_pt / gen_pt).to_numpy()
    assert np.isfinite(ratio).all() and ratio.min() >= 0 and ratio.max() <= 3.0 + 1e-5
    assert ak.all(ev.Jet_hadronFlavour == ev.GenJet_hadronFlavour[ev.Jet_genJetIdx])

    # one reco muon per final-state gen muon, matched to it, physical charge sign
    is_mu = (abs(toy.GenPart_pdgId) == 13) & (toy.GenPart_status == 1)
    assert ak.all(ev.nMuon == ak.sum(is_mu, axis=1))
    pdg = toy.GenPart_pdgId[ev.Muon_genPartIdx]
    assert ak.all(abs(pdg) == 13)
    assert ak.all(ev.Muon_charge == -np.sign(pdg))
    assert ak.all(ev.Muon_mass > 0.105) and ak.all(ev.Muon_pt >= 0)


def test_same_seed_same_events_other_seed_other_events(workflow, tmp_path):
    kw = {"jets": workflow["jets"], "progress": False, "step_events": 1000}
    generate([workflow["toy"]], tmp_path / "a.root", seed=5, **kw)
    generate([workflow["toy"]], tmp_path / "b.root", seed=5, **kw)
    generate([workflow["toy"]], tmp_path / "c.root", seed=6, **kw)
    a, b, c = (_read(tmp_path / f"{n}.root", ["Jet_pt", "Jet_qgl"])[0] for n in "abc")
    assert ak.all(a.Jet_pt == b.Jet_pt) and ak.all(a.Jet_qgl == b.Jet_qgl)
    assert not ak.all(a.Jet_pt == c.Jet_pt)


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize("gen_muons", ["final-state", "all"])
def test_generation_conditioning_is_the_training_conditioning(gen_muons):
    """The gen-level rows generation feeds the flow equal the conditioning columns of the
    rows prep writes, for every matched object of the real 2015 sample, with either
    definition of the gen muons near jets."""
    ev = _gen_events(REAL_TTBAR)
    with uproot.open(REAL_TTBAR) as f:
        idx = f["Events"].arrays(
            ["Jet_genJetIdx", "nGenJet", "Muon_genPartIdx", "nGenPart"], library="np"
        )

    def flat_index(counts, per_event_index):
        """Flat position of object ``per_event_index[k]`` of event ``k``'s collection."""
        event = np.repeat(np.arange(len(per_event_index)), [len(i) for i in per_event_index])
        starts = np.cumsum(counts) - counts
        return starts[event] + np.concatenate(per_event_index).astype(np.int64)

    jets = raw_feature_rows(REAL_TTBAR, "jets", gen_muons=gen_muons)
    gen = gen_jet_conditioning(ev, gen_muons)
    matched = [
        i[(i >= 0) & (i < n)] for i, n in zip(idx["Jet_genJetIdx"], idx["nGenJet"], strict=True)
    ]
    rows = gen.rows[flat_index(gen.counts, matched)]
    assert len(jets) == 362 and rows.shape == (362, JETS.n_conditioning)
    np.testing.assert_array_equal(rows, jets[:, JETS.conditioning])

    muons = raw_feature_rows(REAL_TTBAR, "muons")
    gmu = gen_muon_conditioning(ev)
    # row of each GenPart in the generation rows, -1 where it is not a final-state muon
    n_parts = idx["nGenPart"].astype(np.int64)
    slot = np.full(n_parts.sum(), -1)
    slot[flat_index(n_parts, np.split(gmu.index, np.cumsum(gmu.counts)[:-1]))] = np.arange(
        len(gmu.rows)
    )
    partner = slot[flat_index(n_parts, [i[i >= 0] for i in idx["Muon_genPartIdx"]])]
    kept = partner >= 0  # muons matched to a final-state gen muon
    assert len(muons) == 38 and kept.sum() >= 30
    np.testing.assert_array_equal(gmu.rows[partner[kept]], muons[kept][:, MUONS.conditioning])


def test_sampling_is_seeded_and_independent_of_the_batching(workflow):
    model = TrainedFlow.load(workflow["jets"])
    y = np.random.default_rng(0).normal(size=(100, JETS.n_conditioning)).astype("f4")
    whole = model.sample(y, seed=1)
    assert np.array_equal(whole, model.sample(y, seed=1))
    # the same draws whatever the batching (up to float rounding of batched matmuls)
    np.testing.assert_allclose(model.sample(y, seed=1, batch_rows=7), whole, rtol=1e-4, atol=1e-5)
    assert not np.allclose(model.sample(y, seed=2), whole)


def test_both_spline_engines_generate_the_same_events(workflow, tmp_path):
    model = TrainedFlow.load(workflow["jets"])
    assert model.config.spline == "fused"  # the default engine, recorded at training
    stock = TrainedFlow.load(workflow["jets"], spline="nflows")
    y = np.random.default_rng(0).normal(size=(500, JETS.n_conditioning)).astype("f4")
    np.testing.assert_allclose(stock.sample(y, seed=3), model.sample(y, seed=3), atol=1e-4)

    args = ["generate", str(workflow["toy"]), "--jets", str(workflow["jets"]), "-q"]
    for engine in ("fused", "nflows"):
        out = tmp_path / f"{engine}.root"
        result = CliRunner().invoke(main, [*args, "--spline", engine, "--out", str(out)])
        assert result.exit_code == 0, result.output
        with uproot.open(out) as f:
            assert json.loads(str(f["flashsim"]))["spline"] == {"jets": engine}
    fused, nflows = (_read(tmp_path / f"{e}.root", ["Jet_pt"])[0] for e in ("fused", "nflows"))
    np.testing.assert_allclose(
        ak.flatten(fused.Jet_pt).to_numpy(), ak.flatten(nflows.Jet_pt).to_numpy(), rtol=1e-4
    )


# ------------------------------------------------------------------- failure modes


def test_refusals_name_the_problem(workflow, tmp_path):
    toy, jets = workflow["toy"], workflow["jets"]
    with pytest.raises(FlashSimError, match="Nothing to generate"):
        generate([toy], tmp_path / "x.root", progress=False)
    with pytest.raises(FlashSimError, match=r"models jets.*--jets"):
        generate([toy], tmp_path / "x.root", muons=jets, progress=False)
    with pytest.raises(FlashSimError, match="without checkpoints"):
        generate([toy], tmp_path / "x.root", jets=tmp_path, progress=False)
    h5 = next((workflow["base"] / "shards").glob("*.zarr"))
    with pytest.raises(FlashSimError):
        generate([h5], tmp_path / "x.root", jets=jets, progress=False)
    assert not (tmp_path / "x.root").exists()


def test_failed_run_keeps_the_earlier_output_and_leaves_no_partial_file(workflow, tmp_path):
    out = tmp_path / "flash.root"
    generate([workflow["toy"]], out, jets=workflow["jets"], progress=False)
    before = out.read_bytes()
    with pytest.raises(FlashSimError, match="already exists"):
        generate([workflow["toy"]], out, jets=workflow["jets"], progress=False)
    # a second input without generator-level branches (collision data) fails the run
    data = tmp_path / "collisions.root"
    with uproot.recreate(data) as f:
        f["Events"] = {"nJet": np.array([1], "u4"), "run": np.array([1], "u4")}
    with pytest.raises(FlashSimError, match="generator-level"):
        generate(
            [workflow["toy"], data], out, jets=workflow["jets"], overwrite=True, progress=False
        )
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collisions.root", "flash.root"]


def test_cli_bare_form_uses_the_default_run_directories(workflow, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(workflow["jets"], tmp_path / "runs" / "jets")
    result = CliRunner().invoke(main, ["generate", str(workflow["toy"]), "-q"])
    assert result.exit_code == 0, result.output
    ev, keys = _read(tmp_path / "flashsim.root", ["nJet"])
    assert "nJet" in keys and "nMuon" not in keys and len(ev) == 3000
    result = CliRunner().invoke(main, ["generate", str(workflow["toy"])])
    assert result.exit_code == 2 and "already exists" in result.output
