"""Read NanoAOD ``Events`` (TTree or RNTuple) with uproot, in bounded steps.

``uproot.open(path)["Events"]`` is a TTree in classic NanoAOD and an RNTuple in the
newer format; both expose ``keys()``, ``num_entries`` and ``iterate(...)`` with flat
branch/field names such as ``Jet_pt``, which is all prep uses. Steps are fixed
ranges of ``step_events`` events counted from the start of the file, so step ``k``
is the same events however the file is split between workers.

Examples
--------
>>> info = inspect_nanoaod("../shared/data/nano_dy.root")  # doctest: +SKIP
>>> info.n_events, "Jet_pt" in info.branches  # doctest: +SKIP
(40, True)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import awkward as ak

from flashsim.errors import InputError
from pipelines.remote import is_remote, open_remote

if TYPE_CHECKING:
    import uproot  # imported where a file is opened: a slow import

EVENTS = "Events"


@dataclass(frozen=True)
class NanoAODInfo:
    """What prep needs to know about one NanoAOD file before reading it."""

    path: Path | str  # a str for a remote URL
    n_events: int
    branches: frozenset[str]
    storage: str  # "TTree" or "RNTuple"


def _open_events(path: Path | str):
    import uproot

    try:
        if is_remote(path):
            file = open_remote(str(path))
        else:
            file = uproot.open(path, object_cache=None, array_cache=None)
    except InputError:
        raise
    except Exception as err:  # uproot raises many types for damaged files
        reason = " ".join(str(err).split())  # uproot's messages span lines
        reason = reason if len(reason) < 300 else reason[:300] + "..."
        raise InputError(
            f"{path} starts like a ROOT file but uproot cannot open it "
            f"({type(err).__name__}: {reason}). The file is probably truncated or damaged; "
            "copy it again."
        ) from None
    names = {k.split(";")[0] for k in file.keys(recursive=False)}
    if EVENTS not in names:
        file.close()
        found = ", ".join(sorted(names)) or "nothing"
        raise InputError(
            f"{path} is a ROOT file without an 'Events' tree (it holds: {found}). "
            "flashsim prep reads CMS NanoAOD, whose events are in the 'Events' TTree or "
            "RNTuple; pass a NanoAOD file."
        )
    events = file[EVENTS]
    if not (hasattr(events, "iterate") and hasattr(events, "num_entries")):
        file.close()
        raise InputError(
            f"{path}: 'Events' is a {type(events).__name__}, not a TTree or RNTuple. "
            "Pass a CMS NanoAOD file."
        )
    return file, events


_cache = threading.local()
CACHED_FILES = 4
"""Open files kept per thread (least recently used closed first)."""


def _file_key(path: Path | str) -> tuple:
    if is_remote(path):  # a remote file is opened once per thread and run
        return (str(path),)
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise InputError(f"Cannot read input file {path}: {err.strerror or err}.") from None
    return (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def _cached_events(path: Path | str):
    """The ``Events`` of ``path``, kept open (per thread) for the next calls on the same file.

    Opening a NanoAOD TTree deserializes every branch header (~1500 branches: about a
    second), so inspection, the steps and the tasks of one file share one open file.
    A local file rewritten since (other mtime or size) is opened afresh.
    """
    key = _file_key(path)
    entries = _cache.__dict__.setdefault("entries", {})
    if key in entries:
        entries[key] = entries.pop(key)  # most recently used last
        return entries[key][1]
    file, events = _open_events(path)
    entries[key] = (file, events)
    while len(entries) > CACHED_FILES:
        oldest = next(iter(entries))
        entries.pop(oldest)[0].close()
    return events


def close_cached() -> None:
    """Close the files this thread keeps open."""
    entries = _cache.__dict__.setdefault("entries", {})
    while entries:
        entries.popitem()[1][0].close()


def _storage(events: uproot.TTree | uproot.RNTuple) -> str:
    return "RNTuple" if "RNTuple" in type(events).__name__ else "TTree"


def _canonical(key: str) -> str:
    """``Jet.pt`` (an RNTuple collection's subfield) -> ``Jet_pt``; flat names unchanged."""
    return key.replace(".", "_", 1) if "." in key else key


def _key_map(events: uproot.TTree | uproot.RNTuple) -> dict[str, str]:
    """Canonical branch name -> the file's own key, for flat and nested layouts alike."""
    return {_canonical(k): k for k in events.keys()}  # noqa: SIM118 (uproot object, not a dict)


def inspect_nanoaod(path: str | os.PathLike) -> NanoAODInfo:
    """Open ``path``, check it holds ``Events`` and list its branches and event count.

    Branch names are canonical (``Jet_pt``), whether the file stores flat branches
    (TTree, flat RNTuple) or collections with subfields (RNTuple ``Jet.pt``).

    Raises:
        InputError: unreadable file or no ``Events`` TTree/RNTuple.
    """
    p: Path | str = str(path) if is_remote(path) else Path(path)
    events = _cached_events(p)
    return NanoAODInfo(
        path=p,
        n_events=int(events.num_entries),
        branches=frozenset(_key_map(events)),
        storage=_storage(events),
    )


def _by_canonical(arrays: ak.Array, keys: Mapping[str, str], names: Sequence[str]) -> dict:
    out = {}
    for name in names:
        key = keys[name]
        if "." in key:
            parent, sub = key.split(".", 1)
            out[name] = arrays[parent][sub]
        else:
            out[name] = arrays[key]
    return out


def iterate_steps(
    path: str | os.PathLike,
    branches: Sequence[str],
    entry_start: int,
    entry_stop: int,
    step_events: int,
) -> Iterator[tuple[int, int, dict[str, ak.Array]]]:
    """Yield ``(step index, n_events, {branch: array})`` for events ``[entry_start, entry_stop)``.

    ``entry_start`` must be a multiple of ``step_events``; step ``k`` covers events
    ``[k * step_events, (k + 1) * step_events)`` of the file. ``branches`` are
    canonical names (see :func:`inspect_nanoaod`); arrays are jagged per object.
    """
    if entry_start % step_events:
        raise ValueError("entry_start must be a multiple of step_events")
    if entry_stop <= entry_start:
        return
    events = _cached_events(str(path) if is_remote(path) else Path(path))
    keys = _key_map(events)
    step = entry_start // step_events
    chunks = events.iterate(
        [keys[b] for b in branches],
        entry_start=entry_start,
        entry_stop=entry_stop,
        step_size=step_events,
        library="ak",
    )
    while True:
        try:
            arrays = next(chunks)
        except StopIteration:
            return
        except Exception as err:  # damaged baskets surface only when read
            first = step * step_events
            reason = " ".join(str(err).split())[:300]
            raise InputError(
                f"{path}: reading events {first}-{min(first + step_events, entry_stop) - 1} "
                f"failed ({type(err).__name__}: {reason}). "
                + (
                    "The server stopped answering or the file is damaged; try again, or copy "
                    "it locally (xrdcp) and pass its path."
                    if is_remote(path)
                    else "The file is probably damaged; copy it again, or leave it out."
                )
            ) from None
        yield step, len(arrays), _by_canonical(arrays, keys, branches)
        step += 1
