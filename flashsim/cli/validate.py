"""``flashsim validate jets|muons``: compare a trained flow with full simulation."""

from __future__ import annotations

import click

from flashsim.cli.options import data_option, device_option, positive
from flashsim.layouts import OBJECTS
from flashsim.store import SPLITS


@click.command("validate")
@click.argument("obj", metavar="OBJECT", type=click.Choice(OBJECTS))
@click.option(
    "--run",
    type=click.Path(),
    default=None,
    help="Run directory of `flashsim train` (uses checkpoints/best.pt) or a checkpoint file.  "
    "[default: runs/OBJECT]",
)
@data_option
@click.option(
    "--split", type=click.Choice(SPLITS), default="val", show_default=True, help="Rows to compare."
)
@click.option(
    "--max-rows",
    type=int,
    default=100_000,
    show_default=True,
    callback=positive,
    help="Compare the first N rows of the split (store order).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Output directory.  [default: RUN/validation]",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the samples and of the FullSim halves.",
)
@device_option
@click.option(
    "--bins", type=int, default=50, show_default=True, callback=positive, help="Histogram bins."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table; only the paths.")
def validate(obj: str, run: str | None, quiet: bool, **opts) -> None:
    """Compare the trained OBJECT flow (jets or muons) with full simulation.

    Samples the flow once for every conditioning row of --split of the OBJECT store in
    --data and compares each target column with the stored FullSim values: the
    Wasserstein-1 distance in the preprocessed space over the FullSim std (W1/std), the
    same between two halves of FullSim as a statistical floor, and mean/std/quantiles
    in physical units. Writes validation.json and validation.png (a histogram per
    column) to --out and prints the table.

    \b
    Examples:
      flashsim validate jets                       # runs/jets vs shards/ -> runs/jets/validation/
      flashsim validate muons --run runs/muons-paper --device cuda --max-rows 500000
      flashsim validate jets --run runs/jets/checkpoints/epoch-0005.pt --split train
    """
    from flashsim.validate import validate as run_validation

    report = run_validation(
        run if run is not None else f"runs/{obj}", object=obj, progress=not quiet, **opts
    )
    if not quiet:
        click.echo(report.table())
    click.echo(f"Wrote {report.json_path} and {report.png_path}")
