"""The toy NanoAOD generator: format, consistency, determinism, physics, CLI, atomicity."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from flashsim.cli import main
from flashsim.errors import FlashSimError, InputError, StoreError
from flashsim.toy import (
    BLOCK_EVENTS,
    COLLECTIONS,
    FIGURE_NAMES,
    REAL_SAMPLE_TOLERANCES,
    branch_types,
    coarse_figures,
    generate_block,
    generate_toy,
    iter_toy_chunks,
    within_tolerance,
    write_events,
)

from conftest import DY as REAL_DY
from conftest import TTBAR as REAL_WJETS  # W+jets despite its name

N_EVENTS = 20_000


@pytest.fixture(scope="module")
def ttbar_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "ttbar.root"
    # a chunk size that is not a multiple of the block size exercises the regrouping
    generate_toy(path, N_EVENTS, seed=3, chunk_events=7_000)
    return path


@pytest.fixture(scope="module")
def ttbar(ttbar_file) -> ak.Array:
    return uproot.open(ttbar_file)["Events"].arrays()


@pytest.fixture(scope="module")
def wjets_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "wjets.root"
    generate_toy(path, N_EVENTS, seed=5, process="wjets")
    return path


# --- format ------------------------------------------------------------------------------
def test_every_branch_has_the_nanoaod_type(ttbar_file):
    tree = uproot.open(ttbar_file)["Events"]
    assert tree.num_entries == N_EVENTS
    expected = branch_types()
    assert set(tree.keys()) == set(expected)
    for name, dtype in expected.items():
        interp = tree[name].interpretation
        leaf_dtype = interp.content.from_dtype if hasattr(interp, "content") else interp.from_dtype
        assert leaf_dtype.newbyteorder("=") == dtype, name
    for counter in ("nJet", "nGenJet", "nGenPart", "nMuon"):
        assert tree[counter].typename == "uint32_t"
        assert tree[counter].member("fLeaves")[0].member("fIsUnsigned")


@pytest.mark.usefixtures("shared_data")
def test_types_match_the_real_files(ttbar_file):
    toy = uproot.open(ttbar_file)["Events"]
    real = [uproot.open(p)["Events"] for p in (REAL_WJETS, REAL_DY)]
    checked = 0
    names = toy.keys()
    for name in names:
        real_types = {t[name].typename for t in real if name in t}
        if real_types:
            checked += 1
            # Jet_nConstituents is uint8 in the 2015 sample and int32 in the DY one
            assert toy[name].typename in real_types, (name, real_types)
    assert checked == len(names)  # every toy branch exists in at least one real file


def test_counts_and_indices_are_consistent(ttbar):
    for name, fields in COLLECTIONS.items():
        counts = ttbar["n" + name].to_numpy()
        for field in fields:
            assert np.array_equal(ak.num(ttbar[f"{name}_{field}"]).to_numpy(), counts), field
    jet_idx = ttbar.Jet_genJetIdx
    assert ak.all((jet_idx >= -1) & (jet_idx < ttbar.nGenJet))
    mu_idx = ttbar.Muon_genPartIdx
    assert ak.all((mu_idx >= -1) & (mu_idx < ttbar.nGenPart))
    # matched muons point to final-state gen muons, with the physical charge convention
    ok = mu_idx >= 0
    safe = ak.where(ok, mu_idx, 0)
    pdg = ttbar.GenPart_pdgId[safe][ok]
    assert ak.all((abs(pdg) == 13) & (ttbar.GenPart_status[safe][ok] == 1))
    assert ak.mean(ttbar.Muon_charge[ok] == -np.sign(pdg)) > 0.99  # pdgId +13 is mu-
    # mothers come before their daughters
    mother = ttbar.GenPart_genPartIdxMother
    local = ak.local_index(mother)
    assert ak.all((mother >= -1) & (mother < local))
    # sorted by decreasing pT like NanoAOD
    for name in ("Jet", "GenJet", "Muon"):
        pt = ttbar[f"{name}_pt"]
        assert ak.all(pt[:, 1:] <= pt[:, :-1])


def test_inefficiencies_and_fakes_exist(ttbar):
    assert ak.any(ttbar.Jet_genJetIdx == -1)  # pileup jets, jets from GenJets below 10 GeV
    assert ak.any(ttbar.Muon_genPartIdx == -1)  # fake muons
    # GenJets without a reconstructed partner
    n_matched = ak.sum(ttbar.Jet_genJetIdx >= 0)
    assert n_matched < ak.sum(ttbar.nGenJet)
    gen_mu = (abs(ttbar.GenPart_pdgId) == 13) & (ttbar.GenPart_status == 1)
    assert ak.sum(ttbar.Muon_genPartIdx >= 0) < ak.sum(gen_mu)


# --- determinism ---------------------------------------------------------------------------
def _arrays(events):
    out = dict(events.scalars)
    for name, coll in events.collections.items():
        out["n" + name] = coll.counts
        out.update({f"{name}_{k}": v for k, v in coll.fields.items()})
    return out


def test_same_seed_same_events_for_any_chunking():
    n = BLOCK_EVENTS + 2_500
    runs = [
        [c for c in iter_toy_chunks(n, seed=11, chunk_events=k, workers=w)]
        for k, w in ((n, 1), (3_333, 2), (BLOCK_EVENTS, 1))
    ]
    merged = [_arrays(type(r[0]).concatenate(r)) for r in runs]
    for other in merged[1:]:
        assert merged[0].keys() == other.keys()
        for key in merged[0]:
            assert np.array_equal(merged[0][key], other[key]), key
    assert [len(c) for c in runs[1]] == [3_333, 3_333, 3_333, 2_501]


def test_different_seed_different_events():
    a, b = _arrays(generate_block(1, 0)), _arrays(generate_block(2, 0))
    assert not np.array_equal(a["GenJet_pt"][:100], b["GenJet_pt"][:100])
    assert not np.array_equal(a["nJet"], b["nJet"])


def test_files_with_the_same_seed_are_identical(tmp_path, ttbar):
    path = tmp_path / "again.root"
    generate_toy(path, N_EVENTS, seed=3, chunk_events=N_EVENTS, workers=1)
    again = uproot.open(path)["Events"].arrays()
    for field in ttbar.fields:
        assert ak.all(ttbar[field] == again[field]), field


# --- physics -----------------------------------------------------------------------------
def test_taggers_follow_the_jet_flavour(ttbar):
    jets = {f: ak.flatten(ttbar[f]) for f in ttbar.fields if f.startswith("Jet_")}
    flav = jets["Jet_hadronFlavour"].to_numpy()
    tracked = np.abs(jets["Jet_eta"].to_numpy()) < 2.4
    for tagger in ("Jet_btagDeepFlavB", "Jet_btagDeepB", "Jet_btagCSVV2", "Jet_btagCMVA"):
        x = jets[tagger].to_numpy()
        means = [np.mean(x[tracked & (flav == f)]) for f in (5, 4, 0)]
        assert means[0] > means[1] > means[2], tagger
    cvb = jets["Jet_btagDeepFlavCvB"].to_numpy()
    assert np.mean(cvb[flav == 4]) > np.mean(cvb[flav == 5])
    cmva = jets["Jet_btagCMVA"].to_numpy()
    assert cmva.min() >= -1 and cmva.max() <= 1 and (cmva < 0).any()
    # failed taggers outside the tracker, with the defaults of real NanoAOD
    forward = np.abs(jets["Jet_eta"].to_numpy()) > 2.5
    assert np.all(jets["Jet_btagCSVV2"].to_numpy()[forward] == -10)
    assert np.all(jets["Jet_btagDeepB"].to_numpy()[forward] == -1)
    assert np.all(jets["Jet_qgl"].to_numpy()[forward] == -1)
    # DeepC / DeepFlavC are consistent with the CvB ratios: C = CvB * B / (1 - CvB)
    for c, b, r in (("DeepC", "DeepB", "DeepCvB"), ("DeepFlavC", "DeepFlavB", "DeepFlavCvB")):
        cc, bb, rr = (jets["Jet_btag" + k].to_numpy().astype(float) for k in (c, b, r))
        # (10-bit mantissas as in NanoAOD: the ratio is exact to ~1 % for CvB < 0.9)
        ok = (bb >= 0) & (rr >= 0) & (rr < 0.9)
        assert np.allclose(cc[ok], rr[ok] * bb[ok] / (1 - rr[ok]), rtol=0.01, atol=1e-3)


def test_jet_observables_are_plausible(ttbar):
    m = ttbar.Jet_genJetIdx >= 0
    ratio = ak.flatten(ttbar.Jet_pt[m] / ttbar.GenJet_pt[ttbar.Jet_genJetIdx[m]]).to_numpy()
    assert 0.95 < np.median(ratio) < 1.2 and np.quantile(ratio, 0.99) > 1.4  # tails
    area = ak.flatten(ttbar.Jet_area).to_numpy()
    assert 0.48 < np.median(area) < 0.53
    assert set(np.unique(ak.flatten(ttbar.Jet_puId))) <= {0, 4, 6, 7}
    jet_id, counts = np.unique(ak.flatten(ttbar.Jet_jetId), return_counts=True)
    assert set(jet_id) <= set(range(8)) and jet_id[np.argmax(counts)] == 6
    # jets whose GenJet holds a gen muon with most of its pT (a muon jet) have a high muEF
    gen_mu = (abs(ttbar.GenPart_pdgId) == 13) & (ttbar.GenPart_status == 1)
    gj = ttbar.Jet_genJetIdx[m]
    pairs = ak.cartesian(
        [
            ak.zip(
                {
                    "eta": ttbar.GenJet_eta[gj],
                    "phi": ttbar.GenJet_phi[gj],
                    "pt": ttbar.GenJet_pt[gj],
                }
            ),
            ak.zip(
                {
                    "eta": ttbar.GenPart_eta[gen_mu],
                    "phi": ttbar.GenPart_phi[gen_mu],
                    "pt": ttbar.GenPart_pt[gen_mu],
                }
            ),
        ],
        nested=True,
    )
    jet, muon = ak.unzip(pairs)
    dphi = (jet.phi - muon.phi + np.pi) % (2 * np.pi) - np.pi
    inside = ((jet.eta - muon.eta) ** 2 + dphi**2 < 0.16) & (muon.pt > 0.5 * jet.pt)
    muon_jet = ak.flatten(ak.any(inside, axis=2)).to_numpy()
    mu_ef = ak.flatten(ttbar.Jet_muEF[m]).to_numpy()
    assert muon_jet.sum() > 100
    assert np.median(mu_ef[muon_jet]) > 0.7 and np.mean(mu_ef[~muon_jet] > 0.5) < 0.02
    flav = ak.flatten(ttbar.GenJet_hadronFlavour).to_numpy()
    pflav = np.abs(ak.flatten(ttbar.GenJet_partonFlavour).to_numpy())
    assert set(np.unique(flav)) == {0, 4, 5}
    assert set(np.unique(pflav)) <= {0, 1, 2, 3, 4, 5, 21}
    assert np.mean(pflav[flav == 5] == 5) > 0.95


def test_gen_muons_and_reco_muons_are_plausible(ttbar):
    mu = abs(ttbar.GenPart_pdgId) == 13
    status = ak.flatten(ttbar.GenPart_status[mu]).to_numpy()
    flags = ak.flatten(ttbar.GenPart_statusFlags[mu]).to_numpy()
    assert set(np.unique(status)) == {1, 23}  # final muons and hard-process copies of W muons
    prompt = (flags & 1) != 0
    from_hadron = (flags & (1 << 6)) != 0
    assert prompt.any() and from_hadron.any() and not (prompt & from_hadron).any()
    assert np.all(flags[status == 23] & (1 << 7))  # isHardProcess
    assert np.all(flags[status == 1] & (1 << 13))  # isLastCopy
    # reco: prompt muons are isolated and not displaced, muons from b/c decays are
    idx = ttbar.Muon_genPartIdx
    ok = idx >= 0
    gflags = ak.flatten(ttbar.GenPart_statusFlags[ak.where(ok, idx, 0)][ok]).to_numpy()
    iso = ak.flatten(ttbar.Muon_pfRelIso04_all[ok]).to_numpy()
    sip = ak.flatten(ttbar.Muon_sip3d[ok]).to_numpy()
    is_prompt = (gflags & 1) != 0
    assert np.median(iso[is_prompt]) < 0.2 < np.median(iso[~is_prompt])
    assert np.median(sip[is_prompt]) < 2 < np.median(sip[~is_prompt])
    for branch in ("Muon_dxyErr", "Muon_dzErr", "Muon_ptErr", "Muon_ip3d"):
        assert ak.all(ttbar[branch] > 0), branch
    pu = ttbar.Pileup_nTrueInt.to_numpy()
    assert 20 < pu.mean() < 35
    eoot = ttbar.Pileup_sumEOOT.to_numpy()
    assert (eoot == 0).any() and (eoot > 0).mean() > 0.9


# --- comparison with real data -------------------------------------------------------------
@pytest.mark.usefixtures("shared_data")
def test_wjets_toy_matches_the_real_2015_sample(wjets_file):
    real = coarse_figures(REAL_WJETS)
    toy = coarse_figures(wjets_file)
    assert real["events"] == 200 and toy["events"] == N_EVENTS
    assert set(REAL_SAMPLE_TOLERANCES) == set(FIGURE_NAMES)
    off = {k: (toy[k], real[k]) for k in FIGURE_NAMES if not within_tolerance(k, toy[k], real[k])}
    assert not off, f"toy vs real outside tolerance: {off}"


def test_ttbar_toy_has_the_ttbar_topology(ttbar_file, wjets_file):
    tt, wj = coarse_figures(ttbar_file), coarse_figures(wjets_file)
    # two b jets among ~6 matched jets: a b fraction near 0.3, ~20x that of W+jets
    assert 0.2 < tt["b_jet_fraction"] < 0.4
    assert tt["b_jet_fraction"] > 8 * wj["b_jet_fraction"]
    assert 4.5 < tt["matched_jets_per_event"] < 8.5
    assert tt["median_genjet_pt"] > 1.4 * wj["median_genjet_pt"]
    assert tt["matched_muons_per_event"] > wj["matched_muons_per_event"]


# --- CLI, atomicity, errors ----------------------------------------------------------------
def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli.root"
    runner = CliRunner()
    res = runner.invoke(main, ["toy", "-n", "300", "-o", str(out), "-q", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "Wrote 300 ttbar events" in res.output
    before = out.read_bytes()
    res = runner.invoke(main, ["toy", "-n", "300", "-o", str(out), "-q", "--seed", "2"])
    assert res.exit_code == 2
    assert "already exists" in res.output and "--overwrite" in res.output
    assert out.read_bytes() == before
    res = runner.invoke(
        main, ["toy", "-n", "300", "-o", str(out), "-q", "--seed", "2", "--overwrite"]
    )
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.root"]  # no temporary left


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "events.root"

    def failing():
        yield from iter_toy_chunks(500, chunk_events=200, workers=1)
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError):
        write_events(out, failing())
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous output")
    with pytest.raises(RuntimeError):
        write_events(out, failing(), overwrite=True)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.root"]


def test_bad_requests_raise_clear_errors(tmp_path):
    with pytest.raises(FlashSimError, match="at least one"):
        generate_toy(tmp_path / "a.root", 0)
    with pytest.raises(FlashSimError, match="Unknown toy process"):
        generate_toy(tmp_path / "a.root", 10, process="zjets")
    with pytest.raises(FlashSimError, match="Unknown compression"):
        generate_toy(tmp_path / "a.root", 10, compression="snappy")
    with pytest.raises(StoreError, match="is a directory"):
        generate_toy(tmp_path, 10)
    not_root = tmp_path / "not.root"
    not_root.write_text("hello")
    with pytest.raises(InputError, match=r"not\.root"):
        coarse_figures(not_root)
    assert not (tmp_path / "a.root").exists()
