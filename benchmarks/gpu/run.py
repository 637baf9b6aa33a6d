"""The GPU measurements of the spline engines, in one run of under 9 minutes on one GPU.

    python benchmarks/gpu/run.py OUT_DIR              # on a machine with a CUDA GPU
    python benchmarks/gpu/run.py OUT_DIR --cpu-dry-run  # tiny, CPU: checks that it runs

Stages, in order of priority (a stage that no longer fits the time budget is skipped
and listed under ``skipped``):

1. data: toy events (``flashsim toy``) prepared into stores (``flashsim prep``);
2. for the paper model of jets and muons, ``flashsim bench-loader --modes train`` with
   the original, chunked and resident loaders, stock nflows vs fused spline (eager):
   steps/s, data-wait fraction, NVML GPU utilisation, device-busy fraction;
3. the fused engine with CUDA graphs, compiled, compiled + CUDA graphs (resident loader);
4. the CUDA-only tests (``pytest -k cuda``);
5. generation objects/s of both engines (``flashsim generate``'s library entry point)
   with one-step paper checkpoints of jets and muons.

Writes ``OUT_DIR/gpu-spline.json`` (every figure, the commands run, their wall times)
and ``OUT_DIR/gpu-spline.png``; the bench-loader outputs stay in ``OUT_DIR/bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 510.0
"""Whole-run budget (the GPU lease allows 9 minutes of commands)."""


class Run:
    """The run's settings, clock and record."""

    def __init__(self, out: Path, dry: bool) -> None:
        self.out, self.dry = out, dry
        self.start = time.monotonic()
        # the dry run exercises every stage, however slow a shared CI machine is
        self.budget = 600.0 if dry else BUDGET_S
        self.device = "cpu" if dry else "cuda"
        self.model = "small" if dry else "paper"
        self.objects = ("jets",) if dry else ("jets", "muons")
        self.record: dict = {
            "dry_run": dry,
            "device": self.device,
            "model": self.model,
            "training": [],
            "generation": {},
            "cuda_tests": None,
            "commands": [],
            "skipped": [],
        }

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def fits(self, stage: str, needs_s: float) -> bool:
        if self.dry:
            needs_s /= 5  # tiny sizes
        if self.left() >= needs_s:
            return True
        self.record["skipped"].append({"stage": stage, "left_s": round(self.left(), 1)})
        return False

    def command(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        timeout = max(5.0, self.left()) if timeout is None else timeout
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
            rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
        except subprocess.TimeoutExpired as err:
            done = subprocess.CompletedProcess(args, 124, "", str(err))
            rc, tail = 124, f"timed out after {timeout:.0f} s"
        self.record["commands"].append(
            {
                "args": args,
                "rc": rc,
                "wall_s": round(time.monotonic() - t0, 2),
                **({"output_tail": tail} if rc else {}),
            }
        )
        return done


def flashsim(*args: str) -> list[str]:
    return [sys.executable, "-m", "flashsim", *args]


def make_data(run: Run) -> tuple[Path, Path]:
    data = run.out / "data"
    toy, gen_toy, shards = data / "toy.root", data / "gen-toy.root", data / "shards"
    events = "400" if run.dry else "60000"
    for path, n, seed in ((toy, events, "1"), (gen_toy, "200" if run.dry else "20000", "2")):
        if not path.exists():
            run.command(flashsim("toy", "--events", n, "--seed", seed, "--out", str(path)))
    if not (shards / "jets.zarr").exists():
        run.command(flashsim("prep", str(toy), "--out", str(shards)))
    return gen_toy, shards


VARIANTS = {
    # name: (bench-loader options, loaders: all or resident only)
    "nflows-eager": (["--spline", "nflows"], "all"),
    "fused-eager": (["--spline", "fused"], "all"),
    "fused-cuda-graphs": (["--spline", "fused", "--cuda-graphs"], "resident"),
    "fused-compiled": (["--spline", "fused", "--compile"], "resident"),
    "fused-compiled-cuda-graphs": (["--spline", "fused", "--compile", "--cuda-graphs"], "resident"),
}


def bench(run: Run, shards: Path, obj: str, variant: str) -> None:
    options, which = VARIANTS[variant]
    loaders = f"original-{obj},chunked,resident" if which == "all" else "resident"
    if run.dry:  # the original loaders' HDF5 derivation alone takes longer than the rest
        loaders = "resident"
    steps, warmup = ("2", "1") if run.dry else ("30", "6")
    json_path = run.out / "bench" / f"{obj}-{variant}.json"
    args = flashsim(
        "bench-loader",
        "--data",
        str(shards),
        "--object",
        obj,
        "--model",
        run.model,
        "--modes",
        "train",
        "--loaders",
        loaders,
        "--steps",
        steps,
        "--warmup",
        warmup,
        "--repeats",
        "1",
        "--device",
        run.device,
        "--out-dir",
        str(run.out / "bench-cache"),
        "--json",
        str(json_path),
        "--plot",
        str(json_path.with_suffix(".png")),
        "--no-progress",
        *options,
        *(["--batch-size", "128", "--threads", "1"] if run.dry else []),
    )
    done = run.command(args)
    if done.returncode != 0 or not json_path.exists():
        run.record["training"].append({"object": obj, "variant": variant, "failed": True})
        return
    result = json.loads(json_path.read_text())
    for entry in result["results"]:
        run.record["training"].append(
            {
                "object": obj,
                "variant": variant,
                "loader": entry["loader"],
                **{
                    k: entry.get(k)
                    for k in (
                        "steps_per_s",
                        "rows_per_s",
                        "data_wait_fraction",
                        "device_busy_fraction",
                        "gpu_util_mean",
                        "loss_last",
                    )
                },
            }
        )
    for skipped in result.get("skipped", []):
        run.record["training"].append({"object": obj, "variant": variant, **skipped})


def cuda_tests(run: Run) -> None:
    where = ["tests/test_spline.py"] if run.dry else ["tests"]
    done = run.command([sys.executable, "-m", "pytest", *where, "-q", "-k", "cuda", "-rs"])
    lines = (done.stdout or "").strip().splitlines()
    run.record["cuda_tests"] = {"rc": done.returncode, "summary": lines[-1] if lines else ""}


def generation(run: Run, shards: Path, gen_toy: Path) -> None:
    """Generation objects/s of both engines, the last of interleaved rounds."""
    from flashsim.generate import generate
    from flashsim.train import TrainConfig, train

    runs = {}
    for obj in run.objects:  # one real training step: a checkpoint of the architecture
        runs[obj] = run.out / "runs" / obj
        if not (runs[obj] / "checkpoints" / "last.pt").exists():
            config = TrainConfig(
                obj,
                data=shards,
                out=runs[obj],
                preset=run.model,
                epochs=1,
                max_steps_per_epoch=1,
                batch_size=256,
                device=run.device,
                progress=False,
                tensorboard=False,
            )
            train(config)
    models = {o: r for o, r in runs.items() if (r / "checkpoints" / "last.pt").exists()}
    rates: dict[str, list[float]] = {"fused": [], "nflows": []}
    for repeat in range(1 if run.dry else 2):  # the first round also warms CUDA up
        for engine in ("fused", "nflows") if repeat % 2 == 0 else ("nflows", "fused"):
            summary = generate(
                [gen_toy],
                run.out / f"gen-{engine}.root",
                **models,
                spline=engine,
                device=run.device,
                # the one-step checkpoints put many samples out of range: redraws would
                # time the redraw loop, not the sampling throughput (as bench_spline.py)
                max_redraws=0,
                overwrite=True,
                progress=False,
            )
            rates[engine].append(sum(summary.counts.values()) / summary.seconds)
    run.record["generation"] = {
        engine: {"objects_per_s": values[-1], "all_rounds": values}
        for engine, values in rates.items()
    }


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in record["training"] if r.get("steps_per_s")]
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [4, 1]})
    labels = [f"{r['object']}\n{r['variant']}\n{r['loader']}" for r in rows]
    ax.bar(range(len(rows)), [r["steps_per_s"] for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("training steps / s")
    ax.set_title(f"{record['model']} model on {record['device']}")
    gen = record["generation"]
    gx.bar(list(gen), [g["objects_per_s"] for g in gen.values()])
    gx.set_ylabel("generated objects / s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args(argv)
    run = Run(args.out, args.cpu_dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    gen_toy, shards = make_data(run)
    plan = [(obj, v) for v in ("nflows-eager", "fused-eager") for obj in run.objects]
    if not run.dry:  # CUDA graphs and compilation need the GPU (and its compile speed)
        plan += [(obj, "fused-cuda-graphs") for obj in run.objects]
    for obj, variant in plan:
        if run.fits(f"{obj} {variant}", 30):
            bench(run, shards, obj, variant)
    if run.fits("cuda tests", 40):
        cuda_tests(run)
    if run.fits("generation", 60):
        generation(run, shards, gen_toy)
    if not run.dry:
        for obj, variant in [(o, "fused-compiled") for o in run.objects] + [
            ("jets", "fused-compiled-cuda-graphs")
        ]:
            if run.fits(f"{obj} {variant}", 100):
                bench(run, shards, obj, variant)
    run.record["wall_s"] = round(time.monotonic() - run.start, 1)
    from flashsim.outputs import write_text_atomic

    write_text_atomic(args.out / "gpu-spline.json", json.dumps(run.record, indent=1))
    plot(run.record, args.out / "gpu-spline.png")
    print(json.dumps({k: run.record[k] for k in ("training", "generation", "cuda_tests")}))
    return run.record


if __name__ == "__main__":
    main()
