"""``flashsim validate jets|muons``: compare a trained flow with full simulation."""

from __future__ import annotations

import click

from flashsim.cli.options import (
    data_option,
    device_option,
    layout_argument,
    naming_layouts,
    positive,
    spline_option,
)
from flashsim.store import SPLITS


@naming_layouts
@click.command("validate")
@layout_argument
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
@spline_option("Sample with this spline engine instead of the checkpoint's own.")
@click.option(
    "--bins", type=int, default=50, show_default=True, callback=positive, help="Histogram bins."
)
@click.option(
    "--conditioning/--no-conditioning",
    default=True,
    show_default=True,
    help="Also check p(targets | conditioning): PIT, ΔNLL, profiles, ROC, correlations.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Flow draws per row for the PIT (rank) test; 0: no PIT.",
)
@click.option(
    "--pit-rows",
    type=int,
    default=20_000,
    show_default=True,
    callback=positive,
    help="The PIT and ΔNLL checks use the first N compared rows.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table; only the paths.")
def validate(obj: str, run: str | None, quiet: bool, **opts) -> None:
    """Compare the trained OBJECT flow (a layout: LAYOUT_LIST) with full simulation.

    Samples the flow once for every conditioning row of --split of the OBJECT store in
    --data and compares each target column with the stored FullSim values: the
    Wasserstein-1 distance in the preprocessed space over the FullSim std (W1/std), the
    same between two halves of FullSim as a statistical floor, and mean/std/quantiles
    in physical units. Then checks the conditioning (docs/validation.md): per-row
    calibration (PIT ranks among --samples draws, by class), ΔNLL with the conditioning
    permuted, response profiles and tagger ROC curves by true flavour (muons: prompt vs
    non-prompt), correlation matrices; each with a statistical floor. Writes
    validation.json, validation.png (a histogram per column), profiles.png, roc.png,
    correlations.png and pit.png to --out and prints the table, ending with one line
    per conditioning check: value, floor, ratio.

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
    figures = ", ".join(p.name for p in report.plots.values())
    click.echo(f"Wrote {report.json_path} and {figures} beside it")
