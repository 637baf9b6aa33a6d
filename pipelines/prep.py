"""``prep``: NanoAOD ROOT or FlashSim HDF5 files -> chunked zarr / webdataset / HDF5 stores.

The orchestration behind ``flashsim prep``, callable from Python:

1. expand and check every input, resolve NanoAOD branches (substitutes, user map),
   and check that no target store exists (unless ``overwrite``): before any work;
2. split the inputs into tasks (ranges of events) and run them in-process, in worker
   processes (``workers``) or on a Dask cluster (``dask_scheduler``); each task spools
   its preprocessed rows as ``.npy`` blocks in a temporary directory inside ``out_dir``;
3. draw the validation rows (seeded) and stream every block, in input order, into the
   writers of every requested format at once; stores are staged in the spool
   directory and moved to their final names only when all of them are complete.

Memory is bounded by one step of events (tasks) and one block plus one chunk per
store (merge), whatever the number of events.

Examples
--------
>>> from pipelines.prep import prep
>>> summary = prep(["../shared/data/nano_dy.root"], "shards", formats=("zarr", "hdf5"))  # doctest: +SKIP
>>> summary.objects["jets"].rows  # doctest: +SKIP
{'train': 86, 'val': 9}
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from flashsim import __version__
from flashsim.children import spawn_context
from flashsim.errors import FlashSimError, InputError, StoreError
from flashsim.layouts import LAYOUTS, OBJECTS, PAPER_LAYOUTS, layout_for
from flashsim.options import (
    FINAL_STATE,
    GEN_MUONS,
    STORE_FORMATS,
    SUM_EOOT,
    SUM_EOOT_LOG,
    SUM_EOOT_LOG1P,
    ZARR,
    GenMuons,
    StoreFormat,
    SumEOOT,
)
from flashsim.outputs import atomic_output, make_output_dir, output_errors
from flashsim.store import DEFAULT_DATA_DIR, store_path
from flashsim.transforms import (
    Dequantize,
    NegativeTo,
    Preprocessing,
    SmearSpike,
    Step,
    preprocessing_of,
)
from flashsim.valid import METADATA_KEY as VALUES_KEY
from flashsim.valid import TargetValues
from pipelines.branches import (
    BranchPlan,
    MissingBranches,
    column_of,
    format_missing,
    is_target,
    normalize_branch_map,
    required_branches,
    resolve_branches,
    source_dict,
)
from pipelines.hdf5_input import HDF5Info, inspect_hdf5
from pipelines.inputs import InputFile, expand_inputs, single_kind
from pipelines.nanoaod import inspect_nanoaod
from pipelines.profiles import profile_named
from pipelines.split import ValSplit, check_val_options, val_row_count
from pipelines.spool import make_spool, remove_spool
from pipelines.tasks import DEFAULT_STEP_EVENTS, Block, DropCount, Task, TaskResult, run_task
from pipelines.writers import StoreWriter, open_writer

if TYPE_CHECKING:
    from tqdm import tqdm


class _Ordered(Protocol):
    """What the engine needs of a task's result: its order key and its event count."""

    @property
    def file_index(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def events(self) -> int: ...


_T = TypeVar("_T")
"""A task (prep's :class:`Task`, or generate's)."""
_R = TypeVar("_R", bound=_Ordered)
"""A task's result (prep's :class:`TaskResult`, or generate's)."""
OnEvents = Callable[[int], object]
"""Called with the number of events (or rows) just read: progress (a tqdm bar's update;
what it returns is not used)."""
TaskFn = Callable[..., _R]
"""Runs one task: ``fn(task, on_step=None)`` (prep's :func:`run_task`, or generate's)."""

log = logging.getLogger("flashsim.prep")

STEPS_PER_TASK = 5
"""Most steps per task: tasks are the unit of parallel work (and of progress with workers)."""
SUBSTITUTE_DEQUANTIZE_SIGMA = 0.1
SUBSTITUTE_SMEAR_SIGMA = 0.01


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


@dataclass
class ObjectSummary:
    """Result for one object: matched objects, rows written per split, drops, stores."""

    object: str
    matched: int
    rows: dict[str, int]
    dropped: dict[str, DropCount]
    stores: list[tuple[str, Path, int]] = field(default_factory=list)  # (format, path, bytes)
    target_values: TargetValues | None = None

    @property
    def dropped_rows(self) -> int:
        return sum(d.rows for d in self.dropped.values())


@dataclass
class PrepSummary:
    """What :func:`prep` did; ``str(summary)`` is the report ``flashsim prep`` prints."""

    objects: dict[str, ObjectSummary]
    inputs: list[dict]
    substitutions: list[dict]
    source_format: str
    events: int
    seconds: float
    read_seconds: float
    write_seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.read_seconds if self.read_seconds > 0 else float("nan")

    def __str__(self) -> str:
        unit = "events" if self.source_format == "nanoaod" else "rows"
        lines = [
            f"Prepared {len(self.inputs)} input file(s), {self.events:,} {unit} in "
            f"{self.seconds:.1f} s: read and processed at {self.events_per_s:,.0f} {unit}/s "
            f"({self.read_seconds:.1f} s), stores written in {self.write_seconds:.1f} s."
        ]
        for o in self.objects.values():
            lines.append(
                f"  {o.object}: {o.matched:,} matched, {o.dropped_rows:,} dropped -> "
                f"train {o.rows['train']:,}, val {o.rows['val']:,}"
            )
            for reason, count in o.dropped.items():
                cols = ", ".join(f"{c} {n}" for c, n in count.by_column.items())
                lines.append(
                    f"    dropped {count.rows:,} rows ({reason.replace('_', ' ')}: {cols})"
                )
        for inp in self.inputs:
            if inp.get("events", inp.get("rows")) == 0:
                lines.append(f"  {inp['path']}: 0 {unit}, contributes no rows")
        for sub in self.substitutions:
            where = f", {sub['profile']} profile" if sub["profile"] else ""
            lines.append(
                f"  substitution: {sub['branch']} <- {sub['substitute']} "
                f"({len(sub['files'])} file(s){where})"
            )
        lines.append("  outputs:")
        for o in self.objects.values():
            for fmt, path, size in o.stores:
                lines.append(f"    {path}  ({fmt}, {_human_bytes(size)})")
        return "\n".join(lines)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _store_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass
class _Input:
    index: int
    file: InputFile
    n: int  # events (ROOT) or rows (HDF5)
    objects: tuple[str, ...]
    storage: str
    plan: BranchPlan | None = None
    hdf5: HDF5Info | None = None

    def to_dict(self, sha256: str | None) -> dict:
        entry = {
            "path": str(self.file.path),
            "size_bytes": self.file.size_bytes,
            "sha256": sha256,
            "storage": self.storage,
        }
        # a remote file is not downloaded to be hashed: its server's checksum or its size
        # and modification time identify it (entry["identity"] says which)
        remote = self.file.remote
        entry.update(remote.to_dict() if remote else {"identity": "sha256"})
        if self.plan is not None:
            entry["nanoaod_profile"] = self.plan.profile
        if self.hdf5 is None:
            entry["events"] = self.n
        else:
            entry.update(rows=self.n, object=self.hdf5.layout.object)
        return entry


def _inspect_root(
    files: Sequence[InputFile],
    objects: tuple[str, ...],
    gen_muons: GenMuons,
    branch_map: Mapping[str, str | float],
    strict: bool,
) -> list[_Input]:
    inputs, missing = [], []
    for i, f in enumerate(files):
        info = inspect_nanoaod(f.path)
        plan = None
        if info.n_events:  # a 0-event file is read for nothing: its branches do not matter
            try:
                plan = resolve_branches(
                    info.branches,
                    objects,
                    gen_muons=gen_muons,
                    branch_map=branch_map,
                    strict=strict,
                    path=str(f.path),
                )
            except MissingBranches as err:
                missing.append(err)
        inputs.append(_Input(i, f, info.n_events, objects, info.storage, plan=plan))
    if missing:
        raise InputError(format_missing(missing))
    return inputs


def _inspect_hdf5(files: Sequence[InputFile], objects: tuple[str, ...] | None) -> list[_Input]:
    inputs = []
    for i, f in enumerate(files):
        info = inspect_hdf5(f.path)
        obj = info.layout.object
        if objects is None or obj in objects:
            inputs.append(_Input(i, f, info.n_rows, (obj,), "hdf5", hdf5=info))
    present = {inp.objects[0] for inp in inputs}
    absent = [o for o in (objects or ()) if o not in present]
    if absent or not inputs:
        raise InputError(
            f"No HDF5 input holds {' or '.join(absent or objects or OBJECTS)} rows ("
            + ", ".join(f"{lay.n_columns} columns for {n}" for n, lay in LAYOUTS.items())
            + "). Pass the right files or change --layout."
        )
    return inputs


def _substitutions(inputs: Sequence[_Input]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for inp in inputs:
        for src in inp.plan.substitutions if inp.plan else ():
            entry = merged.setdefault(
                (src.branch, src.description), {**source_dict(src), "files": []}
            )
            entry["files"].append(str(inp.file.path))
    return list(merged.values())


def _constant_targets(substitutions: Iterable[dict]) -> set[str]:
    """Target columns filled with an integral constant in at least one input."""
    columns = (
        column_of(s["branch"])
        for s in substitutions
        if s["constant"] is not None
        and is_target(s["branch"])
        and float(s["constant"]).is_integer()
    )
    return {c for c in columns if c is not None}  # a target branch always has a column


def preprocessing_for(
    obj: str, sum_eoot: SumEOOT = SUM_EOOT_LOG1P, constant_targets: Iterable[str] = ()
) -> Preprocessing:
    """The preprocessing chain of ``obj``, from :mod:`flashsim.transforms`.

    A target column in ``constant_targets`` (filled with an integral constant by a
    substitute, e.g. the built-in ``Jet_btagCMVA = -1``) would be a delta function a
    flow cannot fit. Without a transform of its own it gets ``Dequantize(0.1)`` (the
    inverse, rounding, gives the constant back exactly); a failed-score column
    (``NegativeTo``, e.g. ``Jet_btagCSVV2 = -1`` in Run 3) gets its spike at the mapped
    value smeared by ``N(0, 0.01)`` (the inverse maps the spike back to that value).
    """
    base = preprocessing_of(obj, sum_eoot)
    own = dict(base.steps)
    wanted = set(constant_targets)
    extra: list[tuple[str, Step]] = []
    for col in base.layout.target_columns:
        if col not in wanted:
            continue
        step = own.get(col)
        if step is None:
            extra.append((col, Dequantize(SUBSTITUTE_DEQUANTIZE_SIGMA)))
        elif isinstance(step, NegativeTo):
            spike = step.value
            extra.append((col, SmearSpike(spike / 2, spike, SUBSTITUTE_SMEAR_SIGMA, spike)))
    return Preprocessing(base.layout, base.steps + tuple(extra))


def _hdf5_preprocessing(obj: str, inputs: Sequence[_Input]) -> tuple[Preprocessing, str]:
    for inp in inputs:
        meta = inp.hdf5.metadata if inp.hdf5 is not None else None  # set on HDF5 inputs
        if inp.objects == (obj,) and meta and meta.get("preprocessing") is not None:
            return Preprocessing.from_dict(
                obj, meta["preprocessing"]
            ), f"metadata of {inp.file.path}"
    pre = preprocessing_of(obj, SUM_EOOT_LOG)
    return pre, (
        "assumed: original FlashSim HDF5 rows carry no record of their preprocessing; the "
        "original chain is recorded (Pileup_sumEOOT -> log)"
    )


# ---------------------------------------------------------------------------
# Running tasks
# ---------------------------------------------------------------------------


def _tasks(
    inputs: Sequence[_Input],
    step_events: int,
    spool: Path,
    seed: int,
    gen_muons: GenMuons,
    preprocessing: Mapping[str, Preprocessing],
    workers: int,
) -> list[Task]:
    tasks = []
    # enough tasks to keep every worker busy (about 4 each), at most STEPS_PER_TASK steps each
    n_steps = sum(-(-inp.n // step_events) for inp in inputs)
    steps_per_task = max(1, min(STEPS_PER_TASK, -(-n_steps // (4 * workers))))
    span = step_events * steps_per_task
    for inp in inputs:
        for start in range(0, max(inp.n, 1), span):
            tasks.append(
                Task(
                    file_index=inp.index,
                    path=str(inp.file.path),
                    kind=inp.file.kind,
                    start=start,
                    stop=min(start + span, inp.n),
                    step_events=step_events,
                    objects=inp.objects,
                    spool_dir=str(spool),
                    seed=seed,
                    gen_muons=gen_muons,
                    plan=inp.plan,
                    preprocessing={o: preprocessing[o] for o in inp.objects},
                    hash_input=start == 0 and inp.file.remote is None,
                )
            )
    return tasks


def _run_serial(
    tasks: Sequence[_T], on_done: Callable[[_R], None], on_events: OnEvents, fn: TaskFn[_R]
) -> None:
    for task in tasks:
        on_done(fn(task, on_step=on_events))


def _run_processes(
    tasks: Sequence[_T],
    workers: int,
    on_done: Callable[[_R], None],
    on_events: OnEvents,
    fn: TaskFn[_R],
) -> None:
    # spawn: a fresh interpreter per worker; forking a parent that may hold threads
    # (tqdm, zarr's event loop) is not safe. Its workers die with prep, even by kill -9.
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=spawn_context())
    try:
        futures = [pool.submit(fn, t) for t in tasks]
        for fut in as_completed(futures):
            result = fut.result()
            on_events(result.events)
            on_done(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(
    tasks: Sequence[_T],
    address: str,
    workers: int,
    on_done: Callable[[_R], None],
    on_events: OnEvents,
    fn: TaskFn[_R],
) -> None:
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency
        raise FlashSimError(
            "--dask-scheduler needs dask.distributed: pip install 'dask[distributed]'."
        ) from None
    with contextlib.ExitStack() as stack:
        if address == "local":
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
            target = cluster
        else:
            target = address
        try:
            client = stack.enter_context(Client(target, timeout="20s"))
        except (OSError, TimeoutError) as err:
            raise FlashSimError(
                f"Cannot connect to the Dask scheduler at {address} ({err}). Start it first "
                "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or use "
                "--dask-scheduler local; the --out directory must be on a file system every "
                "worker can write to."
            ) from None
        futures = client.map(fn, tasks, pure=False)
        try:
            for fut in dask_completed(futures):
                result = fut.result()
                on_events(result.events)
                on_done(result)
        except BaseException:
            client.cancel(futures)
            raise


def execute(
    tasks: Sequence[_T],
    workers: int,
    dask_scheduler: str | None,
    on_events: OnEvents,
    fn: TaskFn[_R],
) -> list[_R]:
    """Run ``tasks`` serially, in processes or on Dask; results in input order.

    ``fn(task, on_step=None)`` runs one task (prep's :func:`run_task`; ``flashsim
    generate`` passes its own); a result has ``file_index`` and ``start``, its order key.
    ``on_events(n)`` reports progress.
    """
    results: dict[tuple[int, int], _R] = {}

    def on_done(result: _R) -> None:
        results[(result.file_index, result.start)] = result

    if dask_scheduler:
        _run_dask(tasks, dask_scheduler, workers, on_done, on_events, fn)
    elif workers > 1 and len(tasks) > 1:
        _run_processes(tasks, workers, on_done, on_events, fn)
    else:
        _run_serial(tasks, on_done, on_events, fn)
    return [results[k] for k in sorted(results)]


def _collect(
    obj: str,
    results: Sequence[TaskResult],
    blocks: Sequence[Block],
    seed: int,
    val_rows: int | None,
    val_fraction: float | None,
) -> tuple[ObjectSummary, ValSplit, str]:
    """Counts of one object over all tasks, and its seeded validation split."""
    n_rows = sum(b.rows for b in blocks)
    n_val, rule = val_row_count(n_rows, val_rows, val_fraction)
    split = ValSplit.choose(n_rows, n_val, seed, stream=layout_for(obj).stream)
    dropped: dict[str, DropCount] = {}
    for r in results:
        for reason, count in r.dropped.get(obj, {}).items():
            dropped.setdefault(reason, DropCount()).add(count)
    values = TargetValues(layout_for(obj))
    for r in results:
        if obj in r.values:
            values.merge(r.values[obj])
    summary = ObjectSummary(
        obj,
        matched=sum(r.matched.get(obj, 0) for r in results),
        rows={"train": n_rows - n_val, "val": n_val},
        dropped=dropped,
        target_values=values,
    )
    return summary, split, rule


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _check_targets(targets: Mapping[tuple[str, str], Path], overwrite: bool) -> None:
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise StoreError(
            f"Output store(s) already exist: {', '.join(existing)}; nothing was changed. "
            "Pass --overwrite to replace them, or choose another --out."
        )


def _write_stores(
    targets: Mapping[tuple[str, str], Path],
    staging: Path,
    blocks: Mapping[str, list[Block]],
    splits: Mapping[str, ValSplit],
    metadata: Mapping[str, dict],
    chunk_rows: int | None,
    bar: tqdm,
) -> None:
    """Stream every object's blocks into all its staged stores (one pass per object)."""
    with contextlib.ExitStack() as stack:
        writers: dict[str, list[StoreWriter]] = {obj: [] for obj in blocks}
        for (obj, fmt), final in targets.items():
            writer = stack.enter_context(
                open_writer(staging / final.name, fmt, layout_for(obj).n_columns, chunk_rows)
            )
            writers[obj].append(writer)
        for obj, obj_blocks in blocks.items():
            offset = 0
            for block in obj_blocks:
                rows = np.load(block.path, allow_pickle=False)
                train, val = splits[obj].take(rows, offset)
                for writer in writers[obj]:
                    writer.append("train", train)
                    writer.append("val", val)
                offset += len(rows)
                os.unlink(block.path)  # keeps the spool's disk use bounded
                bar.update(len(rows))
            for writer in writers[obj]:
                writer.metadata = dict(metadata[obj])


def _publish(targets: Mapping[tuple[str, str], Path], staging: Path, overwrite: bool) -> None:
    for final in targets.values():
        with atomic_output(final, overwrite=overwrite) as tmp:
            os.replace(staging / final.name, tmp)


# ---------------------------------------------------------------------------
# prep
# ---------------------------------------------------------------------------


def _check_options(
    objects: tuple[str, ...] | None,
    formats: tuple[str, ...],
    gen_muons: str,
    sum_eoot: str,
    workers: int,
    chunk_rows: int | None,
    step_events: int,
) -> None:
    bad = [o for o in objects or () if o not in OBJECTS]
    if bad:
        raise FlashSimError(
            f"Unknown object(s) {', '.join(bad)}; choose layouts from {', '.join(OBJECTS)}."
        )
    bad = [f for f in formats if f not in STORE_FORMATS]
    if bad or not formats:
        raise FlashSimError(
            f"Unknown store format(s) {', '.join(bad) or '(none)'}; "
            f"choose from {', '.join(STORE_FORMATS)}."
        )
    GEN_MUONS.normalize(gen_muons)
    SUM_EOOT.normalize(sum_eoot)
    if workers < 1:
        raise FlashSimError(f"--workers must be >= 1, not {workers}.")
    if chunk_rows is not None and chunk_rows < 1:
        raise FlashSimError(f"--chunk-rows must be >= 1, not {chunk_rows}.")
    if step_events < 1:
        raise FlashSimError(f"step_events must be >= 1, not {step_events}.")


def prep(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    objects: Sequence[str] | None = None,
    formats: Sequence[StoreFormat] = (ZARR,),
    seed: int = 0,
    val_rows: int | None = None,
    val_fraction: float | None = None,
    chunk_rows: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    strict: bool = False,
    branch_map: Mapping[str, str | float] | None = None,
    gen_muons: GenMuons = FINAL_STATE,
    sum_eoot: SumEOOT = SUM_EOOT_LOG1P,
    dask_scheduler: str | None = None,
    progress: bool = True,
    step_events: int = DEFAULT_STEP_EVENTS,
) -> PrepSummary:
    """Prepare stores of jets and/or muons from NanoAOD ROOT or FlashSim HDF5 files.

    Args:
        inputs: files, globs, directories or ``.txt`` lists of paths.
        out_dir: directory of the stores (``out_dir/jets.zarr``, ``muons-wds/``, ...).
        objects: ``"jets"``, ``"muons"``; default both (HDF5: whatever the files hold).
        formats: any of ``"zarr"``, ``"webdataset"``, ``"hdf5"``; all written in one pass.
        seed: seeds dequantization noise and the train/val split.
        val_rows, val_fraction: validation size (default: see :mod:`pipelines.split`).
        chunk_rows: rows per store chunk (default: ~4 MiB of rows).
        workers: worker processes (results identical for any value).
        overwrite: replace existing stores (otherwise an existing one is an error).
        strict: built-in NanoAOD substitutes become errors.
        branch_map: ``{branch or column: branch name or constant}`` (see docs/prep.md).
        gen_muons: ``"final-state"`` (|pdgId| 13, status 1) or ``"all"`` (original).
        sum_eoot: ``"log1p"`` (keeps sumEOOT == 0) or ``"log"`` (original; drops, counted).
        dask_scheduler: address of a Dask scheduler, or ``"local"``, to run tasks there.
        progress: show tqdm progress bars.
        step_events: events read per step (memory bound; part of the random stream,
            so keep it fixed to reproduce a store).

    Returns:
        A :class:`PrepSummary`; ``print(summary)`` gives the report.

    Raises:
        FlashSimError: bad options, bad input (see :mod:`pipelines.inputs`), missing
            branches, or existing stores without ``overwrite``; nothing is written then.
    """
    t0 = time.perf_counter()
    inputs, objects, formats = _as_sequences(inputs, objects, formats)
    _check_options(objects, formats, gen_muons, sum_eoot, workers, chunk_rows, step_events)
    check_val_options(val_rows, val_fraction)
    user_map = normalize_branch_map(branch_map)
    plan = _plan(inputs, Path(out_dir), objects, formats, gen_muons, sum_eoot, user_map, strict)
    _check_targets(plan.targets, overwrite)
    _warn(plan, chosen=objects is not None)
    plan.preprocessing, plan.pre_origin = _preprocessings(plan, sum_eoot)
    options = _recorded_options(gen_muons, sum_eoot, strict, user_map, step_events)

    with _spool(Path(out_dir)) as spool:
        pre = plan.preprocessing
        tasks = _tasks(plan.inputs, step_events, spool, seed, gen_muons, pre, workers)
        results, read_seconds = _read(plan, tasks, workers, dask_scheduler, progress)
        sha = {r.file_index: r.sha256 for r in results if r.sha256 is not None}
        inputs_meta = [inp.to_dict(sha.get(inp.index)) for inp in plan.inputs]
        val_options = (seed, val_rows, val_fraction)
        summaries, blocks, splits, metadata = _split(
            plan, results, inputs_meta, options, val_options
        )
        t_write = time.perf_counter()
        _write(plan.targets, spool, blocks, splits, metadata, chunk_rows, progress, overwrite)
        write_seconds = time.perf_counter() - t_write

    for (obj, fmt), final in plan.targets.items():
        summaries[obj].stores.append((fmt, final, _store_bytes(final)))
    seconds = (time.perf_counter() - t0, read_seconds, write_seconds)
    return PrepSummary(
        summaries, inputs_meta, plan.substitutions, plan.source_format,
        sum(r.events for r in results), *seconds
    )  # fmt: skip


# ---------------------------------------------------------------------------
# prep's stages
# ---------------------------------------------------------------------------


def _as_sequences(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    objects: Sequence[str] | str | None,
    formats: Sequence[StoreFormat] | StoreFormat,
) -> tuple[Iterable[str | os.PathLike], tuple[str, ...] | None, tuple[StoreFormat, ...]]:
    """One path or many; one object or many (None: the default); formats deduplicated."""
    # one path, not an iterable of characters
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    names = (objects,) if isinstance(objects, str) else objects
    # a single format is a Literal string: the isinstance check narrows it as a str
    fmts: Sequence[StoreFormat] = (formats,) if isinstance(formats, str) else formats
    return paths, tuple(names) if names else None, tuple(dict.fromkeys(fmts))


@dataclass
class _Plan:
    """What prep will read and write, settled before any work."""

    kind: str  # "root" or "hdf5"
    inputs: list[_Input]
    objects: tuple[str, ...]
    targets: dict[tuple[str, str], Path]  # (object, format) -> final store path
    substitutions: list[dict]
    preprocessing: dict[str, Preprocessing] = field(default_factory=dict)
    pre_origin: dict[str, str] = field(default_factory=dict)
    generation: dict[str, list[dict]] = field(default_factory=dict)  # object -> branches

    @property
    def source_format(self) -> str:
        return "nanoaod" if self.kind == "root" else "hdf5"


def _plan(
    inputs: Iterable[str | os.PathLike],
    out: Path,
    objects: tuple[str, ...] | None,
    formats: tuple[StoreFormat, ...],
    gen_muons: GenMuons,
    sum_eoot: SumEOOT,
    user_map: dict[str, str | float],
    strict: bool,
) -> _Plan:
    """Expand and inspect the inputs, resolve their branches and name the target stores."""
    files = expand_inputs(inputs)
    kind = single_kind(files)
    if kind == "root":
        chosen = objects or PAPER_LAYOUTS
        inputs_ = _inspect_root(files, chosen, gen_muons, user_map, strict)
    else:
        inputs_ = _inspect_hdf5(files, objects)
        chosen = tuple(o for o in OBJECTS if any(inp.objects == (o,) for inp in inputs_))
    targets: dict[tuple[str, str], Path] = {
        (o, f): store_path(out, o, f) for o in chosen for f in formats
    }
    plan = _Plan(kind, inputs_, chosen, targets, _substitutions(inputs_))
    plan.generation = {o: _generation_branches(inputs_, o, gen_muons) for o in chosen}
    return plan


def _file_names(files: Sequence[str]) -> str:
    return ", ".join(Path(f).name for f in files[:3]) + (", ..." if len(files) > 3 else "")


def _generation_entries(inp: _Input, needed: set[str]) -> list[dict]:
    """The generation branches one input reads (ROOT: its plan's; a flashsim HDF5 store:
    those its metadata recorded)."""
    if inp.hdf5 is not None:
        recorded = (inp.hdf5.metadata or {}).get("generation_branches", [])
        return [{k: v for k, v in e.items() if k != "files"} for e in recorded]
    return [
        {
            "branch": src.branch,
            "column": column_of(src.branch),
            "reads": list(src.reads),
            "derive": src.derive,
            "profile": src.profile,
            "description": src.description,
        }
        for src in (inp.plan.generation_sources if inp.plan else ())
        if src.branch in needed
    ]


def _generation_branches(inputs: Sequence[_Input], obj: str, gen_muons: GenMuons) -> list[dict]:
    """What the inputs of ``obj`` read for its generation-neutral branches (the ParT
    tagger of ``jets-run3``: RobustParT in v12, UParT in v15), one entry per branch.

    Raises:
        InputError: inputs of different generations, which would mix two networks in one
            column.
    """
    needed = set(required_branches(obj, gen_muons))
    found: dict[str, dict] = {}
    for inp in (i for i in inputs if obj in i.objects):
        for entry in _generation_entries(inp, needed):
            known = found.setdefault(entry["branch"], {**entry, "files": []})
            if (known["reads"], known["derive"]) != (entry["reads"], entry["derive"]):
                raise InputError(
                    f"The {obj} inputs are of different NanoAOD generations: "
                    f"{known['files'][0]} gives {entry['branch']} as {known['description']} "
                    f"but {inp.file.path} as {entry['description']}, two networks in one "
                    "column. Prepare the files of each generation into their own --out."
                )
            known["files"].append(str(inp.file.path))
    return list(found.values())


def _warn(plan: _Plan, chosen: bool) -> None:
    """The substitutions' warnings and, when the user chose no layout, the hint at the
    layouts that read the inputs' generation natively."""
    _warn_substitutions(plan.substitutions)
    if not chosen:
        _hint_layouts(plan)


def _hint_layouts(plan: _Plan) -> None:
    """One warning when inputs are of a generation that a layout not chosen reads natively."""
    for name, layout in LAYOUTS.items():
        native = [
            inp
            for inp in plan.inputs
            if inp.plan is not None and inp.plan.profile in layout.generations
        ]
        if native and name not in plan.objects:
            profiles = sorted({inp.plan.profile for inp in native if inp.plan is not None})
            log.warning(
                "%d input file(s) (%s) are %s NanoAOD: --layout %s keeps their own taggers "
                "(%s) instead of the paper layouts' substitutes.",
                len(native), _file_names([str(i.file.path) for i in native]),
                ", ".join(profiles), name, layout.title,
            )  # fmt: skip


def _warn_substitutions(substitutions: Iterable[dict]) -> None:
    """One warning per NanoAOD generation with substitutes, then one per substituted branch."""
    substitutions = list(substitutions)
    by_profile: dict[str, set[str]] = {}
    for sub in substitutions:
        if sub["origin"] == "builtin":
            by_profile.setdefault(sub["profile"], set()).update(sub["files"])
    for name, files in by_profile.items():
        log.warning(
            "%d input file(s) (%s) recognised as %s: its documented substitutes apply "
            "(docs/prep.md).",
            len(files), _file_names(sorted(files)), profile_named(name).title,
        )  # fmt: skip
    for sub in substitutions:
        names = _file_names(sub["files"])
        if sub["origin"] == "builtin":
            template = "%s is not in %d input file(s) (%s); using %s."
        else:
            template = "%s in %d input file(s) (%s): using %s, as mapped."
        log.warning(template, sub["branch"], len(sub["files"]), names, sub["substitute"])


def _preprocessings(
    plan: _Plan, sum_eoot: SumEOOT
) -> tuple[dict[str, Preprocessing], dict[str, str]]:
    """Each object's preprocessing and where it comes from (flashsim's, or HDF5 metadata)."""
    if plan.kind == "root":
        constants = _constant_targets(plan.substitutions)
        pre = {o: preprocessing_for(o, sum_eoot, constants) for o in plan.objects}
        return pre, dict.fromkeys(plan.objects, "flashsim.transforms")
    pairs = {o: _hdf5_preprocessing(o, plan.inputs) for o in plan.objects}
    return {o: p for o, (p, _) in pairs.items()}, {o: origin for o, (_, origin) in pairs.items()}


@contextlib.contextmanager
def _spool(out: Path) -> Iterator[Path]:
    """A temporary directory inside ``out`` (created if needed), removed afterwards; on
    failure ``out`` is removed too if this call created it and it is still empty."""
    created_out = not out.exists()
    make_output_dir(out)
    with output_errors(out):
        spool = make_spool(out)  # locked; sweeps the spools of killed preps
    try:
        yield spool
    except BaseException as err:
        remove_spool(spool)
        if created_out:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        if isinstance(err, OSError):  # a full disk while spooling, say (inputs raise InputError)
            with output_errors(out):
                raise
        raise
    remove_spool(spool)


def _read(
    plan: _Plan,
    tasks: Sequence[Task],
    workers: int,
    dask_scheduler: str | None,
    progress: bool,
) -> tuple[list[TaskResult], float]:
    """Run every task (with a progress bar of events or rows); results and seconds."""
    from tqdm.auto import tqdm

    t_read = time.perf_counter()
    with tqdm(
        total=sum(inp.n for inp in plan.inputs),
        unit="ev" if plan.kind == "root" else "row",
        unit_scale=True,
        desc="read",
        disable=not progress,
    ) as bar:
        results = execute(tasks, workers, dask_scheduler, bar.update, fn=run_task)
    return results, time.perf_counter() - t_read


def _metadata(
    plan: _Plan,
    obj: str,
    summary: ObjectSummary,
    inputs_meta: Sequence[dict],
    options: dict,
    seed: int,
    gen_muons: GenMuons,
) -> dict:
    """The metadata of ``obj``'s stores (see :func:`flashsim.store.read_metadata`)."""
    needed = set(required_branches(obj, gen_muons))
    return {
        "object": obj,
        "layout": layout_for(obj).to_dict(),
        "preprocessing": plan.preprocessing[obj].to_dict(),
        "preprocessing_origin": plan.pre_origin[obj],
        "seed": seed,
        "matched": summary.matched,
        "dropped": {
            "rows": summary.dropped_rows,
            **{reason: c.to_dict() for reason, c in summary.dropped.items()},
        },
        VALUES_KEY: summary.target_values.to_dict() if summary.target_values else {},
        "inputs": [
            m for m, inp in zip(inputs_meta, plan.inputs, strict=True) if obj in inp.objects
        ],
        "substitutions": [s for s in plan.substitutions if s["branch"] in needed],
        # the generation's own branches of generation-neutral ones (jets-run3's ParT tagger)
        **({"generation_branches": plan.generation[obj]} if plan.generation.get(obj) else {}),
        "options": options,
        "source_format": plan.source_format,
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write(
    targets: Mapping[tuple[str, str], Path],
    spool: Path,
    blocks: Mapping[str, list[Block]],
    splits: Mapping[str, ValSplit],
    metadata: Mapping[str, dict],
    chunk_rows: int | None,
    progress: bool,
    overwrite: bool,
) -> None:
    """Stage every store in ``spool``, then move them all to their final names."""
    from tqdm.auto import tqdm

    staging = spool / "stores"
    staging.mkdir()
    with tqdm(
        total=sum(b.rows for obj_blocks in blocks.values() for b in obj_blocks),
        unit="row",
        unit_scale=True,
        desc="write",
        disable=not progress,
    ) as bar:
        _write_stores(targets, staging, blocks, splits, metadata, chunk_rows, bar)
    _publish(targets, staging, overwrite)


def _split(
    plan: _Plan,
    results: Sequence[TaskResult],
    inputs_meta: Sequence[dict],
    options: dict,
    val_options: tuple[int, int | None, float | None],
) -> tuple[dict[str, ObjectSummary], dict[str, list[Block]], dict[str, ValSplit], dict[str, dict]]:
    """Per object: its summary, row blocks, seeded train/val split and store metadata."""
    seed, val_rows, val_fraction = val_options
    summaries: dict[str, ObjectSummary] = {}
    blocks: dict[str, list[Block]] = {}
    splits: dict[str, ValSplit] = {}
    metadata: dict[str, dict] = {}
    for obj in plan.objects:
        blocks[obj] = [b for r in results for b in r.blocks.get(obj, [])]
        summaries[obj], splits[obj], rule = _collect(
            obj, results, blocks[obj], seed, val_rows, val_fraction
        )
        val = {"val_rule": rule, "val_rows": splits[obj].n_val}
        metadata[obj] = _metadata(
            plan, obj, summaries[obj], inputs_meta, {**options, **val}, seed, options["gen_muons"]
        )
    return summaries, blocks, splits, metadata


def _recorded_options(
    gen_muons: GenMuons,
    sum_eoot: SumEOOT,
    strict: bool,
    user_map: dict[str, str | float],
    step_events: int,
) -> dict:
    """The options a store's metadata records (with the conventions they imply)."""
    return {
        "gen_muons": gen_muons,
        "sum_eoot": sum_eoot,
        "strict": strict,
        "branch_map": user_map,
        "step_events": step_events,
        "muon_charge": "physical: pdgId +13 (mu-) -> -1",
        "second_closest_muon": "true second-closest within dR < 0.4",
    }
