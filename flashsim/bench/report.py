"""Outputs of a benchmark: the terminal table, the JSON file and the PNG bar chart.

All three read the result dictionary returned by :func:`flashsim.bench.run_benchmark`
(keys ``machine``, ``config``, ``data``, ``notes``, ``results``, ``skipped``, ``trials``).
Files are written atomically: a failed write leaves any earlier file in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flashsim.bench.harness import MODES
from flashsim.outputs import atomic_output, strict_json, write_text_atomic


def is_original(loader: str) -> bool:
    """Whether ``loader`` names one of the original per-row datasets (the baselines)."""
    return loader.startswith("original")


def ordered(results: list[dict]) -> list[dict]:
    """Results by mode (load, train), then the baseline, the other originals, the rest
    in the order they were given."""

    def key(i_r: tuple[int, dict]) -> tuple[int, int, int]:
        i, r = i_r
        rank = 0 if r["loader"] == r.get("baseline") else 1 if is_original(r["loader"]) else 2
        return (MODES.index(r["mode"]), rank, i)

    return [r for _, r in sorted(enumerate(results), key=key)]


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _spread(entry: dict, metric: str) -> str:
    s = (entry.get("repeats") or {}).get(metric)
    return "" if not s or len(s["values"]) < 2 else f" ±{100 * s['spread']:.0f}%"


def format_table(result: dict) -> str:
    """The human-readable report: the setup, one line per loader and mode (originals
    first), the speedups over the original loader, and the notes."""
    cfg, machine, data = result["config"], result["machine"], result["data"]
    measured = []
    if "load" in cfg["modes"]:
        what = f"{cfg['load_steps']} batches" if cfg["load_steps"] else "one epoch"
        measured.append(f"load: {what} after a warm-up epoch")
    if "train" in cfg["modes"]:
        measured.append(
            f"train ({cfg['model']} flow): {cfg['steps']} steps after {cfg['warmup']} warm-up"
        )
    lines = [
        f"flashsim bench-loader: {cfg['object']}, {data['rows'].get('train', 0):,} train rows "
        f"({data['source']}), batch {cfg['batch_size']}; {'; '.join(measured)}; "
        f"{cfg['repeats']} interleaved repeats (median ± half range); device "
        f"{machine['device']}, workers {cfg['workers']}, torch threads "
        f"{machine['cpu']['torch_threads']}",
        f"CPU: {machine['cpu']['model']}, {machine['cpu']['logical_cores']} logical cores; "
        + (
            f"GPU: {machine['gpu']['name']}"
            if machine.get("gpu")
            else "no GPU: busy = compute time / wall time on the CPU, no GPU utilisation sampled"
        ),
        "",
    ]
    header = (
        f"{'mode':<6}{'loader':<17}{'rows/s':>14}{'steps/s':>9}{'data wait':>11}"
        f"{'busy':>7}{'GPU util':>10}{'CPU':>6}{'peak RSS':>10}{'speedup':>14}"
    )
    lines += [header, "-" * len(header)]
    last_mode = None
    for r in ordered(result["results"]):
        if last_mode is not None and r["mode"] != last_mode:
            lines.append("")
        last_mode = r["mode"]
        if r["speedup_vs_original"] is None:
            speed = "-"
        elif r["loader"] == r["baseline"]:
            speed = "baseline"
        else:
            speed = f"{r['speedup_vs_original']:.1f}x"
        rate = _si(r["rows_per_s"]) + _spread(r, "rows_per_s")
        lines.append(
            f"{r['mode']:<6}{r['loader']:<17}{rate:>14}{r['steps_per_s']:>9.2f}"
            f"{_pct(r['data_wait_fraction']):>11}{_pct(r['device_busy_fraction']):>7}"
            f"{_pct(r['gpu_util_mean']):>10}{_pct(r['cpu_util']):>6}"
            f"{r['peak_rss_mb']:>8.0f}MB{speed:>14}"
        )
    baselines = sorted({r["baseline"] for r in result["results"] if r.get("baseline")})
    if baselines:
        lines += ["", f"speedup: rows/s over {', '.join(baselines)} in the same mode, same run."]
    for s in result.get("skipped", []):
        lines.append(f"skipped {s['loader']}: {s['reason']}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON (non-finite floats become ``null``)."""
    return write_text_atomic(path, json.dumps(strict_json(result), indent=1) + "\n")


def plot(result: dict, path: str | os.PathLike) -> Path:
    """PNG bar chart: rows/s per loader for each mode (log scale, error bars min-max over
    repeats) and, for training, the data-wait and device-busy fractions per loader."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = ordered(result["results"])
    loaders = list(dict.fromkeys(r["loader"] for r in rows))
    by = {(r["loader"], r["mode"]): r for r in rows}
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    x = np.arange(len(loaders))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    width = 0.8 / max(len(modes), 1)
    for k, mode in enumerate(modes):
        med, lo, hi = [], [], []
        for name in loaders:
            r = by.get((name, mode))
            s = r.get("repeats", {}).get("rows_per_s") if r else None
            med.append(r["rows_per_s"] if r else np.nan)
            lo.append(r["rows_per_s"] - s["min"] if r and s else 0.0)
            hi.append(s["max"] - r["rows_per_s"] if r and s else 0.0)
        bars = ax1.bar(
            x + (k - (len(modes) - 1) / 2) * width, med, width, yerr=[lo, hi], capsize=3, label=mode
        )
        for bar, name in zip(bars, loaders, strict=True):
            r = by.get((name, mode))
            if r and r.get("speedup_vs_original") and r["loader"] != r["baseline"]:
                top = r["repeats"]["rows_per_s"]["max"]  # above the error bar
                speedup = r["speedup_vs_original"]
                ax1.annotate(
                    f"{speedup:.1f}x" if speedup < 10 else f"{speedup:.0f}x",
                    (bar.get_x() + bar.get_width() / 2, top),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax1.set_yscale("log")
    ax1.set_ylabel("rows / s (median)")
    ax1.set_xticks(x, loaders, rotation=20, ha="right")
    ax1.set_title("throughput (speedup over the original)")
    ax1.legend(fontsize=8)
    train = [by.get((name, "train")) for name in loaders]
    if any(train):
        wait = [r["data_wait_fraction"] if r else np.nan for r in train]
        busy = [r["device_busy_fraction"] if r else np.nan for r in train]
        ax2.bar(x - 0.2, wait, 0.4, label="data wait", color="tab:red")
        ax2.bar(x + 0.2, busy, 0.4, label="device busy", color="tab:green")
        ax2.legend(loc="upper center", ncols=2, fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no training mode (--model none)", ha="center", transform=ax2.transAxes)
    ax2.set_ylim(0, 1.15)  # headroom for the legend
    ax2.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax2.set_ylabel("fraction of training wall time")
    ax2.set_xticks(x, loaders, rotation=20, ha="right")
    ax2.set_title("training: waiting for data vs computing")
    cfg, machine = result["config"], result["machine"]
    device = machine["gpu"]["name"] if machine.get("gpu") else f"CPU ({machine['cpu']['model']})"
    fig.suptitle(
        f"flashsim bench-loader: {cfg['object']}, model {cfg['model']}, batch "
        f"{cfg['batch_size']}, {device}",
        fontsize=10,
    )
    fig.tight_layout()

    try:
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
        return Path(path)
    finally:
        plt.close(fig)
