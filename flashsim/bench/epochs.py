"""Load-only throughput of every loader kind on the same rows (``benchmarks/loaders.md``).

Writes (once) jets and muons stores of ``--rows`` random float32 rows in every format
(zarr, webdataset, HDF5; the muons rows also as several HDF5 files, as the original
muons training read them), then measures, each kind in a fresh process:

* rows/s into ready ``(x, y)`` tensors on the device (batch 2048, shuffled) over a
  whole epoch, start-up included, best of ``--epochs`` epochs; the original per-row
  kinds over ``--original-batches`` batches; and the CPU seconds (all threads and
  worker processes) per million rows, which other work on the machine barely changes;
* setup time (opening; for ``resident``, loading the split);
* peak RSS of the process, and its growth over the process's RSS before opening
  (:func:`flashsim.bench.resources.process_peak_rss_bytes`).

The scenario script ``benchmarks/bench_loaders.py`` calls :func:`main`::

    python benchmarks/bench_loaders.py --rows 2000000 --data benchmarks/out/data

:func:`measure` is the reusable part: it times any loader kind over any store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import psutil

import loaders
from flashsim.bench.resources import process_cpu_seconds, process_peak_rss_bytes
from flashsim.layouts import layout_for
from flashsim.options import HDF5, STORE_FORMATS
from flashsim.outputs import atomic_output
from flashsim.store import LOADER_KINDS, META_KEY, store_path

ORIGINAL_FILES = 4
"""The muons rows are also written as this many HDF5 files for ``original-muons``."""


def measure(
    data: str | list[str],
    kind: str,
    *,
    object: str | None = None,
    batch_size: int = 2048,
    epochs: int = 2,
    max_batches: int | None = None,
    device: str = "cpu",
    **open_kwargs,
) -> dict:
    """Time one loader kind: rows/s into ready tensors, setup time and memory.

    Args:
        data, kind, object, batch_size, device, open_kwargs: as :func:`loaders.open`.
        epochs: timed passes; the best one is reported.
        max_batches: stop each pass after this many batches (for the slow originals).

    Returns:
        ``{"kind", "rows_per_s", "rows_timed", "seconds", "cpu_s_per_million_rows",
        "setup_s", "batches_per_epoch", "peak_rss_bytes", "rss_growth_bytes",
        "load_average_1min"}``; rows/s over a whole pass, start-up (threads, worker
        processes, first window) included; CPU time (all threads and reaped worker
        processes) over the same span is the cost independent of other load.
    """
    import torch

    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    ld = loaders.open(
        data, kind=kind, object=object, batch_size=batch_size, device=device, **open_kwargs
    )
    setup = time.perf_counter() - t0
    best: tuple[int, float, float] | None = None  # (rows, seconds, cpu seconds)
    for e in range(epochs):
        ld.set_epoch(e)
        rows = 0
        cpu0, start = process_cpu_seconds(), time.perf_counter()
        batches = iter(ld)
        for i, (x, _) in enumerate(batches):
            rows += len(x)
            if max_batches is not None and i + 1 >= max_batches:
                break
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # "ready" means on the device
        seconds = time.perf_counter() - start
        batches.close()  # stop prefetching / DataLoader workers (not timed)
        cpu = process_cpu_seconds() - cpu0  # includes the reaped DataLoader workers
        if best is None or rows / max(seconds, 1e-9) > best[0] / max(best[1], 1e-9):
            best = (rows, seconds, cpu)
    if best is None:
        raise ValueError(f"measure needs epochs >= 1, got {epochs}")
    rows, seconds, cpu = best
    return {
        "kind": ld.kind,
        "rows_per_s": rows / max(seconds, 1e-9),
        "rows_timed": rows,
        "seconds": seconds,
        "cpu_s_per_million_rows": cpu / max(rows, 1) * 1e6,
        "setup_s": setup,
        "batches_per_epoch": len(ld),
        "peak_rss_bytes": process_peak_rss_bytes(),
        "rss_growth_bytes": process_peak_rss_bytes() - rss_before,
        "load_average_1min": os.getloadavg()[0],  # other work on the machine meanwhile
    }


def _measure_in_child(
    conn: Connection, data: str | list[str], kind: str, torch_threads: int | None, kwargs: dict
) -> None:
    try:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        conn.send(("ok", measure(data, kind, **kwargs)))
    except BaseException as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def measure_isolated(
    data: str | list[str], kind: str, torch_threads: int | None = None, **kwargs
) -> dict:
    """:func:`measure` in a fresh process (so peak memory is this kind's alone), with
    ``torch_threads`` intra-op threads if given."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_in_child, args=(child, data, kind, torch_threads, kwargs))
    proc.start()
    child.close()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"measuring {kind} failed: {value}")
    return value


def make_stores(out: Path, n_rows: int, objects: tuple[str, ...], seed: int = 0) -> None:
    """Random float32 stores of ``n_rows`` train rows (+1 % val) per object: zarr,
    webdataset and HDF5 through the project's writers, plus (muons) the same rows as
    ``ORIGINAL_FILES`` HDF5 files in the original training files' layout."""
    from pipelines.writers import write_store

    for obj in objects:
        layout = layout_for(obj)
        targets = [store_path(out, obj, f) for f in STORE_FORMATS]
        parts = original_files(out, obj)
        if all(p.exists() for p in [*targets, *parts]):
            continue
        rng = np.random.default_rng(seed)
        train = rng.random((n_rows, layout.n_columns), dtype=np.float32)
        val = rng.random((max(1, n_rows // 100), layout.n_columns), dtype=np.float32)
        meta = {
            "object": obj,
            "layout": layout.to_dict(),
            "seed": seed,
            "note": "benchmark: random rows",
        }
        for fmt, path in zip(STORE_FORMATS, targets, strict=True):
            if not path.exists():
                print(f"writing {path}", flush=True)
                write_store(path, fmt, {"train": train, "val": val}, meta)
        bounds = np.linspace(0, n_rows, ORIGINAL_FILES + 1).astype(int)
        for k, path in enumerate(parts):
            if not path.exists():
                write_original_file(path, train[bounds[k] : bounds[k + 1]], val, meta)


def original_files(out: Path, obj: str) -> list[Path]:
    """The muon files in the original layout (``{obj}-original-{k}.h5``); the jets
    baseline loads its rows into memory, so the prep HDF5 store serves it as is."""
    if obj != "muons":
        return []
    return [out / f"{obj}-original-{k}.h5" for k in range(ORIGINAL_FILES)]


def write_original_file(path: Path, train: np.ndarray, val: np.ndarray, meta: dict) -> None:
    """One HDF5 file as the original preprocessing wrote it: ``create_dataset("data",
    data=rows, dtype="f4")``, i.e. a contiguous (unchunked) dataset, plus our metadata.

    Per-row reads cost far less there than in a chunked dataset whose chunks exceed
    h5py's 1 MiB chunk cache (the streaming writer's muon chunks are 1.7 MB), so this
    is the faithful baseline for ``original-muons``.
    """
    import h5py

    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=train, dtype="f4")
        f.create_dataset("val", data=val, dtype="f4")
        rows = {"train": len(train), "val": len(val)}
        # Version 1 and no chunk record: these files are split differently from the store
        # the metadata comes from, so its record would not describe them.
        kept = {k: v for k, v in meta.items() if k != "integrity"}
        f.attrs[META_KEY] = json.dumps(
            {**kept, "format_version": 1, "format": "hdf5", "rows": rows}
        )


Scenario = tuple[str, str | list[str], str, dict[str, int]]
"""``(label, data, kind, measure kwargs)``: ``data`` a store or a list of original files."""


def scenarios(out: Path, obj: str, original_batches: int, epochs: int) -> list[Scenario]:
    """``(label, data, kind, measure kwargs)`` for every kind on object ``obj``."""
    store_h5 = str(store_path(out, obj, HDF5))
    files = [str(p) for p in original_files(out, obj)]
    bounded = {"max_batches": original_batches, "epochs": 1}
    full = {"epochs": epochs}
    kind = f"original-{obj}"
    out_s = str(out)
    runs: list[Scenario] = [
        ("resident", out_s, "resident", full),
        ("chunked", out_s, "chunked", full),
        ("webdataset", out_s, "webdataset", full),
    ]
    if kind not in LOADER_KINDS.values:  # no original dataset reads this layout
        return runs
    if kind == "original-jets":
        runs += [
            (kind, store_h5, kind, bounded),
            (f"{kind} (2 workers)", store_h5, kind, {**bounded, "num_workers": 2}),
        ]
    else:
        slow = {"max_batches": max(5, original_batches // 10), "epochs": 1}
        runs += [
            (f"{kind} ({ORIGINAL_FILES} original-layout files)", files, kind, bounded),
            (
                f"{kind} ({ORIGINAL_FILES} files, 2 workers)",
                files,
                kind,
                {**bounded, "num_workers": 2},
            ),
            (f"{kind} (prep HDF5 store)", store_h5, kind, slow),
        ]
    return runs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="train rows per object")
    ap.add_argument(
        "--data", type=Path, default=Path("benchmarks/out/data"), help="where the stores go"
    )
    ap.add_argument("--objects", nargs="+", default=["jets", "muons"])
    ap.add_argument(
        "--epochs", type=int, default=3, help="timed epochs of the fast kinds (best kept)"
    )
    ap.add_argument("--original-batches", type=int, default=200)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement this many times, interleaved, keeping the best "
        "(on a shared machine the best round is the least disturbed)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in the measuring processes (0: torch's default). "
        "1 by default: on a machine busy with other work, OpenMP threads spin-wait in "
        "every multi-threaded torch op (index_select, the default collate's stack) and "
        "distort all kinds; the chunked loader's own work does not use them",
    )
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/loaders.json"))
    args = ap.parse_args(argv)

    args.data.mkdir(parents=True, exist_ok=True)
    make_stores(args.data, args.rows, tuple(args.objects))
    results: dict = {
        "command": " ".join(["python benchmarks/bench_loaders.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores",
        "rows": args.rows,
        "rounds": args.rounds,
        "torch_threads": args.torch_threads or "default",
        "objects": {},
    }
    for obj in args.objects:
        rows: dict[str, dict] = {}
        runs = scenarios(args.data, obj, args.original_batches, args.epochs)
        for label, data, kind, kw in [run for _ in range(args.rounds) for run in runs]:
            r = measure_isolated(
                data,
                kind,
                torch_threads=args.torch_threads or None,
                object=obj if not kind.startswith("original") else None,
                **kw,
            )
            r["all_rows_per_s"] = [*rows.get(label, {}).get("all_rows_per_s", []), r["rows_per_s"]]
            if label not in rows or r["rows_per_s"] > rows[label]["rows_per_s"]:
                rows[label] = r
            rows[label]["all_rows_per_s"] = r["all_rows_per_s"]
            print(
                f"{obj:6s} {label:28s} {r['rows_per_s'] / 1e6:9.3f} M rows/s  setup {r['setup_s']:6.2f} s"
                f"  CPU {r['cpu_s_per_million_rows']:7.2f} s/M rows  peak RSS "
                f"{r['peak_rss_bytes'] / 2**20:5.0f} MiB  load {r['load_average_1min']:.1f}",
                flush=True,
            )
        chunked = rows["chunked"]["rows_per_s"]
        ratios = {
            f"chunked / {label}": chunked / r["rows_per_s"]
            for label, r in rows.items()
            if label != "chunked"
        }
        for k, v in ratios.items():
            print(f"{obj:6s} {k:40s} {v:10.1f}x", flush=True)
        results["objects"][obj] = {"results": rows, "ratios": ratios}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    """The results as markdown tables (one per object)."""
    lines = []
    for obj, res in results["objects"].items():
        lines += [
            f"\n### {obj} ({results['rows']:,} rows)\n",
            "| kind | rows/s | CPU s / M rows | setup (s) | peak RSS (MiB) | RSS growth (MiB) "
            "| chunked is |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, r in res["results"].items():
            ratio = res["ratios"].get(f"chunked / {label}")
            lines.append(
                f"| {label} | {r['rows_per_s']:,.0f} | {r['cpu_s_per_million_rows']:,.2f} | "
                f"{r['setup_s']:.2f} | "
                f"{r['peak_rss_bytes'] / 2**20:,.0f} | {r['rss_growth_bytes'] / 2**20:,.0f} | "
                f"{'' if ratio is None else f'{ratio:,.1f}x'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
