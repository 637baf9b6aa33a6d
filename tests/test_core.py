"""The core contract: layouts, preprocessing transforms, store format and writers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr

from flashsim.errors import StoreError
from flashsim.layouts import JETS, MUONS, layout_for, layout_for_width
from flashsim.outputs import atomic_output
from flashsim.store import find_store, read_metadata, store_layout, store_path
from flashsim.transforms import (
    JET_PREPROCESSING,
    MUON_PREPROCESSING,
    Preprocessing,
    muon_preprocessing,
)
from pipelines.writers import default_chunk_rows, open_writer, write_store


def test_layouts_match_columns_md():
    assert (JETS.n_columns, JETS.n_conditioning, JETS.n_targets) == (31, 14, 17)
    assert (MUONS.n_columns, MUONS.n_conditioning, MUONS.n_targets) == (52, 30, 22)
    assert JETS.columns[0] == "MClosestMuon_dr" and JETS.columns[13] == "MGenJet_hadronFlavour"
    assert JETS.columns[14] == "MJet_area" and JETS.columns[30] == "MJet_jetId"
    assert (
        MUONS.columns[4] == "MGenPart_statusFlags0"
        and MUONS.columns[18] == "MGenPart_statusFlags14"
    )
    assert MUONS.columns[29] == "Pileup_sumLOOT" and MUONS.columns[30] == "MMuon_etaMinusGen"
    assert MUONS.columns[51] == "MMuon_softMvaId"
    assert len(set(JETS.columns)) == 31 and len(set(MUONS.columns)) == 52
    assert layout_for_width(31) is JETS and layout_for_width(52) is MUONS
    assert layout_for_width(7) is None
    with pytest.raises(Exception, match="Unknown object"):
        layout_for("electrons")


def _physical_muon_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows inside the ranges the preprocessing keeps invertible."""
    rows = np.zeros((n, 52), dtype=np.float32)
    rows[:, : MUONS.n_conditioning] = rng.uniform(0.5, 3.0, size=(n, 30))
    rows[:, MUONS.index("Pileup_sumEOOT")] = rng.integers(0, 50, n)
    rows[:, MUONS.targets] = rng.uniform(0.05, 0.5, size=(n, 22))
    for name in ("isGlobal", "isPFcand", "isTracker", "mediumId", "softId", "softMvaId"):
        rows[:, MUONS.index(f"MMuon_{name}")] = rng.integers(0, 2, n)
    return rows


def test_muon_preprocessing_inverts_to_physical_values():
    rng = np.random.default_rng(1)
    rows = _physical_muon_rows(1000, rng)
    pre = MUON_PREPROCESSING.forward(rows, np.random.default_rng(0))
    assert np.isfinite(pre).all()
    back = MUON_PREPROCESSING.inverse(pre)
    np.testing.assert_allclose(back, rows, rtol=2e-4, atol=2e-4)
    # targets alone, as generation produces them
    back_t = MUON_PREPROCESSING.inverse(pre[:, MUONS.targets], MUONS.targets)
    np.testing.assert_allclose(back_t, rows[:, MUONS.targets], rtol=2e-4, atol=2e-4)
    # conditioning alone, as generation feeds it: the same values as the full rows
    cond = MUON_PREPROCESSING.forward(
        rows[:, MUONS.conditioning], np.random.default_rng(0), MUONS.conditioning
    )
    np.testing.assert_array_equal(cond, pre[:, MUONS.conditioning])


def test_transforms_match_spec_formulas():
    rng = np.random.default_rng(2)
    rows = _physical_muon_rows(50, rng)
    pre = MUON_PREPROCESSING.forward(rows, np.random.default_rng(0))
    col = MUONS.index
    np.testing.assert_allclose(
        pre[:, col("MMuon_ptRatio")], np.arctan(10 * (rows[:, col("MMuon_ptRatio")] - 1)), 1e-6
    )
    np.testing.assert_allclose(
        pre[:, col("MGenMuon_pt")], np.log(rows[:, col("MGenMuon_pt")]), 1e-6
    )
    np.testing.assert_allclose(
        pre[:, col("MMuon_jetRelIso")], np.log(rows[:, col("MMuon_jetRelIso")] + 0.08), 1e-6
    )
    # sumEOOT == 0 is kept (log1p) by default, -inf with the original log
    zero = np.zeros((1, 52), np.float32)
    zero[:, :] = _physical_muon_rows(1, rng)
    zero[0, col("Pileup_sumEOOT")] = 0
    assert np.isfinite(MUON_PREPROCESSING.forward(zero, np.random.default_rng(0))).all()
    original = muon_preprocessing(sum_eoot="log").forward(zero, np.random.default_rng(0))
    assert np.isneginf(original[0, col("Pileup_sumEOOT")])


def test_jet_preprocessing_masks_each_column_and_keeps_cmva():
    rows = np.zeros((3, 31), np.float32)
    col = JETS.index
    rows[:, col("MJet_btagCMVA")] = [-0.7, 0.2, -1.0]
    rows[:, col("MJet_btagDeepB")] = [-1.0, 0.5, 0.5]
    rows[:, col("MJet_btagDeepC")] = [0.3, -10.0, 0.3]
    rows[:, col("MJet_qgl")] = [0.4, 0.4, -1.0]
    rows[:, col("MJet_massRatio")] = [9.0, -1.0, 1.0]
    out = JET_PREPROCESSING.forward(rows, np.random.default_rng(0))
    np.testing.assert_allclose(out[:, col("MJet_btagCMVA")], [-0.7, 0.2, -1.0], 1e-6)
    np.testing.assert_allclose(out[:, col("MJet_btagDeepB")], [-0.1, 0.5, 0.5], 1e-6)
    np.testing.assert_allclose(out[:, col("MJet_btagDeepC")], [0.3, -0.1, 0.3], 1e-6)
    np.testing.assert_allclose(out[:, col("MJet_qgl")], [0.4, 0.4, -0.1], 1e-6)
    np.testing.assert_allclose(out[:, col("MJet_massRatio")], [7.0, 0.0, 1.0], 1e-6)


def test_dequantization_is_seeded():
    rows = np.zeros((100, 31), np.float32)
    a = JET_PREPROCESSING.forward(rows, np.random.default_rng(5))
    b = JET_PREPROCESSING.forward(rows, np.random.default_rng(5))
    c = JET_PREPROCESSING.forward(rows, np.random.default_rng(6))
    assert a.tobytes() == b.tobytes()
    j = JETS.index("MJet_jetId")
    assert not np.array_equal(a[:, j], c[:, j])
    assert abs(a[:, j].std() - 0.1) < 0.03
    np.testing.assert_array_equal(JET_PREPROCESSING.inverse(a)[:, j], 0.0)


@pytest.mark.parametrize("pre", [JET_PREPROCESSING, MUON_PREPROCESSING])
def test_preprocessing_serialises_and_rebuilds(pre):
    entries = json.loads(json.dumps(pre.to_dict()))
    assert all({"column", "index", "kind", "formula", "inverse"} <= set(e) for e in entries)
    rebuilt = Preprocessing.from_dict(pre.layout.object, entries)
    assert rebuilt == pre


def _rows(n: int, width: int) -> np.ndarray:
    rows = np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)
    rows[:, 0] = np.arange(n)
    return rows


@pytest.mark.parametrize("fmt", ["zarr", "webdataset", "hdf5"])
def test_writers_roundtrip_rows_and_metadata(tmp_path, fmt):
    train, val = _rows(1000, 31), _rows(70, 31)
    meta = {"object": "jets", "layout": JETS.to_dict()}
    path = write_store(
        store_path(tmp_path, "jets", fmt), fmt, {"train": train, "val": val}, meta, 128
    )
    got = read_metadata(path)
    assert got["object"] == "jets" and got["format"] == fmt
    assert got["rows"] == {"train": 1000, "val": 70} and got["chunk_rows"] == 128
    assert store_layout(got, "jets") is JETS
    if fmt == "zarr":
        g = zarr.open_group(path, mode="r")
        assert g["train"].chunks == (128, 31)
        np.testing.assert_array_equal(g["train"][:], train)
        np.testing.assert_array_equal(g["val"][:], val)
    elif fmt == "hdf5":
        with h5py.File(path) as f:
            np.testing.assert_array_equal(f["data"][:], train)
            np.testing.assert_array_equal(f["val"][:], val)
    else:
        import webdataset as wds

        manifest = json.loads((path / "manifest.json").read_text())
        shards = [str(path / s["name"]) for s in manifest["splits"]["train"]["shards"]]
        blocks = [s["rows.npy"] for s in wds.WebDataset(shards, shardshuffle=False).decode()]
        assert [len(b) for b in blocks] == [128] * 7 + [104]  # whole chunks, never single rows
        np.testing.assert_array_equal(np.concatenate(blocks), train)


def test_writer_failure_leaves_existing_store_untouched(tmp_path):
    path = tmp_path / "jets.zarr"
    write_store(path, "zarr", {"train": _rows(10, 31), "val": _rows(2, 31)}, {"object": "jets"})
    before = zarr.open_group(path, mode="r")["train"][:]
    with (
        pytest.raises(RuntimeError, match="boom"),
        open_writer(path, "zarr", 31, overwrite=True) as w,
    ):
        w.append("train", _rows(500, 31))
        raise RuntimeError("boom")
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["train"][:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets.zarr"]  # no partial left over


def test_new_store_absent_after_failure_and_refuses_overwrite(tmp_path):
    path = tmp_path / "muons.h5"
    with pytest.raises(RuntimeError), open_writer(path, "hdf5", 52) as w:
        w.append("train", _rows(10, 52))
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    path.write_text("precious")
    with pytest.raises(StoreError, match="already exists"), atomic_output(path):
        pass
    assert path.read_text() == "precious"


def test_find_store(tmp_path):
    write_store(tmp_path / "jets.h5", "hdf5", {"train": _rows(4, 31)}, {"object": "jets"})
    assert find_store(tmp_path, "jets") == tmp_path / "jets.h5"
    assert find_store(tmp_path / "jets.h5", "jets") == tmp_path / "jets.h5"
    with pytest.raises(StoreError, match="flashsim prep"):
        find_store(tmp_path, "muons")
    with pytest.raises(StoreError, match="No data"):
        find_store(tmp_path / "nowhere", "jets")
    with pytest.raises(StoreError, match="not 'muons'"):
        store_layout(read_metadata(tmp_path / "jets.h5") | {"layout": JETS.to_dict()}, "muons")


def test_default_chunk_rows_are_megabytes():
    for layout in (JETS, MUONS):
        nbytes = default_chunk_rows(layout.n_columns) * layout.n_columns * 4
        assert 1 * 2**20 <= nbytes <= 8 * 2**20
