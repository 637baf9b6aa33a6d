"""``flashsim bench-loader``: throughput and GPU utilisation of every loader."""

from __future__ import annotations

from pathlib import Path

import click

from flashsim.cli.options import (
    count_option,
    device_option,
    progress_option,
    seed_option,
    spline_option,
)
from flashsim.layouts import OBJECTS
from flashsim.presets import PRESETS


def _split_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("bench-loader")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="A store or a directory of stores (flashsim prep --out). Missing formats are "
    "derived from its rows into the cache. Default: shards/ if it holds the object, "
    "else toy data made (and cached) for the run.",
)
@click.option(
    "--object",
    "object",
    type=click.Choice(OBJECTS),
    default="jets",
    show_default=True,
    help="Which rows (layout) to load and train on.",
)
@click.option(
    "--loaders",
    "loaders",
    callback=_split_list,
    default=None,
    help="Comma-separated loader kinds, e.g. original-jets,chunked,resident. "
    "Default: every kind except auto, the originals included.",
)
@click.option(
    "--model",
    type=PRESETS.click_choice("none"),
    default=None,
    help="Flow preset trained in training mode; none: load-only.  [default: small]",
)
@click.option(
    "--modes",
    callback=_split_list,
    default=None,
    help="Comma-separated measurements: load, train.  [default: load,train]",
)
@count_option("--batch-size", default=2048)
@count_option("--steps", help="Timed optimiser steps per training trial.  [default: 50; quick: 10]")
@count_option(
    "--load-steps",
    help="Timed batches per load-only trial, from the start of the second epoch (the "
    "first is the warm-up).  [default: one epoch]",
)
@count_option(
    "--warmup",
    minimum=0,
    help="Untimed training steps before the timed ones.  [default: 5; quick: 2]",
)
@count_option(
    "--repeats",
    help="Interleaved trials per loader and mode; median and spread are "
    "reported.  [default: 3; quick: 2]",
)
@device_option(help="auto (CUDA if present), cpu, cuda or cuda:N.")
@count_option("--workers", minimum=0, default=0, help="num_workers of every loader.")
@count_option(
    "--threads",
    help="torch compute threads during the run.  [default: torch's, the core count; "
    "quick: 1, which is steadier on a machine shared with other work]",
)
@count_option(
    "--rows",
    help="Training rows of toy data when it is made.  [default: enough for the "
    "run, at least 200000]",
)
@seed_option()
@spline_option("Spline engine of the trained flow.  [default: fused]")
@click.option(
    "--compile/--no-compile",
    "compile",
    default=False,
    show_default=True,
    help="torch.compile the training loss and backward (as train --compile).",
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=False,
    show_default=True,
    help="Replay each training step from a CUDA graph (as train --cuda-graphs).",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=Path("bench-out"),
    show_default=True,
    help="Default place of the JSON, the PNG and the data cache.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON output.  [default: OUT_DIR/bench-loader.json]",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="PNG output.  [default: OUT_DIR/bench-loader.png]",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small toy data (jets 200k rows, muons 60k), small model, few steps, 2 "
    "repeats, 1 torch thread, its own toy data unless --data is given: under two "
    "minutes on a 2-core CPU (jets). Other options still override.",
)
@progress_option()
def bench_loader(
    data: Path | None,
    out_dir: Path,
    json_path: Path | None,
    plot_path: Path | None,
    quick: bool,
    progress: bool,
    **options,
) -> None:
    """Compare every loader, the original per-row datasets included.

    For each loader two measurements: LOAD (rows/s delivered as tensors on the device)
    and TRAIN (real optimiser steps of the flow: steps/s, samples/s, the fraction of
    wall time spent waiting for data, the device's busy fraction, GPU utilisation from
    NVML on NVIDIA GPUs, CPU utilisation and peak memory of the process tree). Loaders
    run interleaved, round-robin over the repeats, so a shared machine's drift hits all
    alike. Prints a table (originals first, then speedups over them) and writes the
    JSON and the PNG bar chart.

    \b
    Examples:
      flashsim bench-loader --quick
      flashsim bench-loader --data shards/ --object muons --model paper --steps 20
      flashsim bench-loader --loaders original-jets,chunked --model none
    """
    from flashsim.bench import BenchConfig, default_output_paths, format_table, plot, run_benchmark

    # The other options are BenchConfig fields by name.
    options.update(data=str(data) if data else None, cache_dir=str(out_dir / "data"))
    if quick:
        cfg = BenchConfig.quick_config(**options)
    else:
        cfg = BenchConfig(**{k: v for k, v in options.items() if v is not None})
    default_json, default_png = default_output_paths(out_dir)
    result = run_benchmark(cfg, progress=progress)
    click.echo(format_table(result))
    json_out = json_path or default_json
    png_out = plot_path or default_png
    from flashsim.bench import write_json

    write_json(result, json_out)
    plot(result, png_out)
    click.echo(f"\nJSON: {json_out}\nplot: {png_out}")
