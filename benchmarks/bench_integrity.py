"""Cost of the loaders' per-chunk XXH3 check (flashsim.integrity) in the hot path.

Writes a zarr store of random jet-like rows, then times, with and without the chunk
record (i.e. with and without the checksum of every decoded chunk): a single-threaded
read of the whole split (decode only, the worst case) and epochs of the chunked loader.
Interleaved repeats; the medians are printed. Run on a quiet machine:

    python benchmarks/bench_integrity.py --chunks 64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import loaders
import loaders.sources as sources
from flashsim.integrity import chunk_record
from flashsim.layouts import JETS
from flashsim.store import read_metadata
from pipelines.writers import default_chunk_rows, write_store


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=32, help="chunks of 32768 jet rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows_n = args.chunks * default_chunk_rows(JETS.n_columns)
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(rows_n, JETS.n_columns)) * 10).round(2).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "jets.zarr"
        meta = {"object": "jets", "layout": JETS.to_dict()}
        write_store(store, "zarr", {"train": rows, "val": rows[:100]}, meta)
        record = chunk_record(read_metadata(store), "train")
        out = np.empty_like(rows)
        sum(len(x) for x, _ in loaders.open(store, kind="chunked"))  # warm-up (page cache)
        results: dict[str, dict[str, list[float]]] = {"read_all": {}, "chunked epoch": {}}
        for _ in range(args.repeats):
            for label, rec in (("no check", None), ("xxh3 check", record)):
                units = sources.ZarrUnits(store, "train", JETS, rec)
                t = _median_s(lambda u=units: u.read_all(out, threads=1), 1)
                results["read_all"].setdefault(label, []).append(t)
                sources.chunk_record = chunk_record if rec is not None else (lambda m, s: None)
                loader = loaders.open(store, kind="chunked", batch_size=2048)
                t = _median_s(lambda ld=loader: sum(len(x) for x, _ in ld), 1)
                results["chunked epoch"].setdefault(label, []).append(t)
        sources.chunk_record = chunk_record
    print(f"{rows_n:,} jet rows ({rows.nbytes / 2**20:.0f} MiB), {args.repeats} repeats, medians:")
    for what, by_label in results.items():
        base = statistics.median(by_label["no check"])
        check = statistics.median(by_label["xxh3 check"])
        print(f"  {what:<14} no check {base * 1e3:7.1f} ms   xxh3 check {check * 1e3:7.1f} ms"
              f"   (+{100 * (check / base - 1):.0f} %)")  # fmt: skip


if __name__ == "__main__":
    main()
