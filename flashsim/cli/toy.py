"""``flashsim toy``: write toy NanoAOD events (ttbar by default) to a ROOT file."""

from __future__ import annotations

from pathlib import Path

import click

from flashsim.cli.options import count_option, overwrite_option, quiet_option, seed_option
from flashsim.options import TOY_PROCESSES, TTBAR, ToyProcess


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


@click.command("toy")
@count_option("--events", "-n", default=100_000, help="Number of events to generate.")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("ttbar_toy.root"),
    show_default=True,
    help="Output ROOT file (tree 'Events'); written atomically.",
)
@seed_option("Random seed: same seed, same events.")
@count_option(
    "--chunk-events",
    default=50_000,
    help="Events generated and appended per step; bounds the memory (not the content).",
)
@click.option(
    "--process",
    type=TOY_PROCESSES.click_choice(),
    default=TTBAR,
    show_default=True,
    help="ttbar: t tbar with all W decays. wjets: W -> l nu + jets, tuned to the real 2015 "
    "CMS Open Data sample in shared/data (which is W+jets despite its name).",
)
@click.option(
    "--compression",
    default="lz4",
    show_default=True,
    help="lz4 (fastest), zstd (files ~30% smaller, slower), zlib, lzma or none; optionally NAME:LEVEL.",
)
@count_option(
    "--workers",
    help="Threads generating events while the file is written [default: one per CPU, max 4].",
)
@overwrite_option()
@quiet_option("No progress bar.")
def toy(
    events: int,
    out: Path,
    seed: int,
    chunk_events: int,
    process: ToyProcess,
    compression: str,
    workers: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Generate toy NanoAOD events: the default input of the demo and the benchmarks.

    Writes an 'Events' TTree with NanoAOD names and types (Jet, GenJet, GenPart, Muon,
    Pileup_*), generated in chunks (memory independent of --events) by vectorized numpy:
    ttbar topology (b jets from tops, light/charm jets from W decays, radiation), gen
    muons from W, tau and b/c decays, a detector response with resolution, tails,
    inefficiencies and fakes.

    \b
    Example:
      flashsim toy --events 1000000 --out ttbar_toy.root --seed 1
    """
    from flashsim.toy.run import generate_toy

    summary = generate_toy(
        out,
        events,
        seed=seed,
        chunk_events=chunk_events,
        process=process,
        compression=compression,
        workers=workers,
        overwrite=overwrite,
        progress=not quiet,
    )
    objects = ", ".join(f"{n} {name}" for name, n in summary["objects"].items())
    click.echo(
        f"Wrote {summary['n_events']} {process} events to {summary['path']} "
        f"({_human_bytes(summary['file_bytes'])}; {objects}) in {summary['seconds']:.1f} s, "
        f"{summary['events_per_s']:.0f} events/s."
    )
