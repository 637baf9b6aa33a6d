"""Tests of ``flashsim bench-loader`` (flashsim.bench): a real quick run end to end on toy
data, plus the harness pieces (schedule, statistics, resource sampling, store derivation).

Timings are never asserted: only that every figure exists, is positive, that fractions
are fractions and that speedups are computed from the same run's numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import loaders
from flashsim.bench.data import iter_rows, prepare_bench_data
from flashsim.bench.harness import interleaved, summarize
from flashsim.bench.resources import BusyTimer, ResourceSampler
from flashsim.cli import main
from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import MUONS
from flashsim.store import read_metadata, store_path
from loaders.sources import KIND_OBJECT
from pipelines.writers import write_store

REPEATS = 2
# --quick with even smaller settings, so the whole file stays well under a minute.
SMALL = ["--rows", "30000", "--batch-size", "512", "--steps", "3", "--load-steps", "8",
         "--warmup", "1", "--repeats", str(REPEATS), "--threads", "1", "--no-progress"]  # fmt: skip


def _kinds_for(obj: str) -> set[str]:
    return {k for k in loaders.KINDS if k != "auto" and KIND_OBJECT.get(k, obj) == obj}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(main, ["bench-loader", "--quick", "--out-dir", str(out), *SMALL])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output, json.loads((out / "bench-loader.json").read_text())


def test_quick_run_measures_every_loader_in_both_modes(quick_run):
    _, _, res = quick_run
    assert set(res) >= {"machine", "config", "results", "data", "notes", "skipped", "trials"}
    assert res["skipped"] == []
    expected = _kinds_for("jets")
    for mode in ("load", "train"):
        assert {r["loader"] for r in res["results"] if r["mode"] == mode} == expected
    # Every loader read the same rows: one source of rows, the same counts in every store.
    assert res["data"]["source"] == "toy"
    for path in res["data"]["stores"].values():
        assert read_metadata(path)["rows"] == res["data"]["rows"]
    assert len(res["trials"]) == len(expected) * 2 * REPEATS


def test_quick_run_figures_are_positive_and_fractions_bounded(quick_run):
    _, _, res = quick_run
    for mode in ("load", "train"):  # the same number of timed steps for every loader
        assert len({t["timed_steps"] for t in res["trials"] if t["mode"] == mode}) == 1
    for r in res["results"]:
        assert r["rows_per_s"] > 0 and r["steps_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert len(r["repeats"]["rows_per_s"]["values"]) == REPEATS
        assert (
            r["repeats"]["rows_per_s"]["min"]
            <= r["rows_per_s"]
            <= r["repeats"]["rows_per_s"]["max"]
        )
        assert 0.0 <= r["cpu_util"] <= 1.0
        if r["mode"] == "train":
            assert 0.0 <= r["data_wait_fraction"] <= 1.0
            assert 0.0 < r["device_busy_fraction"] <= 1.0
            assert math.isfinite(r["loss_last"])
            assert r["samples_per_s"] == r["rows_per_s"]
        else:
            assert r["data_wait_fraction"] is None and r["device_busy_fraction"] is None
        if not torch.cuda.is_available():
            assert r["gpu_util_mean"] is None  # no invented utilisation without a GPU
    if not torch.cuda.is_available():
        assert res["machine"]["gpu"] is None
        assert any("no GPU" in n for n in res["notes"])


def test_quick_run_speedups_come_from_the_same_run(quick_run):
    _, _, res = quick_run
    for mode in ("load", "train"):
        rows = [r for r in res["results"] if r["mode"] == mode]
        base = next(r for r in rows if r["loader"] == "original-jets")
        for r in rows:
            assert r["baseline"] == "original-jets"
            assert r["speedup_vs_original"] == pytest.approx(r["rows_per_s"] / base["rows_per_s"])
            # the per-repeat ratios pair each trial with the baseline's trial of that repeat
            trials = {(t["loader"], t["repeat"]): t for t in res["trials"] if t["mode"] == mode}
            paired = [
                trials[(r["loader"], k)]["rows_per_s"] / trials[("original-jets", k)]["rows_per_s"]
                for k in range(REPEATS)
            ]
            assert r["repeats"]["speedup_vs_original"]["values"] == pytest.approx(paired)


def test_quick_run_writes_table_json_and_png(quick_run):
    out, output, _ = quick_run
    png = out / "bench-loader.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "bench-loader.json") in output and str(png) in output
    lines = output.splitlines()
    first = {
        m: next(i for i, ln in enumerate(lines) if ln.startswith(m)) for m in ("load", "train")
    }
    for i in first.values():  # the original loader heads each mode's block
        assert "original-jets" in lines[i] and "baseline" in lines[i]


def test_load_only_run_derives_missing_formats_from_given_store(tmp_path):
    # A muons zarr store alone: the webdataset and HDF5 stores are derived from its rows
    # into the cache, and every muon loader (the original per-row one included) runs.
    rng = np.random.default_rng(3)
    rows = {"train": rng.normal(size=(6000, 52)).astype(np.float32),
            "val": rng.normal(size=(500, 52)).astype(np.float32)}  # fmt: skip
    src = write_store(tmp_path / "given" / "muons.zarr", "zarr", rows,
                      {"object": "muons", "layout": MUONS.to_dict()}, chunk_rows=1000)  # fmt: skip
    out = tmp_path / "out"
    args = ["bench-loader", "--data", str(src), "--object", "muons", "--model", "none",
            "--batch-size", "256", "--load-steps", "4", "--warmup", "1", "--repeats", "1",
            "--threads", "1", "--out-dir", str(out), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((out / "bench-loader.json").read_text())
    assert {r["loader"] for r in res["results"]} == _kinds_for("muons")
    assert {r["mode"] for r in res["results"]} == {"load"}
    assert sorted(res["data"]["derived"]) == ["hdf5", "webdataset"]
    assert sorted(p.name for p in (tmp_path / "given").iterdir()) == ["muons.zarr"]  # untouched
    with h5py.File(res["data"]["stores"]["hdf5"], "r") as f:
        np.testing.assert_array_equal(f["data"][:], rows["train"])
        np.testing.assert_array_equal(f["val"][:], rows["val"])
    wds_rows = np.concatenate(list(iter_rows(res["data"]["stores"]["webdataset"], "train")))
    np.testing.assert_array_equal(wds_rows, rows["train"])


def test_stores_with_different_rows_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    meta = {"object": "muons", "layout": MUONS.to_dict()}
    a = {"train": rng.normal(size=(100, 52)), "val": rng.normal(size=(10, 52))}
    b = {"train": rng.normal(size=(90, 52)), "val": rng.normal(size=(10, 52))}
    write_store(store_path(tmp_path, "muons", "zarr"), "zarr", a, meta)
    write_store(store_path(tmp_path, "muons", "hdf5"), "hdf5", b, meta)
    with pytest.raises(StoreError, match="not the same data"):
        prepare_bench_data("muons", ["zarr", "hdf5"], data=tmp_path, cache_dir=tmp_path / "c")


def test_bad_options_give_a_clear_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["bench-loader", "--loaders", "chunked,fastest", "--quick",
                                  "--out-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "Unknown loader(s) fastest" in result.output
    result = runner.invoke(main, ["bench-loader", "--modes", "fit", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--modes must name load and/or train" in result.output
    result = runner.invoke(main, ["bench-loader", "--data", str(tmp_path / "nothing"),
                                  "--out-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "No data at" in result.output
    assert not (tmp_path / "bench-loader.json").exists()


def test_interleaved_schedule_is_round_robin_with_rotating_start():
    names = ["a", "b", "c"]
    order = list(interleaved(names, ["load", "train"], repeats=3))
    assert len(order) == 3 * 3 * 2
    for r in range(3):
        block = [(n, m) for k, n, m in order if k == r]
        assert sorted(block) == sorted((n, m) for n in names for m in ("load", "train"))
        assert block[0][0] == names[r]  # each repeat starts with a different loader
    firsts = [next(i for i, (k, n, _) in enumerate(order) if k == 0 and n == x) for x in names]
    assert firsts == sorted(firsts)


def test_summarize_reports_median_and_spread():
    values = [4.0, 1.0, 3.0]
    s = summarize(values)
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["spread"] == pytest.approx((4.0 - 1.0) / 2 / 3.0)
    assert summarize([None, None]) is None


def test_resource_sampler_sees_memory_of_child_processes():
    # A child that holds ~300 MB: the process tree's peak RSS must include it.
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    with ResourceSampler(interval_s=0.05) as sampler:
        sampler.start_window()
        child = subprocess.Popen([sys.executable, "-c", code])
        child.wait(timeout=30)
    usage = sampler.summary()
    assert usage["rss_growth_mb"] > 250
    assert 0.0 <= usage["cpu_util"] <= 1.0
    assert usage["gpu_util_mean"] is None or 0.0 <= usage["gpu_util_mean"] <= 1.0


def test_busy_timer_on_cpu_sums_compute_time():
    timer = BusyTimer("cpu")
    for _ in range(3):
        with timer.span():
            time.sleep(0.02)
    assert 0.06 <= timer.total_s() < 1.0


def test_unavailable_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from flashsim.bench.run import resolve_device

    with pytest.raises(FlashSimError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_epochs_harness_times_every_row_of_an_epoch_and_writes_original_files(tmp_path):
    # the load-only harness behind benchmarks/bench_loaders.py, on a tiny store
    from flashsim.bench.epochs import make_stores, markdown, measure, original_files

    make_stores(tmp_path, 3000, ("jets", "muons"))
    for kind in ("chunked", "resident", "webdataset"):
        r = measure(str(tmp_path), kind, object="jets", batch_size=256, epochs=1)
        assert (r["kind"], r["rows_timed"], r["batches_per_epoch"]) == (kind, 3000, 12)
        assert r["peak_rss_bytes"] >= r["rss_growth_bytes"] >= 0 and r["rows_per_s"] > 0
    h5 = str(store_path(tmp_path, "jets", "hdf5"))
    r = measure(h5, "original-jets", batch_size=256, epochs=1, max_batches=3)
    assert r["rows_timed"] == 3 * 256
    parts = original_files(tmp_path, "muons")
    blocks = []
    for part in parts:  # the original layout: one contiguous (unchunked) dataset per file
        with h5py.File(part) as f:
            assert f["data"].chunks is None
            blocks.append(f["data"][()])
    with h5py.File(store_path(tmp_path, "muons", "hdf5")) as f:
        np.testing.assert_array_equal(np.concatenate(blocks), f["data"][()])
    table = markdown({"rows": 3000, "objects": {"jets": {"results": {"chunked": r}, "ratios": {}}}})
    assert "| chunked | " in table and "### jets (3,000 rows)" in table
