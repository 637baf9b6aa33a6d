"""End-to-end `flashsim prep` on the real sample files: stores, metadata, determinism,
parallel runs (processes and a real Dask LocalCluster), failures and substitutions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import JETS, MUONS
from flashsim.store import SPLITS, read_metadata, store_path
from flashsim.transforms import Dequantize, SmearSpike
from pipelines import writers
from pipelines.prep import prep, preprocessing_for
from pipelines.store_info import column_stats, describe_store
from pipelines.tasks import drop_non_finite, step_rng

from conftest import DY, TTBAR, raw_feature_rows, read_events, rows_of, write_events

SAMPLES = [str(TTBAR), str(DY)]
PAST_END = {"jets": 11 + 2, "muons": 0}
"""Reco objects whose gen index points past the gen collection: matched, then dropped."""
MATCHED = {"jets": 362 + 95 + PAST_END["jets"], "muons": 38 + 16}


def random_columns(layout, obj, sum_eoot="log1p", constants=()):
    pre = preprocessing_for(obj, sum_eoot, constants)
    return {layout.index(c) for c, step in pre.steps if isinstance(step, (Dequantize, SmearSpike))}


@pytest.fixture(scope="module")
def all_formats(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("all") / "shards"
    summary = prep(SAMPLES, out, formats=("zarr", "webdataset", "hdf5"), progress=False)
    return out, summary


@pytest.mark.usefixtures("shared_data")
def test_row_counts_and_summary(all_formats):
    out, summary = all_formats
    for obj in ("jets", "muons"):
        s = summary.objects[obj]
        assert s.matched == MATCHED[obj]
        meta = read_metadata(store_path(out, obj, "zarr"))
        assert meta["matched"] == MATCHED[obj]
        assert meta["rows"]["train"] + meta["rows"]["val"] == MATCHED[obj] - meta["dropped"]["rows"]
        assert meta["rows"] == s.rows
        assert meta["rows"]["val"] == round(0.1 * (MATCHED[obj] - meta["dropped"]["rows"]))
    text = str(summary)
    assert "jets: 470 matched" in text and "muons: 54 matched" in text
    assert "Jet_btagCMVA" in text and str(store_path(out, "jets", "webdataset")) in text


@pytest.mark.usefixtures("shared_data")
def test_three_formats_hold_identical_rows(all_formats):
    out, _ = all_formats
    for obj, layout in (("jets", JETS), ("muons", MUONS)):
        for split in SPLITS:
            ref = rows_of(store_path(out, obj, "zarr"), split)
            assert ref.dtype == np.float32 and ref.shape[1] == layout.n_columns
            for fmt in ("webdataset", "hdf5"):
                np.testing.assert_array_equal(rows_of(store_path(out, obj, fmt), split), ref)
    with h5py.File(store_path(out, "jets", "hdf5"), "r") as f:  # the original FlashSim format
        assert f["data"].shape == (
            read_metadata(store_path(out, "jets", "hdf5"))["rows"]["train"],
            31,
        )


@pytest.mark.usefixtures("shared_data")
def test_metadata_is_complete(all_formats):
    out, _ = all_formats
    for obj, layout in (("jets", JETS), ("muons", MUONS)):
        for fmt in ("zarr", "webdataset", "hdf5"):
            meta = read_metadata(store_path(out, obj, fmt))
            assert meta["object"] == obj and meta["format"] == fmt
            assert meta["layout"] == layout.to_dict()
            assert (
                meta["preprocessing"]
                == preprocessing_for(obj, "log1p", {"MJet_btagCMVA"}).to_dict()
            )
            assert meta["seed"] == 0 and meta["source_format"] == "nanoaod"
            assert meta["options"]["gen_muons"] == "final-state"
            assert meta["options"]["sum_eoot"] == "log1p"
            assert "val_rule" in meta["options"] and meta["tool_version"] and meta["created"]
            assert [i["events"] for i in meta["inputs"]] == [200, 40]
            for entry, path in zip(meta["inputs"], SAMPLES, strict=True):
                assert entry["path"] == path
                assert entry["size_bytes"] == Path(path).stat().st_size
                assert entry["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
            assert meta["dropped"]["rows"] == PAST_END[obj]
            if PAST_END[obj]:
                past_end = {"rows": 13, "by_column": {"Jet_genJetIdx": 13}}
                assert meta["dropped"]["gen_index_past_end"] == past_end
        subs = {
            s["branch"]: s for s in read_metadata(store_path(out, obj, "zarr"))["substitutions"]
        }
        if obj == "jets":
            assert set(subs) == {"Jet_btagCMVA", "Jet_btagDeepC", "Jet_btagDeepFlavC"}
            assert subs["Jet_btagDeepC"]["files"] == [str(TTBAR)]
        else:
            assert subs == {}


@pytest.mark.usefixtures("shared_data")
def test_preprocessing_applied_as_declared(tmp_path):
    out = tmp_path / "s"
    prep([TTBAR], out, val_rows=0, progress=False)
    for obj in ("jets", "muons"):
        layout = JETS if obj == "jets" else MUONS
        raw, _ = drop_non_finite(raw_feature_rows(TTBAR, obj), layout)
        pre = preprocessing_for(obj, "log1p", {"MJet_btagCMVA"})
        expected, _ = drop_non_finite(pre.forward(raw, step_rng(0, 0, 0, obj)), layout)
        np.testing.assert_array_equal(rows_of(store_path(out, obj, "zarr"), "train"), expected)
    jets = rows_of(store_path(out, "jets", "zarr"))
    assert jets[:, JETS.index("MJet_ptRatio")].max() <= 3.0
    assert jets[:, JETS.index("MJet_btagDeepB")].min() >= -0.1
    muons = rows_of(store_path(out, "muons", "zarr"))
    raw = raw_feature_rows(TTBAR, "muons")
    np.testing.assert_allclose(
        muons[:, MUONS.index("MGenMuon_pt")], np.log(raw[:, MUONS.index("MGenMuon_pt")]), rtol=1e-6
    )


@pytest.mark.usefixtures("shared_data")
def test_same_seed_same_bytes_other_seed_other_noise(tmp_path, all_formats):
    ref_out, _ = all_formats
    again = prep(SAMPLES, tmp_path / "again", progress=False)
    for obj in ("jets", "muons"):
        for split in SPLITS:
            a = rows_of(store_path(ref_out, obj, "zarr"), split)
            b = rows_of(store_path(tmp_path / "again", obj, "zarr"), split)
            assert a.tobytes() == b.tobytes()
    assert again.objects["jets"].rows == {"train": 411, "val": 46}
    # split fixed (no validation rows): only the random columns may differ
    s0 = tmp_path / "seed0"
    s1 = tmp_path / "seed1"
    prep(SAMPLES, s0, val_rows=0, seed=0, progress=False)
    prep(SAMPLES, s1, val_rows=0, seed=1, progress=False)
    for obj, layout in (("jets", JETS), ("muons", MUONS)):
        a = rows_of(store_path(s0, obj, "zarr"))
        b = rows_of(store_path(s1, obj, "zarr"))
        noisy = random_columns(layout, obj, constants={"MJet_btagCMVA"})
        fixed = [j for j in range(layout.n_columns) if j not in noisy]
        np.testing.assert_array_equal(a[:, fixed], b[:, fixed])
        dequantized = [
            layout.index(c) for c in ("MJet_jetId", "MMuon_isGlobal") if c in layout.columns
        ]
        assert np.all(a[:, dequantized] != b[:, dequantized])
        assert np.array_equal(np.round(a[:, dequantized]), np.round(b[:, dequantized]))


@pytest.mark.multiprocess
@pytest.mark.usefixtures("shared_data")
def test_workers_and_dask_give_identical_rows(tmp_path):
    from distributed import LocalCluster

    kw = {"progress": False, "step_events": 30, "formats": ("zarr",)}  # several tasks per file
    serial = prep(SAMPLES, tmp_path / "w1", workers=1, **kw)
    pooled = prep(SAMPLES, tmp_path / "w2", workers=2, **kw)
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        prep(SAMPLES, tmp_path / "dask", dask_scheduler=cluster.scheduler_address, **kw)
    assert serial.objects["jets"].rows == pooled.objects["jets"].rows
    for obj in ("jets", "muons"):
        ref = rows_of(store_path(tmp_path / "w1", obj, "zarr"))
        assert len(ref) == MATCHED[obj] - PAST_END[obj]
        for other in ("w2", "dask"):
            assert rows_of(store_path(tmp_path / other, obj, "zarr")).tobytes() == ref.tobytes()
        assert (
            read_metadata(store_path(tmp_path / "dask", obj, "zarr"))["inputs"]
            == read_metadata(store_path(tmp_path / "w1", obj, "zarr"))["inputs"]
        )


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.mark.usefixtures("shared_data")
def test_failure_midway_leaves_nothing_and_keeps_existing_store(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    calls = {"n": 0}
    original = writers.ZarrWriter._write_chunk

    def fail_after_first_chunk(self, split, rows):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("disk full (injected)")
        original(self, split, rows)

    monkeypatch.setattr(writers.ZarrWriter, "_write_chunk", fail_after_first_chunk)
    with pytest.raises(RuntimeError, match="injected"):
        prep(SAMPLES, out, chunk_rows=64, formats=("zarr", "hdf5"), progress=False)
    assert calls["n"] == 2
    assert not store_path(out, "jets", "zarr").exists()
    assert not store_path(out, "jets", "hdf5").exists()
    assert not out.exists() or _leftovers(out) == []

    monkeypatch.setattr(writers.ZarrWriter, "_write_chunk", original)
    prep([DY], out, progress=False)
    before = {o: rows_of(store_path(out, o, "zarr")) for o in ("jets", "muons")}
    meta_before = read_metadata(store_path(out, "jets", "zarr"))
    calls["n"] = 0
    monkeypatch.setattr(writers.ZarrWriter, "_write_chunk", fail_after_first_chunk)
    with pytest.raises(RuntimeError, match="injected"):
        prep(SAMPLES, out, chunk_rows=64, overwrite=True, progress=False)
    assert read_metadata(store_path(out, "jets", "zarr")) == meta_before
    for obj, rows in before.items():
        np.testing.assert_array_equal(rows_of(store_path(out, obj, "zarr")), rows)
    assert _leftovers(out) == []


@pytest.mark.usefixtures("shared_data")
def test_existing_store_is_refused_before_any_work(tmp_path):
    out = tmp_path / "shards"
    prep([DY], out, objects=["jets"], progress=False)
    stamp = read_metadata(store_path(out, "jets", "zarr"))["created"]
    with pytest.raises(StoreError, match=r"jets\.zarr.*--overwrite"):
        prep(SAMPLES, out, progress=False)
    assert not store_path(out, "muons", "zarr").exists()  # checked up-front: nothing written
    assert read_metadata(store_path(out, "jets", "zarr"))["created"] == stamp
    summary = prep(SAMPLES, out, overwrite=True, progress=False)
    assert read_metadata(store_path(out, "jets", "zarr"))["matched"] == MATCHED["jets"]
    assert summary.objects["muons"].matched == MATCHED["muons"]
    assert _leftovers(out) == []


@pytest.mark.usefixtures("shared_data")
def test_val_rules(tmp_path):
    a = prep([DY], tmp_path / "a", val_fraction=0.5, progress=False)
    assert a.objects["jets"].rows == {"train": 47, "val": 48}
    b = prep([DY], tmp_path / "b", val_rows=10, progress=False)
    assert b.objects["jets"].rows == {"train": 85, "val": 10}
    assert read_metadata(store_path(tmp_path / "b", "jets", "zarr"))["options"]["val_rows"] == 10
    # the split keeps input order: train and val interleave back into the unsplit rows
    c = prep([DY], tmp_path / "c", val_rows=0, progress=False)
    assert c.objects["muons"].rows == {"train": 16, "val": 0}
    full = rows_of(store_path(tmp_path / "c", "jets", "zarr"))
    train = rows_of(store_path(tmp_path / "b", "jets", "zarr"), "train")
    fixed = [j for j in range(31) if j not in random_columns(JETS, "jets")]
    positions = [np.flatnonzero((full[:, fixed] == r[fixed]).all(axis=1))[0] for r in train]
    assert positions == sorted(positions)
    with pytest.raises(FlashSimError, match="not both"):
        prep([DY], tmp_path / "d", val_rows=1, val_fraction=0.1, progress=False)


def _copy_dy(tmp_path: Path, name: str, drop=(), change=None, rntuple=False) -> Path:
    from pipelines.branches import required_branches

    needed = sorted(set(required_branches("jets")) | set(required_branches("muons")))
    events = read_events(DY, needed)
    fields = {f: events[f] for f in events.fields if f not in drop}
    fields.update(change or {})
    return write_events(tmp_path / name, fields, rntuple=rntuple)


@pytest.mark.usefixtures("shared_data")
def test_sum_eoot_log_drops_are_counted(tmp_path):
    events = read_events(DY, ["Pileup_sumEOOT", "Muon_genPartIdx"])
    zero = np.arange(len(events)) % 2 == 0
    sum_eoot = np.where(zero, 0, np.asarray(events["Pileup_sumEOOT"])).astype(np.int32)
    path = _copy_dy(tmp_path, "zero_eoot.root", change={"Pileup_sumEOOT": sum_eoot})
    import awkward as ak

    muons_in_zero = int(
        ak.sum(ak.num(events["Muon_genPartIdx"][events["Muon_genPartIdx"] >= 0])[zero])
    )
    assert muons_in_zero > 0
    kept = prep([path], tmp_path / "log1p", objects=["muons"], progress=False)
    assert kept.objects["muons"].dropped_rows == 0 and kept.objects["muons"].matched == 16
    orig = prep([path], tmp_path / "log", objects=["muons"], sum_eoot="log", progress=False)
    dropped = orig.objects["muons"].dropped["non_finite_after_preprocessing"]
    assert dropped.rows == muons_in_zero
    assert dropped.by_column == {"Pileup_sumEOOT": muons_in_zero}
    meta = read_metadata(store_path(tmp_path / "log", "muons", "zarr"))
    assert meta["dropped"]["non_finite_after_preprocessing"]["by_column"] == {
        "Pileup_sumEOOT": muons_in_zero
    }
    assert meta["rows"]["train"] + meta["rows"]["val"] == 16 - muons_in_zero
    assert meta["options"]["sum_eoot"] == "log"
    assert "dropped" in str(orig) and "Pileup_sumEOOT" in str(orig)


NEWER_NANO_MISSING = (
    "Jet_btagCSVV2",
    "Jet_btagDeepB",
    "Jet_puId",
    "Jet_qgl",
    "Jet_bRegCorr",
    "Jet_jetId",
)


@pytest.mark.usefixtures("shared_data")
def test_newer_nanoaod_needs_a_branch_map(tmp_path):
    events = read_events(DY, ["Jet_btagDeepFlavB", "Jet_btagDeepFlavC"])
    flav_b, flav_c = events["Jet_btagDeepFlavB"], events["Jet_btagDeepFlavC"]
    flav_cvb = flav_c / (flav_c + flav_b)  # what newer NanoAODs store instead of DeepFlavC
    path = _copy_dy(
        tmp_path,
        "newer.root",
        drop=(*NEWER_NANO_MISSING, "Jet_btagDeepC"),
        change={"Jet_btagDeepFlavCvB": flav_cvb},
    )
    with pytest.raises(FlashSimError) as err:
        prep([path], tmp_path / "fail", objects=["jets"], progress=False)
    message = str(err.value)
    for branch in NEWER_NANO_MISSING:
        assert branch in message
    assert "Jet_btagDeepC (or Jet_btagDeepB and Jet_btagDeepCvB to derive it)" in message
    assert "--branch" in message and "--branch-map" in message and str(path) in message
    assert not (tmp_path / "fail").exists()

    mapping = {
        "Jet_btagCSVV2": "Jet_btagDeepFlavB",
        "MJet_btagDeepB": "Jet_btagDeepFlavB",  # a layout column name works too
        "Jet_btagDeepCvB": "Jet_btagDeepFlavCvB",  # the input of the DeepC substitute
        "Jet_puId": 0,
        "Jet_qgl": -1,
        "Jet_bRegCorr": 1.0,
        "Jet_jetId": 6,
    }
    summary = prep([path], tmp_path / "ok", objects=["jets"], branch_map=mapping, progress=False)
    assert summary.objects["jets"].matched == 95 + 2  # 2 jets with a gen index past the end
    meta = read_metadata(store_path(tmp_path / "ok", "jets", "zarr"))
    subs = {s["branch"]: s for s in meta["substitutions"]}
    assert set(subs) == {*NEWER_NANO_MISSING, "Jet_btagDeepC"}
    assert subs["Jet_qgl"]["constant"] == -1.0 and subs["Jet_qgl"]["origin"] == "user"
    assert subs["Jet_btagCSVV2"]["reads"] == ["Jet_btagDeepFlavB"]
    assert subs["Jet_btagDeepC"]["reads"] == ["Jet_btagDeepFlavB", "Jet_btagDeepFlavCvB"]
    rows = rows_of(store_path(tmp_path / "ok", "jets", "zarr"))
    col = {c: rows[:, JETS.index(c)] for c in JETS.columns}
    # -1 is "failed" -> -0.1, and a constant failed score is smeared there (N(-0.1, 0.01))
    assert np.all(np.abs(col["MJet_qgl"] + 0.1) < 0.05) and np.std(col["MJet_qgl"]) > 0.005
    qgl_step = next(
        e for e in meta["preprocessing"] if e["column"] == "MJet_qgl" and e["kind"] == "smear_spike"
    )
    assert qgl_step["fill"] == -0.1 and qgl_step["threshold"] == -0.05
    # an integral constant target without a transform of its own is dequantized
    assert np.all(np.round(col["MJet_bRegCorr"]) == 1.0) and np.std(col["MJet_bRegCorr"]) > 0.05
    steps = [(e["column"], e["kind"]) for e in meta["preprocessing"]]
    assert ("MJet_bRegCorr", "dequantize") in steps and ("MJet_qgl", "dequantize") not in steps
    np.testing.assert_array_equal(
        col["MJet_btagCSVV2"], np.maximum(col["MJet_btagDeepFlavB"], -0.1)
    )
    # DeepC derived from B and CvB gives back the C score
    np.testing.assert_allclose(
        col["MJet_btagDeepC"], col["MJet_btagDeepFlavC"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.usefixtures("shared_data")
def test_strict_refuses_builtin_substitutes(tmp_path):
    with pytest.raises(FlashSimError) as err:
        prep([TTBAR], tmp_path / "s", strict=True, progress=False)
    for branch in ("Jet_btagCMVA", "Jet_btagDeepC", "Jet_btagDeepFlavC"):
        assert branch in str(err.value)
    assert "--strict" in str(err.value)
    # muons need none of them (one path and one object may be given as plain strings)
    muons = prep(str(TTBAR), tmp_path / "m", objects="muons", strict=True, progress=False)
    assert list(muons.objects) == ["muons"] and muons.objects["muons"].matched == 38
    assert muons.substitutions == []


@pytest.mark.usefixtures("shared_data")
def test_gen_muons_all_is_recorded(tmp_path):
    prep([TTBAR], tmp_path / "all", objects=["jets"], gen_muons="all", val_rows=0, progress=False)
    meta = read_metadata(store_path(tmp_path / "all", "jets", "zarr"))
    assert meta["options"]["gen_muons"] == "all"
    rows = rows_of(store_path(tmp_path / "all", "jets", "zarr"))
    np.testing.assert_array_equal(
        rows[:, : JETS.n_conditioning],
        raw_feature_rows(TTBAR, "jets", gen_muons="all")[:, : JETS.n_conditioning],
    )


@pytest.mark.usefixtures("shared_data")
def test_rntuple_input_gives_the_same_rows(tmp_path):
    ttree = _copy_dy(tmp_path, "tree.root")
    rntuple = _copy_dy(tmp_path, "ntuple.root", rntuple=True)
    prep([ttree], tmp_path / "t", progress=False)
    prep([rntuple], tmp_path / "r", progress=False)
    for obj in ("jets", "muons"):
        a = rows_of(store_path(tmp_path / "t", obj, "zarr"))
        assert a.tobytes() == rows_of(store_path(tmp_path / "r", obj, "zarr")).tobytes()
    meta = read_metadata(store_path(tmp_path / "r", "jets", "zarr"))
    assert meta["inputs"][0]["storage"] == "RNTuple"


@pytest.mark.usefixtures("shared_data")
def test_hdf5_inputs_are_rechunked_not_reprocessed(tmp_path, all_formats):
    out, _ = all_formats
    h5 = store_path(out, "muons", "hdf5")
    summary = prep([h5], tmp_path / "again", val_rows=0, chunk_rows=7, progress=False)
    assert list(summary.objects) == ["muons"]
    again = rows_of(store_path(tmp_path / "again", "muons", "zarr"))
    np.testing.assert_array_equal(again, np.concatenate([rows_of(h5, "train"), rows_of(h5, "val")]))
    meta = read_metadata(store_path(tmp_path / "again", "muons", "zarr"))
    assert meta["source_format"] == "hdf5" and meta["chunk_rows"] == 7
    assert meta["preprocessing"] == read_metadata(h5)["preprocessing"]

    # an original FlashSim file: a bare `data` dataset, no metadata
    original = tmp_path / "original_jets.h5"
    rows = np.random.default_rng(0).normal(size=(50, 31)).astype(np.float32)
    rows[3, 5] = np.nan
    with h5py.File(original, "w") as f:
        f["data"] = rows
    summary = prep([original], tmp_path / "orig", val_rows=5, progress=False)
    assert summary.objects["jets"].dropped["non_finite_input"].by_column == {JETS.columns[5]: 1}
    got = rows_of(store_path(tmp_path / "orig", "jets", "zarr"))
    kept = np.delete(rows, 3, axis=0)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], kept[np.lexsort(kept.T)])
    meta = read_metadata(store_path(tmp_path / "orig", "jets", "zarr"))
    assert meta["preprocessing_origin"].startswith("assumed")


@pytest.mark.usefixtures("shared_data")
def test_info_describes_store_with_chunkwise_stats(all_formats):
    out, _ = all_formats
    for fmt in ("zarr", "webdataset", "hdf5"):
        path = store_path(out, "jets", fmt)
        stats = column_stats(path)
        rows = rows_of(path)
        assert stats.rows == len(rows)
        np.testing.assert_allclose(stats.min, rows.min(axis=0))
        np.testing.assert_allclose(stats.max, rows.max(axis=0))
        np.testing.assert_allclose(stats.mean, rows.astype(np.float64).mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats.std, rows.astype(np.float64).std(axis=0), rtol=1e-9)
        text = describe_store(path)
        assert "jets store" in text and "MJet_ptRatio" in text and "clip(x, 0.0, 3.0)" in text
        assert "Jet_btagCMVA" in text


@pytest.mark.usefixtures("shared_data")
def test_cli_prep_and_info(tmp_path, all_formats):
    from click.testing import CliRunner

    from flashsim.cli import main

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        main,
        [
            "prep",
            str(DY),
            "--out",
            str(out),
            "--format",
            "zarr,hdf5",
            "--seed",
            "3",
            "--quiet",
            "--branch",
            "Jet_qgl=-1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert store_path(out, "jets", "hdf5").exists() and store_path(out, "muons", "zarr").exists()
    assert read_metadata(store_path(out, "jets", "zarr"))["seed"] == 3
    result = runner.invoke(main, ["prep", str(DY), "--out", str(out)])
    assert result.exit_code == 2 and "already exist" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["info", str(store_path(out, "jets", "zarr"))])
    assert result.exit_code == 0 and "MJet_qgl" in result.output
    result = runner.invoke(main, ["info", "--json", str(store_path(out, "jets", "hdf5"))])
    assert json.loads(result.output)["object"] == "jets"
    # HDF5 input: the objects the file holds (here only muons)
    h5 = store_path(all_formats[0], "muons", "hdf5")
    result = runner.invoke(main, ["prep", str(h5), "--out", str(tmp_path / "h5"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert store_path(tmp_path / "h5", "muons", "zarr").exists()
    assert not store_path(tmp_path / "h5", "jets", "zarr").exists()
    result = runner.invoke(main, ["prep", "--help"])
    assert "Examples" in result.output and "--dask-scheduler" in result.output
