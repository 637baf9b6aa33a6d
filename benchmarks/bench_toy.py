"""Benchmark of ``flashsim toy``: events/s, CPU time and peak memory versus the number of events.

Each measurement runs ``flashsim.toy.generate_toy`` (what ``flashsim toy`` calls) in a
fresh interpreter under ``/usr/bin/time -v`` (peak RSS of that process alone), writing to
a temporary directory that is removed afterwards.

    python benchmarks/bench_toy.py                         # 100 k and 1 M ttbar events
    python benchmarks/bench_toy.py --events 100000 --repeat 3 --process wjets
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from flashsim.options import TOY_PROCESSES, TTBAR

REPO = Path(__file__).resolve().parents[1]


def run_once(
    n_events: int, process: str, compression: str, workers: int | None, out_dir: Path
) -> dict:
    out = out_dir / f"toy_{n_events}.root"
    # the library call the CLI makes, in a fresh interpreter (the CLI entry point also
    # imports the other commands' dependencies, e.g. torch, which would dominate the RSS)
    code = (
        "import sys; from flashsim.toy import generate_toy; "
        f"s = generate_toy({str(out)!r}, {n_events}, process={process!r}, "
        f"compression={compression!r}, workers={workers!r}, overwrite=True); "
        "print(s['events_per_s'], 'events/s')"
    )
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", code]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    text = res.stderr

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", text).group(1).strip()

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    wall_s = sum(float(x) * 60**i for i, x in enumerate(reversed(wall)))
    cpu_s = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    rate = re.search(r"([\d.]+) events/s", res.stdout).group(1)
    size = out.stat().st_size
    out.unlink()
    return {
        "events": n_events,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "events_per_s_wall": n_events / wall_s,
        "events_per_s_generate": float(rate),  # as reported by the command (excludes startup)
        "peak_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
        "file_mb": size / 1e6,
        "load_before": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--process", default=TTBAR, choices=TOY_PROCESSES.values)
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where the files go (default: a temp dir)"
    )
    args = parser.parse_args()

    out_dir = Path(tempfile.mkdtemp(prefix="bench_toy_", dir=args.out_dir))
    try:
        print(
            "| events | process | compression | wall s | CPU s | events/s (command) | peak RSS MB | file MB | load avg |"
        )
        print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
        for n in args.events:
            for _ in range(args.repeat):
                r = run_once(n, args.process, args.compression, args.workers, out_dir)
                print(
                    f"| {n:,} | {args.process} | {args.compression} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                    f"{r['events_per_s_generate']:,.0f} | {r['peak_rss_mb']:.0f} | {r['file_mb']:.0f} | "
                    f"{r['load_before']:.1f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
