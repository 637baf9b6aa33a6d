"""The jets-run3 layout on real Run 3 NanoAOD: rows against a plain per-jet reference read
with uproot, a v15 file built from the real v12 one (UParT names, no Jet_jetId), the
generation checks, and prep -> train -> validate -> generate end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from flashsim.errors import FlashSimError
from flashsim.generate import written_branches
from flashsim.layouts import JETS_RUN3
from flashsim.store import read_metadata, store_path
from flashsim.transforms import Preprocessing
from pipelines.branches import required_branches
from pipelines.nanoaod import inspect_nanoaod
from pipelines.prep import prep

from conftest import GEN_FLOW, SHARED_DATA, read_events, rows_of, write_events

V12 = SHARED_DATA / "nano_tt_v12.root"

pytestmark = pytest.mark.skipif(
    not V12.is_file(),
    reason=f"real NanoAOD v12 sample absent from {SHARED_DATA}; set FLASHSIM_SHARED_DATA",
)

PART = ("B", "CvB", "CvL")
"""The ParT AK4 scores whose v12 (RobustParT) and v15 (UParT) branches differ only by name."""


def physical_rows(store: Path) -> np.ndarray:
    """The store's rows in file order (all in train), mapped back with its recorded chain."""
    meta = read_metadata(store)
    rows = rows_of(store, "train")
    return Preprocessing.from_dict(meta["object"], meta["preprocessing"]).inverse(rows)


def score(x: float) -> float:
    """A tagger score as the jets-run3 preprocessing gives it back: failed -> -1."""
    return -1.0 if x < 0 else min(max(x, 1e-5), 1 - 1e-5)


def reference_rows() -> dict[str, list[float]]:
    """A few jets-run3 columns of every matched jet of the v12 file, one jet at a time."""
    names = ["Jet_genJetIdx", "Jet_pt", "Jet_area", "Jet_btagPNetB", "Jet_btagRobustParTAK4QG"]
    names += ["Jet_PNetRegPtRawCorr", "Jet_nConstituents", "Jet_jetId", "Jet_muEF"]
    events = read_events(V12, [*names, "GenJet_pt"])
    ev = {n: ak.to_list(events[n]) for n in events.fields}
    out: dict[str, list[float]] = {
        c: [] for c in ("pt", "ratio", "area", "pnet", "qvg", "corr", "n", "id", "mu")
    }
    for e, jets in enumerate(ev["Jet_genJetIdx"]):
        for k, g in enumerate(jets):
            if not 0 <= g < len(ev["GenJet_pt"][e]):
                continue
            gen_pt = ev["GenJet_pt"][e][g]
            qg = ev["Jet_btagRobustParTAK4QG"][e][k]
            out["pt"].append(gen_pt)
            out["ratio"].append(min(ev["Jet_pt"][e][k] / gen_pt, 3.0))
            out["area"].append(ev["Jet_area"][e][k])
            out["pnet"].append(score(ev["Jet_btagPNetB"][e][k]))
            out["qvg"].append(score(1.0 - qg if qg >= 0 else qg))  # uds-vs-g from g-vs-uds
            out["corr"].append(ev["Jet_PNetRegPtRawCorr"][e][k])
            out["n"].append(ev["Jet_nConstituents"][e][k])
            out["id"].append(ev["Jet_jetId"][e][k])
            out["mu"].append(ev["Jet_muEF"][e][k])
    return out


def test_v12_rows_match_a_per_jet_reference(tmp_path):
    summary = prep(
        [V12], tmp_path, objects=["jets-run3"], formats=("zarr", "hdf5"), val_rows=0,
        strict=True, progress=False,
    )  # fmt: skip
    assert summary.substitutions == []  # v12 holds every branch: nothing for --strict to refuse
    store = store_path(tmp_path, "jets-run3", "zarr")
    got, ref = physical_rows(store), reference_rows()
    assert got.shape == (len(ref["pt"]), 42) and len(got) > 1300
    col = {c: got[:, JETS_RUN3.index(c)] for c in JETS_RUN3.columns}
    exact = {"MGenJet_pt": "pt", "MJet_area": "area", "MJet_PNetRegPtRawCorr": "corr"}
    exact |= {"MJet_nConstituents": "n", "MJet_jetId": "id", "MJet_muEF": "mu"}
    for column, key in exact.items():
        np.testing.assert_array_equal(col[column], np.float32(ref[key]), err_msg=column)
    np.testing.assert_allclose(col["MJet_ptRatio"], ref["ratio"], rtol=1e-6)
    np.testing.assert_allclose(col["MJet_btagPNetB"], ref["pnet"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(col["MJet_btagParTAK4QvG"], ref["qvg"], rtol=1e-5, atol=1e-7)
    # the failed scores and the unevaluated regression come back exactly
    assert np.sum(col["MJet_btagPNetB"] == -1.0) == sum(v == -1.0 for v in ref["pnet"]) > 100
    assert set(np.unique(col["MJet_jetId"])) == {0, 2, 4, 6}
    meta = read_metadata(store)
    assert [g["reads"] for g in meta["generation_branches"]] == [
        [f"Jet_btagRobustParTAK4{s}"] for s in (*PART, "QG")
    ]
    # a jets-run3 HDF5 store prepared again: the same rows, its record kept
    prep([tmp_path / "jets-run3.h5"], tmp_path / "again", val_rows=0, progress=False)
    again = store_path(tmp_path / "again", "jets-run3", "zarr")
    np.testing.assert_array_equal(rows_of(again, "train"), rows_of(store, "train"))
    kept = read_metadata(again)["generation_branches"]
    assert [g["reads"] for g in kept] == [g["reads"] for g in meta["generation_branches"]]


def write_v15(tmp_path: Path) -> Path:
    """The v12 file as v15 names it: UParT for RobustParT (its QvG is uds vs g: 1 - the
    g-vs-uds score), no Jet_jetId, charged and neutral multiplicities."""
    have = inspect_nanoaod(V12).branches
    robust = [f"Jet_btagRobustParTAK4{s}" for s in (*PART, "QG")]
    events = read_events(V12, sorted(set(required_branches("jets-run3")) & have | set(robust)))
    fields = {f: events[f] for f in events.fields if f != "Jet_jetId"}
    for s in PART:
        fields[f"Jet_btagUParTAK4{s}"] = fields.pop(f"Jet_btagRobustParTAK4{s}")
    qg = ak.values_astype(fields.pop("Jet_btagRobustParTAK4QG"), np.float64)
    fields["Jet_btagUParTAK4QvG"] = ak.where(qg >= 0, 1.0 - qg, qg)
    n = events["Jet_nConstituents"]
    neutral = ak.values_astype(n * (events["Jet_neHEF"] + events["Jet_neEmEF"]) // 1, np.uint8)
    fields["Jet_neMultiplicity"] = neutral
    fields["Jet_chMultiplicity"] = ak.values_astype(n - neutral, np.uint8)
    return write_events(tmp_path / "nano_v15.root", fields)


def test_v15_upart_names_and_derived_jet_id(tmp_path):
    v15 = write_v15(tmp_path)
    prep([V12], tmp_path / "v12", objects=["jets-run3"], val_rows=0, progress=False)
    summary = prep([v15], tmp_path / "v15", objects=["jets-run3"], val_rows=0, progress=False)
    assert [s["branch"] for s in summary.substitutions] == ["Jet_jetId"]
    meta = read_metadata(store_path(tmp_path / "v15", "jets-run3", "zarr"))
    assert meta["inputs"][0]["nanoaod_profile"] == "run3-v15"
    assert [g["reads"] for g in meta["generation_branches"]] == [
        [f"Jet_btagUParTAK4{s}"] for s in (*PART, "QvG")
    ]
    # the same jets, the same noise: every row equal but the recomputed jet ID
    a = rows_of(store_path(tmp_path / "v12", "jets-run3", "zarr"), "train")
    b = rows_of(store_path(tmp_path / "v15", "jets-run3", "zarr"), "train")
    jet_id = JETS_RUN3.index("MJet_jetId")
    others = [j for j in range(JETS_RUN3.n_columns) if j != jet_id]
    np.testing.assert_array_equal(a[:, others], b[:, others])
    assert set(np.unique(np.round(b[:, jet_id]))) == {0, 2, 6}  # the recipe has no 4
    # generate writes a v15 model's ParT columns under UParT's names, as they came
    assert written_branches(JETS_RUN3, meta)["MJet_btagParTAK4QvG"] == ("btagUParTAK4QvG", None)
    with pytest.raises(FlashSimError, match="Jet_jetId") as err:
        prep([v15], tmp_path / "strict", objects=["jets-run3"], strict=True, progress=False)
    assert "ParTAK4" not in str(err.value)  # the generation's own names are no substitutes
    with pytest.raises(FlashSimError, match="different NanoAOD generations"):
        prep([V12, v15], tmp_path / "mixed", objects=["jets-run3"], progress=False)


def test_run2_input_is_refused_with_the_reason(tmp_path, shared_data):
    with pytest.raises(FlashSimError, match="jets-run3 layout reads run3-v12 and run3-v15"):
        prep([shared_data / "nano_dy.root"], tmp_path, objects=["jets-run3"], progress=False)


def test_default_layouts_hint_at_jets_run3(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flashsim.prep"):
        prep([V12], tmp_path / "a", objects=["jets"], progress=False)
        assert not any("--layout jets-run3" in r.getMessage() for r in caplog.records)
        prep([V12], tmp_path / "b", progress=False)
    hints = [r.getMessage() for r in caplog.records if "--layout jets-run3" in r.getMessage()]
    assert len(hints) == 1 and "run3-v12" in hints[0]
    assert "generation_branches" not in read_metadata(store_path(tmp_path / "b", "jets", "zarr"))


def test_end_to_end_prep_train_validate_generate(tmp_path):
    from click.testing import CliRunner

    import loaders
    from flashsim.cli import main
    from flashsim.generate import generate, reco_jets
    from flashsim.sampling import TrainedFlow
    from flashsim.train import TrainConfig, train
    from flashsim.validate import validate
    from pipelines.store_info import describe_store

    shards = tmp_path / "shards"
    done = CliRunner().invoke(
        main, ["prep", str(V12), "--out", str(shards), "--layout", "jets-run3"]
    )
    assert done.exit_code == 0, done.output
    assert "--layout jets-run3 keeps" not in done.output  # the user chose the layout
    assert (shards / "jets-run3.zarr").is_dir() and not (shards / "jets.zarr").exists()
    assert "Jet_btagParTAK4QvG: 1 - Jet_btagRobustParTAK4QG" in describe_store(
        shards / "jets-run3.zarr", stats=False
    )
    x, y = next(iter(loaders.open(shards, object="jets-run3", kind="chunked", batch_size=64)))
    assert tuple(x.shape) == (64, 28) and tuple(y.shape) == (64, 14)

    run = tmp_path / "runs" / "jets-run3"
    result = train(
        TrainConfig(
            "jets-run3", data=shards, out=run, epochs=1, batch_size=256, max_steps_per_epoch=3,
            flow=dict(GEN_FLOW), progress=False, tensorboard=False, threads=1, monitor_every=0,
        )
    )  # fmt: skip
    assert result.epochs_done == 1

    report = validate(run, shards, out=tmp_path / "val", samples=8, pit_rows=64, progress=False)
    checks = json.loads(report.json_path.read_text())["conditioning"]
    assert checks["settings"]["class_column"] == "MGenJet_hadronFlavour"
    rocs = {(r["column"], r["signal"], r["background"]) for r in checks["roc"]}
    assert ("MJet_btagParTAK4B", "b", "light") in rocs and ("MJet_btagPNetB", "b", "light") in rocs

    out = tmp_path / "flash.root"
    generate([V12], out, jets=run, device="cpu", progress=False)
    real, flash = uproot.open(V12)["Events"], uproot.open(out)["Events"]
    written = [k for k in flash.keys() if k.startswith("Jet_")]  # noqa: SIM118 (a TTree)
    assert {"Jet_btagRobustParTAK4B", "Jet_btagRobustParTAK4QG", "Jet_PNetRegPtRawRes"} <= set(
        written
    )
    assert "Jet_btagParTAK4B" not in written  # the generation's name instead
    for branch in written:  # every Jet_* branch with its type in the real v12 file
        assert flash[branch].typename == real[branch].typename, branch
    qg = ak.flatten(flash["Jet_btagRobustParTAK4QG"].array())
    assert ak.all((qg == -1) | ((qg >= 0) & (qg <= 1)))
    # the uds-vs-g column goes back to RobustParT's g-vs-uds: 1 - x, a failed -1 kept
    model = TrainedFlow.load(run)
    targets = np.ones((3, JETS_RUN3.n_targets), np.float32)
    targets[:, JETS_RUN3.index("MJet_btagParTAK4QvG") - 14] = [0.25, 0.9, -1.0]
    fields = reco_jets(model, np.ones((3, 14), np.float32), targets)
    np.testing.assert_allclose(fields["btagRobustParTAK4QG"], [0.75, 0.1, -1.0], rtol=1e-6)
    assert set(np.unique(ak.to_numpy(ak.flatten(flash["Jet_jetId"].array())))) <= {0, 2, 4, 6}


def test_run3_preprocessing_round_trip():
    from flashsim.transforms import JET_RUN3_PREPROCESSING as pre
    from flashsim.transforms import Logit

    rng = np.random.default_rng(0)
    rows = rng.uniform(0.05, 0.95, (1000, 42)).astype(np.float32)
    score, frac = JETS_RUN3.index("MJet_btagPNetB"), JETS_RUN3.index("MJet_muEF")
    count, reg = JETS_RUN3.index("MJet_nConstituents"), JETS_RUN3.index("MJet_PNetRegPtRawRes")
    rows[:100, score] = -10.0  # failed: any negative default
    rows[:300, frac] = 0.0  # no muon in the jet
    rows[:, count] = rng.integers(1, 60, 1000)
    rows[:, JETS_RUN3.index("MJet_jetId")] = rng.choice([0, 2, 6], 1000)
    rows[:50, reg] = 0.0  # regression not evaluated
    forward = pre.forward(rows, np.random.default_rng(1))
    assert len(np.unique(forward[:100, score])) == 100  # the failed spike is spread out
    back = pre.inverse(forward)
    expected = rows.copy()
    expected[:100, score] = -1.0  # NanoAOD's "not available"
    np.testing.assert_allclose(back, expected, rtol=2e-5, atol=1e-6)
    assert Preprocessing.from_dict("jets-run3", pre.to_dict()) == pre
    # a flow's samples far outside the training range stay valid scores
    logit = Logit()
    np.testing.assert_array_equal(logit.inverse(np.array([-1e4, -14.0, 1e4])), [-1.0, -1.0, 1.0])


def test_original_loader_of_another_layout_is_refused_with_the_right_suggestion():
    from flashsim.errors import FlashSimError
    from flashsim.train.setup import check_loader_kind

    check_loader_kind("jets", "original-jets")
    with pytest.raises(FlashSimError, match="trains jets-run3; use --loader chunked"):
        check_loader_kind("jets-run3", "original-jets")
    with pytest.raises(FlashSimError, match="trains muons; use --loader original-muons"):
        check_loader_kind("muons", "original-jets")
