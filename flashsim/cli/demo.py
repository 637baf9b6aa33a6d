"""``flashsim demo``: the whole workflow on embedded toy data."""

from __future__ import annotations

from pathlib import Path

import click

from flashsim.demo import DEFAULT_DEMO_DIR


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DEMO_DIR,
    show_default=True,
    help="Directory for everything the demo writes.",
)
@click.option(
    "--events",
    type=click.IntRange(min=1000),
    default=20_000,
    show_default=True,
    help="Toy ttbar events to generate.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Training epochs of the small preset.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-bench", is_flag=True, help="Skip the quick loader benchmark.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out: Path, events: int, epochs: int, seed: int, no_bench: bool, quiet: bool) -> None:
    """Run toy -> prep -> train -> validate -> generate -> bench-loader; nothing to download.

    \b
    Writes, under --out (default demo/):
      ttbar_toy.root       toy NanoAOD events (flashsim toy)
      shards/              jets and muons stores (flashsim prep)
      runs/jets/           a small-preset training run, with loss.png (flashsim train)
      runs/jets/validation/  FlashSim vs FullSim per target column (flashsim validate)
      flashsim.root        the toy events' jets sampled by the flow (flashsim generate)
      bench-loader.png     loaders vs the original per-row datasets (flashsim bench-loader --quick)
    """
    from flashsim.demo import run_demo

    run_demo(out, events=events, epochs=epochs, seed=seed, bench=not no_bench, progress=not quiet)
