"""``flashsim generate``: a thin wrapper over :func:`flashsim.generate.generate`."""

from __future__ import annotations

from pathlib import Path

import click

from flashsim.cli.options import branch_map_options, branch_mapping, device_option, spline_option
from flashsim.layouts import layouts_of_kind
from flashsim.safe_sampling import DEFAULT_MAX_REDRAWS, count_lines

DEFAULT_RUNS = {"jets": Path("runs/jets"), "muons": Path("runs/muons")}
"""Where ``flashsim train jets|muons`` writes by default: generate's default models."""


def _default_models(jets: str | None, muons: str | None) -> tuple[str | None, str | None]:
    """Both None: every default run directory that holds a checkpoint."""
    if jets is not None or muons is not None:
        return jets, muons
    found = {
        obj: str(run)
        for obj, run in DEFAULT_RUNS.items()
        if any((run / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt"))
    }
    return found.get("jets"), found.get("muons")


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default="flashsim.root",
    help="ROOT file to write (tree 'Events'); written atomically.",
)
@click.option(
    "--jets",
    type=click.Path(exists=True),
    default=None,
    show_default=False,
    help=f"Jets model (layout {' or '.join(layouts_of_kind('jets'))}): a run directory (its "
    "best checkpoint) or a .pt file. [default: runs/jets if it holds a checkpoint]",
)
@click.option(
    "--muons",
    type=click.Path(exists=True),
    default=None,
    show_default=False,
    help=f"Muons model (layout {' or '.join(layouts_of_kind('muons'))}), likewise. "
    "[default: runs/muons if it holds a checkpoint]",
)
@click.option(
    "--seed", type=int, default=0, help="Same inputs, models, seed and --oversample: same output."
)
@device_option
@spline_option("Sample with this spline engine instead of each checkpoint's own.")
@click.option(
    "--step-events",
    type=click.IntRange(min=1),
    default=20_000,
    help="Events read, simulated and written per step (bounds the memory).",
)
@click.option(
    "--oversample",
    type=click.IntRange(min=1),
    default=1,
    help="K: write each input event K times, each copy with its own flow samples "
    "(weight 1/K per row; FlashSim_eventIndex and FlashSim_fold tell the copies apart).",
)
@click.option(
    "--max-redraws",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_REDRAWS,
    help="Redraws of an object with a non-finite or out-of-range sample before its bad "
    "values are clipped to the training range (every one counted).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes, one input file each (or Dask workers with --dask-scheduler "
    "local); the output is the same for any N.",
)
@click.option(
    "--dask-scheduler",
    default=None,
    metavar="ADDRESS",
    help="Simulate the input files on this Dask scheduler, or 'local' for a local cluster; "
    "the directory of --out must be shared with the workers.",
)
@branch_map_options
@click.option(
    "--compression",
    default="lz4",
    help="lz4 (fastest), zstd (smaller), zlib, lzma or none; optionally NAME:LEVEL.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (otherwise an error).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def generate(
    inputs: tuple[str, ...],
    out: str,
    jets: str | None,
    muons: str | None,
    seed: int,
    device: str,
    spline: str | None,
    step_events: int,
    oversample: int,
    max_redraws: int,
    workers: int,
    dask_scheduler: str | None,
    branch_map: str | None,
    branch_options: tuple[str, ...],
    compression: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Simulate reconstructed jets and muons of NanoAOD events with trained flows.

    For every GenJet (and every final-state gen muon) of each INPUT event, the
    conditioning is computed as prep computes it, one reconstructed object is sampled
    from the trained flow, and the result is written as NanoAOD branches (Jet_pt,
    Jet_btagDeepB, ..., Jet_genJetIdx; Muon_pt, ..., Muon_genPartIdx), next to the
    generator-level collections read, in an 'Events' tree. INPUT is a NanoAOD file, a
    glob, a directory or a .txt list, as for prep.

    \b
    Examples:
      flashsim generate ttbar.root                      # models of runs/jets, runs/muons
      flashsim generate 'gen/*.root' --jets runs/jets-paper/checkpoints/best.pt \\
          --out flash_jets.root --device cuda
    """
    from flashsim.generate import generate as run_generate

    jets, muons = _default_models(jets, muons)
    summary = run_generate(
        inputs,
        out,
        jets=jets,
        muons=muons,
        seed=seed,
        device=device,
        spline=spline,
        step_events=step_events,
        oversample=oversample,
        max_redraws=max_redraws,
        workers=workers,
        dask_scheduler=dask_scheduler,
        branch_map=branch_mapping(branch_map, branch_options),
        compression=compression,
        overwrite=overwrite,
        progress=not quiet,
    )
    if quiet:
        return
    objects = ", ".join(f"{n} {name}" for name, n in summary.counts.items())
    click.echo(
        f"Wrote {summary.events} events to {summary.out} ({objects}) in "
        f"{summary.seconds:.1f} s, {summary.events_per_second:,.0f} events/s."
    )
    for obj, path in summary.models.items():
        click.echo(f"  {obj} model: {path}")
    for obj, n in summary.skipped.items():
        if n:
            click.echo(f"  {n} gen-level {obj} skipped: conditioning not finite")
    for line in count_lines(summary.samples):
        click.echo(line)
