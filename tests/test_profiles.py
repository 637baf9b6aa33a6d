"""NanoAOD generation profiles: the real Run 3 v12 file without flags, v14-v15 and Run 2
(v5-v7, v8-v9) inputs built with uproot from the real samples, named as those versions
name their branches; derived branches against plain per-event Python references."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from flashsim.errors import FlashSimError
from flashsim.layouts import JETS
from flashsim.store import read_metadata, store_path
from pipelines.branches import materialize, required_branches, resolve_branches
from pipelines.nanoaod import inspect_nanoaod, iterate_steps
from pipelines.prep import prep

from conftest import DY, SHARED_DATA, read_events, rows_of, write_events

V12 = SHARED_DATA / "nano_tt_v12.root"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "prep.md"

pytestmark = pytest.mark.skipif(
    not (V12.is_file() and DY.is_file()),
    reason=f"real NanoAOD samples absent from {SHARED_DATA}; set FLASHSIM_SHARED_DATA",
)


def documented_substitutes(profile: str) -> set[str]:
    """The branches docs/prep.md lists in the table of profile ``profile``."""
    text = DOCS.read_text()
    start = text.index(f"(`{profile}`)")
    section = text[start : text.index("\n#", start)]
    return set(re.findall(r"^\| `(Jet_\w+)` \|", section, flags=re.M))


def as_lists(arrays) -> dict[str, list]:
    """``{branch: nested Python lists}`` of a dict of arrays or a record array."""
    names = arrays.fields if isinstance(arrays, ak.Array) else list(arrays)
    return {n: ak.to_list(arrays[n]) for n in names}


def materialized(path: Path) -> tuple[dict, dict]:
    """(raw arrays as read, canonical branches as prep sees them) for all events of ``path``."""
    info = inspect_nanoaod(path)
    plan = resolve_branches(info.branches, ["jets"], path=str(path))
    ((_, n, raw),) = list(iterate_steps(path, plan.reads, 0, info.n_events, info.n_events))
    return as_lists(raw), as_lists(materialize(raw, plan, n))


# --------------------------------------------------------------- per-jet references


def ref_breg(raw_factor: float, corr: float, nu: float) -> float:
    return (1.0 - raw_factor) * corr * nu if corr > 0 and nu > 0 else 1.0


def ref_c(b: float, cvb: float) -> float:
    return cvb * b / (1.0 - cvb) if b >= 0 and 0 <= cvb < 1 else -1.0


def ref_jet_id(j: dict) -> int:
    """JME Run 3 PUPPI recipe, one jet at a time."""
    a = abs(j["Jet_eta"])
    nhf, nef, chf = j["Jet_neHEF"], j["Jet_neEmEF"], j["Jet_chHEF"]
    ncm, nnm = j["Jet_chMultiplicity"], j["Jet_neMultiplicity"]
    if a <= 2.6:
        tight = nhf < 0.99 and nef < 0.9 and ncm + nnm > 1 and chf > 0.01 and ncm > 0
    elif a <= 2.7:
        tight = nhf < 0.90 and nef < 0.99
    elif a <= 3.0:
        tight = nhf < 0.99
    else:
        tight = nnm >= 2 and nef < 0.4
    veto = tight and (a > 2.7 or (j["Jet_muEF"] < 0.8 and j["Jet_chEmEF"] < 0.8))
    return 2 * tight + 4 * veto


def per_jet(raw: dict, names: list[str]):
    """Each jet of every event as a dict of the ``names`` branches."""
    for ev in range(len(raw[names[0]])):
        for k in range(len(raw[names[0]][ev])):
            yield ev, k, {n: raw[n][ev][k] for n in names}


# --------------------------------------------------------------- Run 3 v12 (real file)

V12_SUBSTITUTES = {
    "Jet_btagCMVA",
    "Jet_btagCSVV2",
    "Jet_btagDeepB",
    "Jet_btagDeepC",
    "Jet_btagDeepFlavC",
    "Jet_bRegCorr",
    "Jet_qgl",
    "Jet_puId",
}


def test_v12_without_flags(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flashsim.prep"):
        summary = prep([V12], tmp_path, progress=False)
    assert summary.objects["jets"].matched > 1000 and summary.objects["muons"].matched > 100
    meta = read_metadata(store_path(tmp_path, "jets", "zarr"))
    recorded = {s["branch"] for s in meta["substitutions"]}
    assert recorded == V12_SUBSTITUTES == documented_substitutes("run3-v12")
    assert {s["profile"] for s in meta["substitutions"]} == {"run3-v12"}
    assert meta["inputs"][0]["nanoaod_profile"] == "run3-v12"
    # printed once each: one line naming the generation, one per substituted branch
    messages = [r.getMessage() for r in caplog.records]
    assert sum("recognised as Run 3 NanoAOD v12" in m for m in messages) == 1
    for branch in V12_SUBSTITUTES:
        assert sum(m.startswith(f"{branch} is not in") for m in messages) == 1
    assert read_metadata(store_path(tmp_path, "muons", "zarr"))["substitutions"] == []

    # derived values in the rows: bRegCorr has no transform, qgl's failed -1 -> -0.1
    raw = as_lists(read_events(V12, [*_V12_JET_READS, "GenJet_pt"]))
    ref_breg_rows, ref_qgl_rows = [], []
    for ev, _, j in per_jet(raw, _V12_JET_READS):
        if 0 <= j["Jet_genJetIdx"] < len(raw["GenJet_pt"][ev]):
            ref_breg_rows.append(
                ref_breg(
                    j["Jet_rawFactor"], j["Jet_PNetRegPtRawCorr"], j["Jet_PNetRegPtRawCorrNeutrino"]
                )
            )
            q = j["Jet_btagPNetQvG"]
            ref_qgl_rows.append(q if q >= 0 else -0.1)
    rows = rows_of(store_path(tmp_path, "jets", "zarr"))
    got = rows[:, JETS.index("MJet_bRegCorr")]
    np.testing.assert_array_equal(np.sort(got), np.sort(np.float32(ref_breg_rows)))
    got = rows[:, JETS.index("MJet_qgl")]
    np.testing.assert_array_equal(np.sort(got), np.sort(np.float32(ref_qgl_rows)))
    # retired taggers: NanoAOD's -1, preprocessed to -0.1 and smeared by N(0, 0.01) there
    csv = rows[:, JETS.index("MJet_btagCSVV2")]
    assert np.all(np.abs(csv + 0.1) < 0.05) and 0.005 < np.std(csv) < 0.02


_V12_JET_READS = [
    "Jet_genJetIdx",
    "Jet_rawFactor",
    "Jet_PNetRegPtRawCorr",
    "Jet_PNetRegPtRawCorrNeutrino",
    "Jet_btagPNetQvG",
]


def test_v12_derived_branches_match_a_per_jet_reference():
    raw, ev = materialized(V12)
    n = 0
    names = ["Jet_rawFactor", "Jet_PNetRegPtRawCorr", "Jet_PNetRegPtRawCorrNeutrino"]
    names += ["Jet_btagPNetQvG", "Jet_btagDeepFlavB", "Jet_btagDeepFlavCvB"]
    for e, k, j in per_jet(raw, names):
        breg = ref_breg(
            j["Jet_rawFactor"], j["Jet_PNetRegPtRawCorr"], j["Jet_PNetRegPtRawCorrNeutrino"]
        )
        assert ev["Jet_bRegCorr"][e][k] == pytest.approx(breg, rel=1e-12)
        q = j["Jet_btagPNetQvG"]
        assert ev["Jet_qgl"][e][k] == (q if q >= 0 else -1.0)
        c = ref_c(j["Jet_btagDeepFlavB"], j["Jet_btagDeepFlavCvB"])
        assert ev["Jet_btagDeepFlavC"][e][k] == pytest.approx(c, rel=1e-12)
        assert ev["Jet_btagCSVV2"][e][k] == -1.0 and ev["Jet_puId"][e][k] == 0.0
        n += 1
    assert n > 1500
    # some jets of the file have no ParticleNet regression: they take the neutral 1
    assert any(v == 1.0 for evt in ev["Jet_bRegCorr"] for v in evt)


def test_v12_strict_refuses_with_the_list(tmp_path):
    with pytest.raises(FlashSimError) as err:
        prep([V12], tmp_path / "s", strict=True, progress=False)
    message = str(err.value)
    assert "--strict" in message and "Run 3 NanoAOD v12" in message
    for branch in V12_SUBSTITUTES:
        assert branch in message
    assert not (tmp_path / "s").exists()
    # an explicit mapping replaces a built-in substitute, also under --strict
    explicit = {b: -1 for b in V12_SUBSTITUTES - {"Jet_bRegCorr", "Jet_puId"}}
    explicit |= {"Jet_bRegCorr": 1.0, "Jet_puId": 0}
    summary = prep([V12], tmp_path / "m", strict=True, branch_map=explicit, progress=False)
    assert {s["origin"] for s in summary.substitutions} == {"user"}


# --------------------------------------------------------------- v14-v15 (built from v12)


def _write_v15(tmp_path: Path) -> Path:
    needed = set(required_branches("jets")) | set(required_branches("muons"))
    have = inspect_nanoaod(V12).branches
    extra = ["Jet_rawFactor", "Jet_PNetRegPtRawCorr", "Jet_PNetRegPtRawCorrNeutrino"]
    extra += ["Jet_btagDeepFlavCvB", "Jet_btagPNetQvG", "Jet_btagRobustParTAK4B"]
    extra += ["Jet_btagRobustParTAK4QG", "Jet_chHEF", "Jet_neHEF", "Jet_chEmEF", "Jet_neEmEF"]
    events = read_events(V12, sorted((needed & have) | set(extra)))
    fields = {f: events[f] for f in events.fields if f not in ("Jet_jetId",)}
    # v15 names: UParT replaces RobustParT (its q-vs-g is uds vs g: 1 - the g-vs-uds score)
    fields["Jet_btagUParTAK4B"] = fields.pop("Jet_btagRobustParTAK4B")
    qg = fields.pop("Jet_btagRobustParTAK4QG")
    fields["Jet_btagUParTAK4QvG"] = ak.where(qg >= 0, 1 - qg, -1.0)
    # multiplicities (new in v15; synthetic split of nConstituents, some jets with 0 charged)
    n = events["Jet_nConstituents"]
    neutral = ak.values_astype(n * (events["Jet_neHEF"] + events["Jet_neEmEF"]) // 1, np.uint8)
    fields["Jet_neMultiplicity"] = neutral
    fields["Jet_chMultiplicity"] = ak.values_astype(n - neutral, np.uint8)
    fields["Jet_puIdDisc"] = ak.full_like(events["Jet_pt"], 0.5)
    return write_events(tmp_path / "nano_v15.root", fields)


def test_v15_jet_id_and_upart(tmp_path):
    path = _write_v15(tmp_path)
    raw, ev = materialized(path)
    names = ["Jet_eta", "Jet_chHEF", "Jet_neHEF", "Jet_chEmEF", "Jet_neEmEF", "Jet_muEF"]
    names += ["Jet_chMultiplicity", "Jet_neMultiplicity", "Jet_btagUParTAK4QvG"]
    seen = set()
    for e, k, j in per_jet(raw, names):
        assert ev["Jet_jetId"][e][k] == ref_jet_id(j)
        seen.add(ref_jet_id(j))
        q = j["Jet_btagUParTAK4QvG"]
        assert ev["Jet_qgl"][e][k] == (q if q >= 0 else -1.0)  # UParT preferred over PNet
    assert seen == {0, 2, 6}  # every outcome of the recipe occurs

    summary = prep([path], tmp_path / "s", progress=False)
    assert summary.objects["jets"].matched > 1000
    meta = read_metadata(store_path(tmp_path / "s", "jets", "zarr"))
    recorded = {s["branch"] for s in meta["substitutions"]}
    assert recorded == V12_SUBSTITUTES | {"Jet_jetId"} == documented_substitutes("run3-v15")
    assert meta["inputs"][0]["nanoaod_profile"] == "run3-v15"
    with pytest.raises(FlashSimError, match="Jet_jetId"):
        prep([path], tmp_path / "strict", strict=True, progress=False)


# --------------------------------------------------------------- Run 2 (v5-v7, v8-v9)


def test_run2_versions(tmp_path):
    # v5-v7 (102X, 106Xv1) store btagCMVA, btagDeepC and btagDeepFlavC: nothing to substitute
    plan = resolve_branches(inspect_nanoaod(DY).branches, ["jets"], path=str(DY))
    assert plan.profile == "run2" and plan.substitutions == []
    # v8-v9 (UL) store C-vs-B ratios instead, and no cMVAv2
    needed = sorted(set(required_branches("jets")) | set(required_branches("muons")))
    events = read_events(DY, needed)
    b, c = events["Jet_btagDeepB"], events["Jet_btagDeepC"]
    fb, fc = events["Jet_btagDeepFlavB"], events["Jet_btagDeepFlavC"]
    drop = ("Jet_btagCMVA", "Jet_btagDeepC", "Jet_btagDeepFlavC")
    fields = {f: events[f] for f in events.fields if f not in drop}
    fields["Jet_btagDeepCvB"] = ak.where((b >= 0) & (c >= 0), c / (c + b), -1.0)
    fields["Jet_btagDeepFlavCvB"] = ak.where((fb >= 0) & (fc >= 0), fc / (fc + fb), -1.0)
    path = write_events(tmp_path / "nano_v9.root", fields)
    raw, ev = materialized(path)
    for e, k, j in per_jet(raw, ["Jet_btagDeepB", "Jet_btagDeepCvB"]):
        ref = ref_c(j["Jet_btagDeepB"], j["Jet_btagDeepCvB"])
        assert ev["Jet_btagDeepC"][e][k] == pytest.approx(ref, rel=1e-12)
    summary = prep([path], tmp_path / "s", objects=["jets"], progress=False)
    assert {s["branch"] for s in summary.substitutions} == set(drop)
    assert set(drop) == documented_substitutes("run2")
    assert summary.inputs[0]["nanoaod_profile"] == "run2"


def test_v12_cli(tmp_path):
    from click.testing import CliRunner

    from flashsim.cli import main

    ok = CliRunner().invoke(main, ["prep", str(V12), "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "recognised as Run 3 NanoAOD v12" in ok.output
    for branch in V12_SUBSTITUTES:
        assert f"substitution: {branch} <- " in ok.output
    strict = CliRunner().invoke(main, ["prep", str(V12), "--out", str(tmp_path / "b"), "--strict"])
    assert strict.exit_code == 2 and "Traceback" not in strict.output
    assert all(branch in strict.output for branch in V12_SUBSTITUTES)
