"""One unit of prep work: a range of events of one file -> spooled row blocks on disk.

A :class:`Task` covers events ``[start, stop)`` of one input (rows for HDF5). It reads
them in fixed steps, extracts features, drops and counts non-finite rows, applies the
preprocessing and saves each step's rows as ``.npy`` blocks in the spool directory. It
is a plain picklable function of its arguments, so the same task runs in-process, in a
``ProcessPoolExecutor`` or on a Dask worker, with identical results: the random stream
of a step depends only on ``(seed, file index, step index, object)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashsim.layouts import Layout, layout_for
from flashsim.options import FINAL_STATE, GenMuons
from flashsim.transforms import Preprocessing
from flashsim.valid import TargetValues
from pipelines.branches import BranchPlan, materialize
from pipelines.features import FEATURES, GEN_INDEX_PAST_END, gen_index_past_end
from pipelines.hdf5_input import inspect_hdf5, iterate_row_steps
from pipelines.inputs import sha256_of
from pipelines.nanoaod import iterate_steps

DEFAULT_STEP_EVENTS = 20_000
"""Events read per step: bounds memory (a step's arrays and rows) whatever the file size."""

_PREPROCESSING_STREAM = 0  # keeps preprocessing's random stream apart from the split's (tag 1)

# drop reasons, as written in the store metadata
BEFORE = "non_finite_before_preprocessing"
AFTER = "non_finite_after_preprocessing"
INPUT = "non_finite_input"


@dataclass
class DropCount:
    """Rows dropped for one reason: total rows, and per column the rows whose value was bad.

    A row bad in two columns counts once in ``rows`` and once in each column.
    """

    rows: int = 0
    by_column: dict[str, int] = field(default_factory=dict)

    def add(self, other: DropCount) -> None:
        self.rows += other.rows
        for col, n in other.by_column.items():
            self.by_column[col] = self.by_column.get(col, 0) + n

    def to_dict(self) -> dict:
        return {"rows": self.rows, "by_column": dict(self.by_column)}


def drop_non_finite(rows: np.ndarray, layout: Layout) -> tuple[np.ndarray, DropCount]:
    """Remove rows holding NaN or ±inf; count them per column."""
    bad_cells = ~np.isfinite(rows)
    bad_rows = bad_cells.any(axis=1)
    if not bad_rows.any():
        return rows, DropCount()
    per_column = np.count_nonzero(bad_cells, axis=0)
    counts = DropCount(
        int(bad_rows.sum()),
        {layout.columns[j]: int(n) for j, n in enumerate(per_column) if n},
    )
    return rows[~bad_rows], counts


def step_rng(seed: int, file_index: int, step: int, obj: str) -> np.random.Generator:
    """The random generator of one step of one file for one object."""
    return np.random.default_rng(
        [seed, _PREPROCESSING_STREAM, file_index, step, layout_for(obj).stream]
    )


@dataclass(frozen=True)
class Task:
    """Events (or HDF5 rows) ``[start, stop)`` of input ``file_index``.

    ``kind`` is ``"root"`` or ``"hdf5"``. For ROOT, ``plan`` says how to read the
    branches and ``preprocessing`` maps object -> chain to apply; HDF5 rows are taken
    as they are. ``hash_input``: also compute the file's SHA-256 (done by the task
    that starts at 0, so large inputs are hashed in parallel).
    """

    file_index: int
    path: str
    kind: str
    start: int
    stop: int
    step_events: int
    objects: tuple[str, ...]
    spool_dir: str
    seed: int = 0
    gen_muons: GenMuons = FINAL_STATE
    plan: BranchPlan | None = None
    preprocessing: Mapping[str, Preprocessing] = field(default_factory=dict)
    hash_input: bool = False


@dataclass(frozen=True)
class Block:
    """A spooled ``.npy`` block of preprocessed float32 rows."""

    path: str
    rows: int


@dataclass
class TaskResult:
    """What one task produced: blocks per object (in step order) and its counts."""

    file_index: int
    start: int
    events: int
    blocks: dict[str, list[Block]]
    matched: dict[str, int]
    dropped: dict[str, dict[str, DropCount]]
    sha256: str | None = None
    values: dict[str, TargetValues] = field(default_factory=dict)
    """Per object: the physical target values of the rows kept (:mod:`flashsim.valid`)."""


def _spool(task: Task, obj: str, step: int, rows: np.ndarray) -> Block | None:
    if not len(rows):
        return None
    directory = Path(task.spool_dir) / obj
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{task.file_index:06d}-{step:09d}.npy"
    np.save(path, rows, allow_pickle=False)
    return Block(str(path), len(rows))


def _empty_result(task: Task) -> TaskResult:
    return TaskResult(
        task.file_index,
        task.start,
        0,
        {o: [] for o in task.objects},
        dict.fromkeys(task.objects, 0),
        {o: {} for o in task.objects},
    )


def _record(result: TaskResult, obj: str, reason: str, counts: DropCount) -> None:
    if counts.rows:
        result.dropped[obj].setdefault(reason, DropCount()).add(counts)


def _record_values(result: TaskResult, obj: str, physical: np.ndarray, kept: np.ndarray) -> None:
    """Add the physical target values of the ``kept`` rows to the task's record."""
    layout = layout_for(obj)
    values = TargetValues.of_rows(layout, physical[kept])
    result.values.setdefault(obj, TargetValues(layout)).merge(values)


def run_task(task: Task, on_step: Callable[[int], object] | None = None) -> TaskResult:
    """Process one task; ``on_step(n_events)`` is called after each step (progress)."""
    result = _empty_result(task)
    if task.hash_input:
        result.sha256 = sha256_of(task.path)
    if task.stop <= task.start:  # an empty input: hashed, nothing to read
        return result
    if task.kind == "root":
        plan = task.plan
        if plan is None:
            raise ValueError(f"ROOT task {task.path} has no BranchPlan")  # prep always sets one
        steps = iterate_steps(task.path, plan.reads, task.start, task.stop, task.step_events)
        for step, n_events, arrays in steps:
            events = materialize(arrays, plan, n_events)
            for obj in task.objects:
                layout = layout_for(obj)
                raw = FEATURES[obj](events, task.gen_muons)
                past_end = gen_index_past_end(events, obj)
                # Counted as matched, then dropped: matched - dropped = rows written.
                result.matched[obj] += len(raw) + sum(past_end.values())
                _record(
                    result, obj, GEN_INDEX_PAST_END, DropCount(sum(past_end.values()), past_end)
                )
                raw, before = drop_non_finite(raw, layout)
                rng = step_rng(task.seed, task.file_index, step, obj)
                rows = task.preprocessing[obj].forward(raw, rng)
                _record_values(result, obj, raw, np.isfinite(rows).all(axis=1))
                rows, after = drop_non_finite(rows, layout)
                _record(result, obj, BEFORE, before)
                _record(result, obj, AFTER, after)
                block = _spool(task, obj, step, rows)
                if block:
                    result.blocks[obj].append(block)
            result.events += n_events
            if on_step:
                on_step(n_events)
    else:
        (obj,) = task.objects
        info = inspect_hdf5(task.path)
        for step, rows in iterate_row_steps(info, task.start, task.stop, task.step_events):
            result.matched[obj] += len(rows)
            rows, bad = drop_non_finite(rows, info.layout)
            _record(result, obj, INPUT, bad)
            if obj in task.preprocessing:  # HDF5 rows are preprocessed: invert for the values
                physical = task.preprocessing[obj].inverse(rows)
                _record_values(result, obj, physical, np.isfinite(physical).all(axis=1))
            block = _spool(task, obj, step, rows)
            if block:
                result.blocks[obj].append(block)
            result.events += len(rows)
            if on_step:
                on_step(len(rows))
    return result
