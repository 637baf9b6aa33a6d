"""``flashsim demo``: the whole workflow on embedded toy data."""

from __future__ import annotations

from pathlib import Path

import click

from flashsim.cli.options import count_option, quiet_option, seed_option
from flashsim.demo import DEFAULT_DEMO_DIR


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DEMO_DIR,
    show_default=True,
    help="Directory for everything the demo writes.",
)
@count_option("--events", minimum=1000, default=20_000, help="Toy ttbar events to generate.")
@count_option("--epochs", default=3, help="Training epochs of the small preset.")
@seed_option()
@click.option("--no-bench", is_flag=True, help="Skip the quick loader benchmark.")
@quiet_option()
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
