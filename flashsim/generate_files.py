"""Generation over many input files at once: one task per input file, run in worker
processes or on Dask with prep's engine (:func:`pipelines.prep.execute`), merged into one
output identical to a serial run.

Each task loads the models, simulates its file exactly as the serial loop does (the same
steps, the same noise streams keyed by the file's index, ``FlashSim_eventIndex``
continuing from the events of the files before it) and writes an uncompressed part file
in a spool directory next to the output. The parts are then copied, in input order and in
steps, into the output, so every branch of the merged file holds the same bytes as the
serial run's.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import awkward as ak
import numpy as np
import uproot

from flashsim.events import COLLECTIONS, Collection, EventChunk
from flashsim.rootfile import TREE_NAME, write_events

if TYPE_CHECKING:
    from flashsim.generate import _Input, _Run, _Tally
    from flashsim.options import GenMuons

_PART_COMPRESSION = "none"  # parts are read once, right away: no time spent compressing


@dataclass(frozen=True)
class FileTask:
    """Simulate input ``inp`` (a planned input of :mod:`flashsim.generate`) into ``part``."""

    file_index: int
    inp: _Input
    first_event: int
    models: Mapping[str, str]
    device: str
    gen_muons: GenMuons
    run: _Run
    part: str
    splines: Mapping[str, str] | None = None  # spline engine per object (None: its own)
    start: int = 0  # the engine's order key is (file_index, start)


@dataclass
class FileResult:
    """One task's part file, its input events and its tally (skipped, bad samples)."""

    file_index: int
    start: int
    events: int
    part: str
    tally: _Tally


def simulate_file(task: FileTask, on_step: Callable[[int], None] | None = None) -> FileResult:
    """Run one :class:`FileTask` (in any process): load the models, write the part."""
    from flashsim.generate import _chunks, _load_models, _Tally

    splines = task.splines or {}
    models = {
        obj: _load_models({obj: path}, task.device, splines.get(obj))[obj]
        for obj, path in task.models.items()
    }
    tally = _Tally.of(models)
    k = task.run.oversample
    chunks = _chunks([task.inp], models, task.gen_muons, task.run, tally, task.first_event)
    write_events(
        task.part,
        chunks,
        overwrite=True,
        compression=_PART_COMPRESSION,
        expected_chunks=-(-task.inp.n_events // task.run.step_events),
        on_chunk=None if on_step is None else (lambda n: on_step(n // k)),
    )
    return FileResult(task.file_index, 0, task.inp.n_events, task.part, tally)


def _chunk_of(arrays: ak.Array) -> EventChunk:
    """An :class:`EventChunk` from the branches of a part read back with uproot, with the
    part's branch order (the output's branches come in the serial run's order)."""
    counters = {f"n{name}": name for name in COLLECTIONS if f"n{name}" in arrays.fields}
    collections, taken = {}, set(counters)
    for counter, name in sorted(counters.items(), key=lambda c: arrays.fields.index(c[0])):
        branches = [b for b in arrays.fields if b.startswith(f"{name}_")]
        counts = ak.to_numpy(arrays[counter]).astype(np.int64)
        values = {b.removeprefix(f"{name}_"): ak.to_numpy(ak.flatten(arrays[b])) for b in branches}
        collections[name] = Collection(counts, values)
        taken.update(branches)
    scalars = {b: ak.to_numpy(arrays[b]) for b in arrays.fields if b not in taken}
    return EventChunk(scalars, collections)


def part_chunks(parts: list[str], step_rows: int) -> Iterator[EventChunk]:
    """The events of ``parts``, in order, ``step_rows`` at a time."""
    for part in parts:
        with uproot.open(part) as f:
            for arrays in f[TREE_NAME].iterate(step_size=step_rows, library="ak"):
                yield _chunk_of(arrays)


@contextlib.contextmanager
def spool_next_to(out: Path) -> Iterator[Path]:
    """A temporary directory next to ``out`` (on the same file system), removed after."""
    spool = Path(tempfile.mkdtemp(prefix=".flashsim-generate-", dir=out.parent))
    try:
        yield spool
    finally:
        shutil.rmtree(spool, ignore_errors=True)
