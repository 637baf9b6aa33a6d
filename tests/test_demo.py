"""`flashsim demo`: the README's main job, end to end, at a small scale."""

from __future__ import annotations

import json

import pytest
import uproot
from click.testing import CliRunner

from flashsim.cli import main

pytestmark = pytest.mark.multiprocess  # several processes: label for `-m "not multiprocess"`


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo", "--out", str(out), "--events", "2000", "--epochs", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    for stage in ("1/6 toy", "2/6 prep", "3/6 train", "4/6 validate", "5/6 generate", "6/6 bench"):
        assert stage in result.output
    assert (out / "shards" / "jets.zarr").is_dir() and (out / "shards" / "muons.zarr").is_dir()
    assert (out / "runs" / "jets" / "loss.png").is_file()
    report = json.loads((out / "runs" / "jets" / "validation" / "validation.json").read_text())
    assert len(report["columns"]) == 17
    with uproot.open(out / "flashsim.root") as f:
        events = f["Events"].arrays(["nJet", "nGenJet"], library="np")
    assert len(events["nJet"]) == 2000 and (events["nJet"] == events["nGenJet"]).all()
    bench = json.loads((out / "bench-loader.json").read_text())
    assert {r["loader"] for r in bench["results"]} >= {"original-jets", "chunked", "resident"}
