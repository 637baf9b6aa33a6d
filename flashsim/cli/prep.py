"""``flashsim prep`` and ``flashsim info``: thin wrappers over :func:`pipelines.prep.prep`
and :func:`pipelines.store_info.describe_store`."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

import click

from flashsim.cli.options import (
    branch_map_options,
    branch_mapping,
    count_option,
    overwrite_option,
    quiet_option,
)
from flashsim.layouts import describe_layouts
from flashsim.options import (
    FINAL_STATE,
    GEN_MUONS,
    STORE_FORMATS,
    SUM_EOOT,
    SUM_EOOT_LOG1P,
    ZARR,
    GenMuons,
    SumEOOT,
)
from flashsim.store import DEFAULT_DATA_DIR


class _ClickHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.secho(f"Warning: {record.getMessage()}", fg="yellow", err=True)


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    logger = logging.getLogger("flashsim.prep")
    handler = _ClickHandler(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_DATA_DIR),
    help="Directory of the stores (train and bench-loader read shards/ by default).",
)
@click.option(
    "--layout",
    "layouts",
    multiple=True,
    help="Layout to prepare, repeatable or comma-separated: "
    + describe_layouts()
    + ". [default: jets,muons; HDF5 inputs: the layouts the files hold]",
)
@click.option(
    "--objects",
    default=None,
    show_default=False,
    help="The same as --layout (comma-separated), its earlier name.",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    default=(ZARR,),
    help=f"Store format, repeatable or comma-separated: {', '.join(STORE_FORMATS)}. All are "
    "written in one pass.",
)
@click.option("--seed", default=0, type=int, help="Seeds the dequantization noise and the split.")
@count_option(
    "--val-rows",
    minimum=0,
    help="Validation rows per object. [default: 100000 for objects with >= 1M rows, else 10 %]",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Validation fraction per object (instead of --val-rows).",
)
@count_option(
    "--chunk-rows", help="Rows per store chunk. [default: ~4 MiB of rows: 32768 jets, 16384 muons]"
)
@count_option(
    "--workers",
    default=1,
    help="Worker processes (or Dask workers with --dask-scheduler local); same rows for any N.",
)
@overwrite_option("Replace existing stores.")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail instead of using built-in substitutes for missing branches.",
)
@click.option(
    "--gen-muons",
    type=GEN_MUONS.click_choice(),
    default=FINAL_STATE,
    help="Gen muons near jets: final-state (|pdgId| 13, status 1) or all |pdgId| 13 (original).",
)
@click.option(
    "--sum-eoot",
    type=SUM_EOOT.click_choice(),
    default=SUM_EOOT_LOG1P,
    help="Pileup_sumEOOT transform; log reproduces the original (rows with 0 dropped, counted).",
)
@branch_map_options
@click.option(
    "--dask-scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run the per-file tasks on a Dask cluster (tcp://host:8786), or 'local'. "
    "--out must be on a file system the workers share.",
)
@quiet_option("No progress bars and no summary.")
def prep(
    inputs: tuple[str, ...],
    out_dir: str,
    layouts: tuple[str, ...],
    objects: str | None,
    formats: tuple[str, ...],
    seed: int,
    val_rows: int | None,
    val_fraction: float | None,
    chunk_rows: int | None,
    workers: int,
    overwrite: bool,
    strict: bool,
    gen_muons: GenMuons,
    sum_eoot: SumEOOT,
    branch_map: str | None,
    branch_options: tuple[str, ...],
    dask_scheduler: str | None,
    quiet: bool,
) -> None:
    """Turn NanoAOD ROOT (or FlashSim HDF5) files into chunked training stores.

    INPUT is a file, a glob, a directory, a root://HOST//path or https:// URL or a .txt list of
    paths and URLs. For each layout (--layout; the paper's jets, 31 columns, and muons, 52,
    by default) prep matches reconstructed to generator-level
    objects, computes the features, applies the preprocessing, drops rows with NaN/inf
    (counted), splits train/val (seeded) and writes OUT/jets.zarr, OUT/muons.zarr (or
    -wds/, .h5; OUT/jets-run3.zarr, ...) with their metadata. Branches the paper layouts
    need but the file's NanoAOD generation (Run 2, Run 3 v12, v15) lacks get that
    generation's documented substitutes (a warning lists them; --strict forbids them);
    --layout jets-run3 keeps Run 3's own taggers instead. See docs/prep.md.

    \b
    Examples:
      flashsim prep ttbar.root --out shards/
      flashsim prep nano_v12.root --layout jets-run3 --out shards/
      flashsim prep 'data/*.root' --format zarr --format hdf5 --workers 4
      flashsim prep files.txt --branch Jet_puId=-1 --branch-map newer_nano.json
      flashsim prep big/ --dask-scheduler tcp://scheduler:8786
    """
    from pipelines.prep import prep as run_prep

    mapping = branch_mapping(branch_map, branch_options)
    with _warnings_to_stderr():
        summary = run_prep(
            inputs,
            out_dir,
            objects=_split_commas((*layouts, *((objects,) if objects else ()))) or None,
            formats=[STORE_FORMATS.normalize(f) for f in _split_commas(formats)],
            seed=seed,
            val_rows=val_rows,
            val_fraction=val_fraction,
            chunk_rows=chunk_rows,
            workers=workers,
            overwrite=overwrite,
            strict=strict,
            branch_map=mapping,
            gen_muons=gen_muons,
            sum_eoot=sum_eoot,
            dask_scheduler=dask_scheduler,
            progress=not quiet,
        )
    if not quiet:
        click.echo(str(summary))


@click.command()
@click.argument("store", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata as JSON.")
@click.option(
    "--no-stats", is_flag=True, help="Skip the per-column min/mean/max/std (a full read)."
)
@click.option(
    "--verify",
    is_flag=True,
    help="Check every chunk against its recorded row count and checksum and list the "
    "damaged ones. Exit 0: whole; 1: damaged; 3: cannot verify (store older than format 2).",
)
def info(store: str, as_json: bool, no_stats: bool, verify: bool) -> None:
    """Show a store's metadata and per-column min/mean/max/std.

    STORE is a store written by flashsim prep (shards/jets.zarr, shards/muons-wds,
    shards/jets.h5). Statistics are computed chunk by chunk over train and val, each
    chunk checked against its recorded checksum.

    \b
    Examples:
      flashsim info shards/jets.zarr
      flashsim info --verify shards/jets-wds
    """
    from flashsim.store import read_metadata
    from pipelines.store_info import describe_store

    if verify:
        from pipelines.verify import verify_store

        report = verify_store(store)
        click.echo(str(report), err=not report.ok)
        if not report.ok:
            sys.exit(1 if report.damaged else 3)
    elif as_json:
        click.echo(json.dumps(read_metadata(store), indent=1))
    else:
        click.echo(describe_store(store, stats=not no_stats))
