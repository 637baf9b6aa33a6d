"""Fused spline engine vs stock nflows on a CPU: training steps and generation.

Both engines run in one process, interleaved (fused, nflows, nflows, fused, ...), on the
same weights and the same batches:

* training step (zero_grad, forward, backward, Adam) at batch 2048, small and paper
  architecture (jets), eager and ``torch.compile``-d, through
  :func:`flashsim.train.step.make_train_step` (what ``flashsim train`` runs);
* generation: objects/s of :func:`flashsim.generate.generate` (``flashsim generate``) on
  toy events, with a checkpoint of each architecture, without redraws (``max_redraws=0``:
  the one-step checkpoints would otherwise time the redraw loop of out-of-range samples).

The batches are real rows: toy events made with ``flashsim toy`` and prepared with
``flashsim prep`` (the spline's cost depends on how many values fall in its interval).

With ``--bound`` a third column, ``bound``, times the same step and the same generation
with a spline that costs nothing (the coupling network's output still gets a gradient,
so its backward runs): what any spline engine could reach with nflows' ResidualNet,
LULinear, permutations and Adam left as they are. It is an upper bound, not an engine.

    python benchmarks/bench_spline.py --out bench-out/spline            # full size
    python benchmarks/bench_spline.py --tiny --out bench-out/spline-tiny  # checks it runs

Writes ``bench_spline.json`` into ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from flashsim.flow_config import SPLINE_ENGINES
from flashsim.generate import generate
from flashsim.layouts import layout_for
from flashsim.model import build_flow, set_standardization
from flashsim.outputs import write_text_atomic
from flashsim.presets import get_preset
from flashsim.spline import FusedRQCouplingTransform
from flashsim.toy import generate_toy
from flashsim.train import TrainConfig, train
from flashsim.train.step import make_train_step
from flashsim.validate import read_rows
from pipelines.prep import prep
from pipelines.store_info import column_stats

OBJECT = "jets"
BOUND = "bound"
"""The zero-cost-spline column (``--bound``)."""


def _columns(bound: bool) -> tuple[str, ...]:
    """The engines timed, and the zero-cost spline after them with ``bound``."""
    return (*SPLINE_ENGINES, BOUND) if bound else tuple(SPLINE_ENGINES)


def _engine(column: str) -> str:
    """The spline engine a column builds its flow with (the bound patches the fused one)."""
    return "fused" if column == BOUND else column


def _free_spline(
    self: FusedRQCouplingTransform, inputs: torch.Tensor, params: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # identity with log-det 0, tied to the parameters so that the conditioner's backward
    # runs as it does for a real spline (one reduction and its broadcast remain)
    return inputs, params.sum(dim=-1) * 0.0


@contextlib.contextmanager
def zero_cost_spline(active: bool = True) -> Iterator[None]:
    """Within the block, the fused engine's coupling transforms skip the spline."""
    if not active:
        yield
        return
    real = FusedRQCouplingTransform._spline
    FusedRQCouplingTransform._spline = _free_spline  # type: ignore[method-assign]
    try:
        yield
    finally:
        FusedRQCouplingTransform._spline = real  # type: ignore[method-assign]


def make_data(out: Path, events: int) -> tuple[Path, Path]:
    """Toy NanoAOD events and their prepared stores (cached in ``out``)."""
    toy = out / "toy.root"
    shards = out / "shards"
    if not toy.exists():
        generate_toy(toy, events, seed=1, progress=False)
    if not (shards / f"{OBJECT}.zarr").exists():
        prep([toy], shards, seed=0, progress=False)
    return toy, shards / f"{OBJECT}.zarr"


def _flows(arch: str, store: Path, bound: bool = False) -> dict:
    """One flow per engine with the same initial weights (standardised as train does);
    with ``bound``, also a fused one for :func:`zero_cost_spline`."""
    config = get_preset(arch, OBJECT).flow
    flows = {}
    for engine in _columns(bound):
        flow = build_flow(config.replace(spline=_engine(engine)), seed=0)
        if config.standardize:
            s, layout = column_stats(store, ("train",)), layout_for(OBJECT)
            x, y = layout.targets, layout.conditioning
            stats = (s.mean[x], s.std[x], s.mean[y], s.std[y])
            set_standardization(flow, *(torch.from_numpy(a) for a in stats))
        flows[engine] = flow
    return flows


def time_training(
    arch: str, store: Path, batch: int, steps: int, compile: bool, bound: bool = False
) -> dict:
    """Seconds per training step of each engine, interleaved; the first step of each
    (compilation when compiling) is reported apart and not in the median."""
    y, x = (torch.from_numpy(a.copy()) for a in read_rows(store, "train", batch))
    flows = _flows(arch, store, bound=bound)
    run = {}
    for engine, flow in flows.items():
        torch._dynamo.reset()
        opt = torch.optim.Adam(flow.parameters(), lr=1e-5)
        run[engine] = make_train_step(
            lambda a, b, flow=flow: -flow.log_prob(a, context=b),
            opt,
            torch.device("cpu"),
            spline=_engine(engine),
            compile=compile,
        )
    times: dict[str, list[float]] = {e: [] for e in flows}
    order = list(flows)
    for i in range(steps + 1):
        for engine in order if i % 2 == 0 else order[::-1]:
            with zero_cost_spline(engine == BOUND):
                t0 = time.perf_counter()
                run[engine](x, y)
                times[engine].append(time.perf_counter() - t0)
    return {
        engine: {
            "first_step_s": ts[0],
            "step_s": statistics.median(ts[1:]),
            "steps": len(ts) - 1,
            "step_times_s": ts[1:],
        }
        for engine, ts in times.items()
    }


def make_checkpoint(arch: str, shards: Path, out: Path) -> Path:
    """A real (one-step) training run of the architecture: what generate reads."""
    run = out / f"run-{arch}"
    if not (run / "checkpoints" / "last.pt").exists():
        train(
            TrainConfig(
                OBJECT,
                data=shards,
                out=run,
                preset=arch,
                epochs=1,
                max_steps_per_epoch=1,
                batch_size=256,
                progress=False,
                tensorboard=False,
            )
        )
    return run


def time_generation(run: Path, toy: Path, out: Path, repeats: int, bound: bool = False) -> dict:
    engines = _columns(bound)
    rates: dict[str, list[float]] = {e: [] for e in engines}
    objects = 0
    for r in range(repeats):
        for engine in engines if r % 2 == 0 else engines[::-1]:
            with zero_cost_spline(engine == BOUND):
                summary = generate(
                    [toy],
                    out / f"gen-{engine}.root",
                    jets=run,
                    spline=_engine(engine),
                    device="cpu",
                    # one-step checkpoints put many samples out of range: with redraws (up to
                    # 10 passes per object) this would time the redraw loop, not the sampling
                    # throughput of a trained model, which redraws a few objects in a thousand
                    max_redraws=0,
                    overwrite=True,
                    progress=False,
                )
            objects = sum(summary.counts.values())
            rates[engine].append(objects / summary.seconds)
    return {
        e: {
            "objects_per_s": statistics.median(v),
            "objects": objects,
            "repeats": len(v),
            "rates": v,
        }
        for e, v in rates.items()
    }


def table(results: dict) -> str:
    """Markdown table; with a ``bound`` column, nflows over the zero-cost spline too
    (the most any spline engine could give; compiled rows have none)."""
    rows = [*results["training"].values(), *results["generation"].values()]
    bound = any(BOUND in r for r in rows)
    head = "| measurement | fused | nflows | speedup |"
    rule = "|---|---:|---:|---:|"
    if bound:
        head += " zero-cost spline | bound |"
        rule += "---:|---:|"
    lines = [head, rule]

    def bound_cells(r: dict, key: str, fmt: str, ratio: Callable[[float], float]) -> str:
        if BOUND not in r:
            return " | |" if bound else ""
        z = r[BOUND][key]
        return f" {z:{fmt}} | {ratio(z):.2f}x |"

    for key, r in results["training"].items():
        f, n = r["fused"]["step_s"], r["nflows"]["step_s"]
        line = f"| train step {key} (s) | {f:.3f} | {n:.3f} | {n / f:.2f}x |"
        lines.append(line + bound_cells(r, "step_s", ".3f", lambda z, n=n: n / z))
    for key, r in results["generation"].items():
        f, n = r["fused"]["objects_per_s"], r["nflows"]["objects_per_s"]
        line = f"| generate {key} (objects/s) | {f:,.0f} | {n:,.0f} | {f / n:.2f}x |"
        lines.append(line + bound_cells(r, "objects_per_s", ",.0f", lambda z, n=n: z / n))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/spline"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--archs", default="small,paper")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--batch", type=int, default=None, help="[default: 2048; tiny: 64]")
    parser.add_argument("--steps-small", type=int, default=None, help="[default: 10; tiny: 2]")
    parser.add_argument("--steps-paper", type=int, default=None, help="[default: 2; tiny: 1]")
    parser.add_argument("--events", type=int, default=None, help="toy events [20000; tiny 300]")
    parser.add_argument("--gen-repeats", type=int, default=None, help="[default: 3; tiny: 1]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--bound",
        action="store_true",
        help="also time a zero-cost spline (eager only): the most any engine could give",
    )
    args = parser.parse_args(argv)
    tiny = args.tiny
    batch = args.batch or (64 if tiny else 2048)
    steps = {
        "small": args.steps_small or (2 if tiny else 10),
        "paper": args.steps_paper or (1 if tiny else 2),
    }
    events = args.events or (300 if tiny else 20_000)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    toy, store = make_data(args.out, events)
    archs = [a for a in args.archs.split(",") if a]
    modes = [m for m in args.modes.split(",") if m]
    results: dict = {"training": {}, "generation": {}}
    for arch in archs:
        for mode in modes:
            key = f"{arch} {mode} batch {batch}"
            print(f"training: {key} ...", flush=True)
            results["training"][key] = time_training(
                arch,
                store,
                batch,
                steps[arch],
                compile=mode == "compiled",
                bound=args.bound and mode == "eager",
            )
    for arch in archs:
        print(f"generation: {arch} ...", flush=True)
        run = make_checkpoint(arch, store.parent, args.out)
        results["generation"][arch] = time_generation(
            run, toy, args.out, args.gen_repeats or (1 if tiny else 3), bound=args.bound
        )
    results["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    results["settings"] = {
        "batch": batch,
        "steps": steps,
        "events": events,
        "tiny": tiny,
        "bound": args.bound,
    }
    write_text_atomic(args.out / "bench_spline.json", json.dumps(results, indent=1))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
