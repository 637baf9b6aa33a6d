"""benchmarks/gpu/run.py --cpu-dry-run: the GPU script runs end to end (tiny, on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run.py"


@pytest.mark.multiprocess  # it runs flashsim commands in subprocesses
def test_gpu_script_dry_run_writes_its_figures(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--cpu-dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[2],
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "gpu-spline.json").read_text())
    assert record["skipped"] == [], record["skipped"]
    assert all(c["rc"] == 0 for c in record["commands"]), record["commands"]
    variants = {(r["variant"], r["loader"]): r for r in record["training"]}
    for engine in ("nflows", "fused"):
        entry = variants[(f"{engine}-eager", "resident")]
        assert entry["steps_per_s"] > 0 and 0 <= entry["data_wait_fraction"] <= 1
        assert record["generation"][engine]["objects_per_s"] > 0
    # the same weights and batches: both engines end at the same loss
    losses = [variants[(f"{e}-eager", "resident")]["loss_last"] for e in ("nflows", "fused")]
    assert abs(losses[0] - losses[1]) < 1e-3
    assert record["cuda_tests"]["rc"] == 0 and "passed" in record["cuda_tests"]["summary"]
    assert (out / "gpu-spline.png").read_bytes()[:4] == b"\x89PNG"
