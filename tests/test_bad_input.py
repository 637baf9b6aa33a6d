"""Bad input: every case gives a clear one-paragraph FlashSimError (CLI: exit 2, no traceback),
and nothing is written. Bad files are made in tmp_path with real uproot and h5py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from flashsim.cli import main
from flashsim.errors import FlashSimError, InputError
from flashsim.store import read_metadata, store_path
from pipelines.branches import load_branch_map, parse_branch_option, required_branches
from pipelines.inputs import expand_inputs
from pipelines.prep import prep

from conftest import DY, read_events, write_events


def run_cli(*args: str):
    result = CliRunner().invoke(main, ["prep", *map(str, args), "--quiet"])
    return result.exit_code, result.output


def assert_cli_error(args, *fragments):
    code, output = run_cli(*args)
    assert code == 2, output
    assert output.startswith("Error: ") and "Traceback" not in output
    for fragment in fragments:
        assert fragment in output
    assert output.count("\n") == 1  # one paragraph


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "shards"


def test_missing_file(tmp_path, out):
    missing = tmp_path / "nope.root"
    with pytest.raises(InputError, match="does not exist"):
        prep([missing], out, progress=False)
    assert_cli_error([missing, "--out", out], str(missing), "does not exist")
    assert not out.exists()


def test_text_file_named_root(tmp_path, out):
    fake = tmp_path / "fake.root"
    fake.write_text("this is a log file, not ROOT\n")
    assert_cli_error([fake, "--out", out], str(fake), "neither a ROOT file nor an HDF5 file")
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="it is empty"):
        prep([empty], out, progress=False)
    assert not out.exists()


def test_root_file_without_events(tmp_path, out):
    path = tmp_path / "no_events.root"
    with uproot.recreate(path) as f:
        f.mktree("Runs", {"run": np.array([1, 2], dtype=np.int32)})
    assert_cli_error([path, "--out", out], str(path), "without an 'Events' tree", "Runs")


@pytest.mark.usefixtures("shared_data")
def test_collision_data_without_generator_branches(tmp_path, out):
    reco = [
        b
        for b in sorted(set(required_branches("jets")) | set(required_branches("muons")))
        if b.startswith(("Jet_", "Muon_", "Pileup_")) and "gen" not in b
    ]
    path = write_events(tmp_path / "collisions.root", read_events(DY, reco))
    assert_cli_error([path, "--out", out], str(path), "this looks like collision data")


def test_hdf5_with_wrong_width_or_no_data(tmp_path, out):
    seven = tmp_path / "seven.h5"
    with h5py.File(seven, "w") as f:
        f["data"] = np.zeros((10, 7), np.float32)
    assert_cli_error([seven, "--out", out], str(seven), "31 columns", "52 columns", "(10, 7)")
    nodata = tmp_path / "nodata.h5"
    with h5py.File(nodata, "w") as f:
        f["rows"] = np.zeros((10, 31), np.float32)
    assert_cli_error([nodata, "--out", out], "without a 'data' dataset", "rows")
    assert not out.exists()


@pytest.mark.usefixtures("shared_data")
def test_zero_event_file_contributes_zero_rows(tmp_path, out):
    events = read_events(
        DY, sorted(set(required_branches("jets")) | set(required_branches("muons")))
    )
    empty = write_events(tmp_path / "empty_events.root", events[:0])
    summary = prep([empty, DY], out, progress=False)
    assert summary.objects["jets"].matched == 95 + 2 and summary.objects["muons"].matched == 16
    assert f"{empty}: 0 events, contributes no rows" in str(summary)
    meta = read_metadata(store_path(out, "jets", "zarr"))
    assert [i["events"] for i in meta["inputs"]] == [0, 40]
    alone = prep([empty], tmp_path / "alone", progress=False)
    assert alone.objects["jets"].rows == {"train": 0, "val": 0}
    assert read_metadata(store_path(tmp_path / "alone", "muons", "zarr"))["rows"] == {
        "train": 0,
        "val": 0,
    }


@pytest.mark.usefixtures("shared_data")
def test_existing_output_without_overwrite(tmp_path, out):
    prep([DY], out, objects=["muons"], progress=False)
    before = read_metadata(store_path(out, "muons", "zarr"))
    assert_cli_error([DY, "--out", out], "already exist", "--overwrite", "muons.zarr")
    assert read_metadata(store_path(out, "muons", "zarr")) == before
    assert not store_path(out, "jets", "zarr").exists()


@pytest.mark.usefixtures("shared_data")
def test_input_expansion_errors(tmp_path, out):
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.root")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match=r"holds no \.root"):
        expand_inputs([tmp_path / "empty_dir"])
    listing = tmp_path / "files.txt"
    listing.write_text(f"# inputs\n{DY}\nmissing.root\n")
    with pytest.raises(InputError, match=r"missing\.root does not exist"):
        expand_inputs([listing])
    listing.write_text(f"# inputs\n{DY}\n\n")
    assert [f.path for f in expand_inputs([listing, DY])] == [DY]  # duplicates kept once
    h5 = tmp_path / "rows.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.zeros((3, 31), np.float32)
    with pytest.raises(InputError, match="mix ROOT NanoAOD files"):
        prep([DY, h5], out, progress=False)


@pytest.mark.usefixtures("shared_data")
def test_bad_options_and_branch_maps(tmp_path, out):
    with pytest.raises(FlashSimError, match="NAME=SOURCE"):
        parse_branch_option("Jet_puId")
    with pytest.raises(FlashSimError, match="Unknown branch 'Jet_nonsense'"):
        parse_branch_option("Jet_nonsense=1")
    with pytest.raises(FlashSimError, match="cannot be a constant"):
        parse_branch_option("Jet_pt=3")
    bad_json = tmp_path / "map.json"
    bad_json.write_text("{not json")
    with pytest.raises(FlashSimError, match="not valid JSON"):
        load_branch_map(bad_json)
    assert_cli_error([DY, "--out", out, "--branch-map", bad_json], str(bad_json))
    assert_cli_error([DY, "--out", out, "--objects", "electrons"], "Unknown object")
    assert_cli_error([DY, "--out", out, "--format", "parquet"], "Unknown store format")
    assert_cli_error([DY, "--out", out, "--val-rows", "3", "--val-fraction", "0.1"], "not both")
    mapped = tmp_path / "mapped.json"
    mapped.write_text('{"Jet_qgl": "Jet_qgl_v99"}')
    assert_cli_error(
        [DY, "--out", out, "--branch-map", mapped], "Jet_qgl_v99 (mapped to Jet_qgl by the user)"
    )
    # a per-jet branch can only come from another per-jet branch (same objects per event)
    assert_cli_error([DY, "--out", out, "--branch", "Jet_qgl=GenJet_pt"], "another Jet_ branch")
    assert not out.exists()


@pytest.mark.usefixtures("shared_data")
def test_damaged_root_file(tmp_path, out):
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(DY.read_bytes()[:5000])
    assert_cli_error([truncated, "--out", out], str(truncated), "cannot open it")
    # intact header and metadata, zeroed baskets: the damage shows only when events are read
    corrupt = tmp_path / "corrupt.root"
    data = bytearray(DY.read_bytes())
    data[20_000:200_000] = bytes(180_000)
    corrupt.write_bytes(bytes(data))
    assert_cli_error([corrupt, "--out", out], str(corrupt), "reading events 0-39 failed")
    assert not out.exists()
