"""``generate_toy``: generate toy events and write them to a ROOT file, with progress."""

from __future__ import annotations

import os
import time
from contextlib import closing
from pathlib import Path

from tqdm.auto import tqdm

from flashsim.errors import FlashSimError
from flashsim.events import COLLECTIONS
from flashsim.options import TTBAR, ToyProcess
from flashsim.rootfile import DEFAULT_COMPRESSION, check_output, parse_compression, write_events
from flashsim.toy.generator import get_process, iter_toy_chunks


def generate_toy(
    path: str | os.PathLike,
    n_events: int,
    *,
    seed: int = 0,
    chunk_events: int = 50_000,
    process: ToyProcess = TTBAR,
    compression: str = DEFAULT_COMPRESSION,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write ``n_events`` toy events to the ROOT file ``path`` (tree ``Events``).

    Args:
        path: output ``.root`` file; written atomically (temporary name, then rename).
        n_events: number of events (>= 1).
        seed: the events depend only on ``(seed, process)``: not on ``chunk_events``
            nor ``workers``, and the first k events of a longer run are the same.
        chunk_events: events appended to the file per step; bounds the memory
            (about 0.5 GB at the default for ttbar, whatever ``n_events``).
        process: ``"ttbar"`` (default) or ``"wjets"`` (mimics the real 2015 sample).
        compression: ``"lz4"`` (default, fastest), ``"zstd"`` (~30 % smaller, slower),
            ``"zlib"``, ``"lzma"``, ``"none"``, optionally with a level (``"zstd:3"``).
        workers: threads generating events while the file is written (default: one per
            CPU, at most 4).
        overwrite: replace an existing ``path``; otherwise a :class:`StoreError`.
        progress: show a progress bar with events/s.

    Returns:
        A summary dict: path, process, seed, n_events, chunk_events, compression,
        seconds, events_per_s, file_bytes and ``objects`` (count per collection).
    """
    if int(n_events) < 1:
        raise FlashSimError(f"Ask for at least one toy event (got n_events={n_events}).")
    if int(chunk_events) < 1:
        raise FlashSimError(f"chunk_events must be >= 1 (got {chunk_events}).")
    if workers is not None and int(workers) < 1:
        raise FlashSimError(f"workers must be >= 1 (got {workers}).")
    get_process(process)
    parse_compression(compression)
    path = Path(path)
    check_output(path, overwrite)  # fail before any work (write_events checks again)
    start = time.perf_counter()
    chunks = iter_toy_chunks(
        int(n_events), seed=seed, chunk_events=int(chunk_events), process=process, workers=workers
    )
    n_chunks = -(-int(n_events) // int(chunk_events))
    # closing(): on an error or Ctrl-C the generator threads stop at once, not at exit
    with (
        closing(chunks),
        tqdm(
            total=int(n_events),
            unit="ev",
            unit_scale=True,
            disable=not progress,
            desc=f"toy {process}",
        ) as bar,
    ):
        totals = write_events(
            path,
            chunks,
            overwrite=overwrite,
            compression=compression,
            expected_chunks=n_chunks,
            on_chunk=bar.update,
        )
    seconds = time.perf_counter() - start
    return {
        "path": str(path),
        "process": process,
        "seed": seed,
        "n_events": totals["events"],
        "chunk_events": int(chunk_events),
        "compression": compression,
        "seconds": round(seconds, 3),
        "events_per_s": round(totals["events"] / seconds, 1),
        "file_bytes": path.stat().st_size,
        "objects": {name: totals.get(name, 0) for name in COLLECTIONS},
    }
