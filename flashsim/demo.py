"""The end-to-end demo on the embedded toy data: toy → prep → train → validate → generate
→ benchmark.

``flashsim demo`` runs the whole workflow a user would, with nothing to download:

1. ``flashsim toy``: toy ttbar NanoAOD events (``OUT/ttbar_toy.root``);
2. ``flashsim prep``: jets and muons stores (``OUT/shards/``);
3. ``flashsim train jets --preset small``: a few epochs on the CPU (``OUT/runs/jets/``,
   with ``loss.png``);
4. ``flashsim validate jets``: the flow against full simulation on the validation split
   (``OUT/runs/jets/validation/validation.png`` and ``.json``);
5. ``flashsim generate``: the toy events simulated again by the trained flow, as NanoAOD
   (``OUT/flashsim.root``);
6. ``flashsim bench-loader --quick``: every loader against the originals
   (``OUT/bench-loader.png``, ``OUT/bench-loader.json``).

Each step calls the same library function as its command.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from flashsim.outputs import make_output_dir

if TYPE_CHECKING:
    from flashsim.validate import ValidationReport

DEFAULT_DEMO_DIR = Path("demo")
T = TypeVar("T")


@dataclass
class DemoResult:
    """Paths of what the demo wrote, and the seconds each step took."""

    out: Path
    toy: Path
    shards: Path
    run: Path
    validation: Path
    generated: Path
    bench_json: Path | None
    bench_plot: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | os.PathLike = DEFAULT_DEMO_DIR,
    *,
    events: int = 20_000,
    epochs: int = 3,
    steps_per_epoch: int | None = 60,
    seed: int = 0,
    bench: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Run toy → prep → train (small preset, jets) → validate → generate → quick loader
    benchmark in ``out``.

    The toy file is reused when it already exists (it is written atomically, so an
    existing one is complete); everything else is made anew.
    ``steps_per_epoch`` caps the optimiser steps of each training epoch (``None``: whole
    epochs), so the demo takes minutes on a laptop CPU.
    """
    out = make_output_dir(out)
    toy_path, shards, run_dir = out / "ttbar_toy.root", out / "shards", out / "runs" / "jets"
    generated = out / "flashsim.root"
    seconds: dict[str, float] = {}

    def timed(key: str, title: str, step: Callable[[], T]) -> T:
        click.secho(f"\n== {title}", bold=True)
        t = time.perf_counter()
        value = step()
        seconds[key] = time.perf_counter() - t
        return value

    timed(
        "toy",
        f"1/6 toy: {events:,} ttbar events -> {toy_path}",
        lambda: _toy(toy_path, events, seed, progress),
    )
    timed(
        "prep",
        f"2/6 prep: {toy_path} -> {shards}/",
        lambda: _prep(toy_path, shards, seed, progress),
    )
    timed(
        "train",
        f"3/6 train: jets, preset small, {epochs} epochs of {steps_per_epoch or 'all'} steps"
        f" -> {run_dir}/",
        lambda: _train(shards, run_dir, epochs, steps_per_epoch, seed, progress),
    )
    validation = timed(
        "validate",
        f"4/6 validate: {run_dir} vs full simulation (val split of {shards}/)",
        lambda: _validate(run_dir, shards, seed, progress),
    )
    timed(
        "generate",
        f"5/6 generate: the jets of {toy_path} simulated by the flow -> {generated}",
        lambda: _generate(toy_path, generated, run_dir, seed, progress),
    )
    bench_json = bench_plot = None
    if bench:
        bench_json, bench_plot = timed(
            "bench",
            "6/6 bench-loader --quick: every loader vs the original per-row datasets",
            lambda: _bench(out, shards, progress),
        )
    _print_done(toy_path, shards, run_dir, validation, generated, bench_json, bench_plot, seconds)
    return DemoResult(
        out,
        toy_path,
        shards,
        run_dir,
        validation.json_path,
        generated,
        bench_json,
        bench_plot,
        seconds,
    )


def _toy(toy_path: Path, events: int, seed: int, progress: bool) -> None:
    from flashsim.toy import generate_toy

    if toy_path.exists():
        click.echo(f"{toy_path} exists; reusing it (delete it to regenerate).")
    else:
        generate_toy(toy_path, events, seed=seed, progress=progress)


def _prep(toy_path: Path, shards: Path, seed: int, progress: bool) -> None:
    from pipelines.prep import prep

    summary = prep([toy_path], shards, seed=seed, overwrite=True, progress=progress)
    click.echo(str(summary))


def _train(
    shards: Path, run_dir: Path, epochs: int, steps_per_epoch: int | None, seed: int, progress: bool
) -> None:
    from flashsim.train import TrainConfig, train

    if run_dir.exists():  # the demo's own previous run: start afresh
        shutil.rmtree(run_dir)
    result = train(
        TrainConfig(
            "jets",
            data=shards,
            out=run_dir,
            preset="small",
            epochs=epochs,
            max_steps_per_epoch=steps_per_epoch,
            seed=seed,
            # one thread: this small flow gains little from more, and OpenMP threads
            # stall badly when anything else shares the cores
            threads=1,
            # the conditioning monitor on 4 000 of the 12 726 validation rows: its panel in
            # loss.png for a few seconds per epoch (validate measures the whole split)
            monitor_rows=4000,
            progress=progress,
        )
    )
    losses = [round(h["val_loss"], 3) for h in result.history if "val_loss" in h]
    click.echo(f"validation loss per epoch: {losses}; loss curve: {run_dir / 'loss.png'}")


def _validate(run_dir: Path, shards: Path, seed: int, progress: bool) -> ValidationReport:
    from flashsim.validate import validate

    validation = validate(run_dir, shards, seed=seed, device="cpu", progress=progress)
    click.echo(validation.table())
    return validation


def _generate(toy_path: Path, generated: Path, run_dir: Path, seed: int, progress: bool) -> None:
    from flashsim.generate import generate

    gen = generate(
        [toy_path],
        generated,
        jets=run_dir,
        seed=seed,
        device="cpu",
        overwrite=True,
        progress=progress,
    )
    click.echo(f"{gen.events:,} events, {gen.counts['Jet']:,} jets sampled in {gen.seconds:.1f} s")


def _bench(out: Path, shards: Path, progress: bool) -> tuple[Path, Path]:
    from flashsim.bench import BenchConfig, format_table, plot, run_benchmark, write_json

    cfg = BenchConfig.quick_config(
        object="jets", data=str(shards), cache_dir=str(out / "bench-cache")
    )
    report = run_benchmark(cfg, progress=progress)
    click.echo(format_table(report))
    bench_json, bench_plot = out / "bench-loader.json", out / "bench-loader.png"
    write_json(report, bench_json)
    plot(report, bench_plot)
    return bench_json, bench_plot


def _print_done(
    toy_path: Path,
    shards: Path,
    run_dir: Path,
    validation: ValidationReport,
    generated: Path,
    bench_json: Path | None,
    bench_plot: Path | None,
    seconds: dict[str, float],
) -> None:
    click.secho("\n== Done", bold=True)
    click.echo(f"toy events   {toy_path}")
    click.echo(f"stores       {shards}/ (inspect: flashsim info {shards}/jets.zarr)")
    click.echo(f"training run {run_dir}/ (loss curve: {run_dir / 'loss.png'})")
    click.echo(f"validation   {validation.png_path} and {validation.json_path}")
    click.echo(f"generated    {generated} (NanoAOD Events: Jet_* sampled, GenJet_*, GenPart_*)")
    if bench_plot:
        click.echo(f"benchmark    {bench_plot} and {bench_json}")
    click.echo("time         " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
