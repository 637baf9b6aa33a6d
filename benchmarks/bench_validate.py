"""Benchmark of ``flashsim validate``: wall time of the marginals and of each conditioning
check on N jets rows (CPU, small preset).

Prepares a toy jets store whose validation split holds at least ``--rows`` rows, trains
the small preset for ``--steps`` optimiser steps, then times ``validate()`` with and
without the conditioning checks, and the checks one by one (the same library calls
``validate`` makes), in this process, with one torch thread.

    python benchmarks/bench_validate.py                    # 100 000 rows, in a temp dir
    python benchmarks/bench_validate.py --rows 5000 --steps 20 --keep bench-validate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

JETS_PER_EVENT = 6.3  # toy ttbar: matched jets per event


def prepare(base: Path, rows: int, steps: int) -> tuple[Path, Path]:
    from flashsim.toy import generate_toy
    from flashsim.train import TrainConfig, train
    from pipelines.prep import prep

    events = int(2.2 * rows / JETS_PER_EVENT)  # half of the rows go to val, 10 % margin
    shards, run = base / "shards", base / "runs" / "jets"
    if not (shards / "jets.zarr").exists():
        generate_toy(base / "toy.root", events, seed=0, progress=False)
        prep([base / "toy.root"], shards, objects=["jets"], val_fraction=0.5, progress=False)
    if not run.exists():
        train(
            TrainConfig(
                "jets",
                data=shards,
                out=run,
                preset="small",
                epochs=1,
                max_steps_per_epoch=steps,
                threads=1,
                progress=False,
                tensorboard=False,
            )
        )
    return shards / "jets.zarr", run


def timed(fn: Callable[..., object], *args, **kw) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def time_checks(store: Path, run: Path, rows: int, samples: int, pit_rows: int) -> dict:
    """Seconds of each step of ``validate`` (the calls it makes, in its order)."""
    from flashsim.conditioning import CheckRows
    from flashsim.conditioning.correlations import correlation_check
    from flashsim.conditioning.floors import split_halves, stream
    from flashsim.conditioning.information import delta_nll
    from flashsim.conditioning.physics import profiles, roc_checks
    from flashsim.conditioning.pit import draw_ranks, pit_check
    from flashsim.conditioning.report import check_conditioning
    from flashsim.sampling import TrainedFlow
    from flashsim.validate import read_rows, sample_targets

    model = TrainedFlow.load(run)
    (cond, full), t_read = timed(read_rows, store, "val", rows)
    pit_rows = min(pit_rows, len(full))
    flash, t_sample = timed(sample_targets, model, cond, 0, False)
    view = CheckRows.build(model.layout, model.preprocessing, cond, full, flash)
    head = view.head(pit_rows)
    splits = split_halves(len(view), stream(0, "floor-halves"))
    ranks, t_ranks = timed(draw_ranks, model.flow, model.preprocessing, head, samples, 0)
    _, t_pit = timed(pit_check, head, ranks, samples, 0)
    _, t_nll = timed(
        delta_nll, model.flow, head.full, head.conditioning, 0, model.layout.conditioning_columns
    )
    _, t_prof = timed(profiles, view, splits)
    _, t_roc = timed(roc_checks, view, splits)
    _, t_corr = timed(correlation_check, view, splits)
    result = check_conditioning(
        model.flow, model.preprocessing, view, samples=samples, pit_rows=pit_rows
    )
    figures, t_fig = timed(result.figures, "bench")
    start = time.perf_counter()
    for fig in figures.values():
        fig.savefig(os.devnull, format="png")
    t_save = time.perf_counter() - start
    return {
        "read rows": t_read,
        "one FlashSim draw per row": t_sample,
        f"PIT draws ({pit_rows} rows x {samples})": t_ranks,
        "PIT KS and floors": t_pit,
        f"ΔNLL, all + per column ({pit_rows} rows)": t_nll,
        "profiles": t_prof,
        "ROC": t_roc,
        "correlations": t_corr,
        "conditioning figures (build)": t_fig,
        "conditioning figures (render PNG)": t_save,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=150, help="training steps of the flow")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--pit-rows", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = parser.parse_args()

    import torch

    from flashsim.validate import validate

    torch.set_num_threads(1)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-validate-"))
    try:
        store, run = prepare(base, args.rows, args.steps)
        kw = dict(
            max_rows=args.rows,
            samples=args.samples,
            pit_rows=args.pit_rows,
            progress=False,
            device="cpu",
        )
        full, t_full = timed(validate, run, store, out=base / "v-on", **kw)
        _, t_plain = timed(validate, run, store, out=base / "v-off", conditioning=False, **kw)
        steps = time_checks(store, run, args.rows, args.samples, args.pit_rows)
        record = {
            "rows": full.rows,
            "samples": args.samples,
            "pit_rows": args.pit_rows,
            "validate_s": round(t_full, 1),
            "validate_no_conditioning_s": round(t_plain, 1),
            "steps_s": {k: round(v, 2) for k, v in steps.items()},
            "load_average_1min": os.getloadavg()[0],
        }
        print(json.dumps(record, indent=2, ensure_ascii=False))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
