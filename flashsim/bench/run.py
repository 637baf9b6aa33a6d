"""``run_benchmark``: every loader, load and training modes, interleaved repeats.

>>> from flashsim.bench import BenchConfig
>>> BenchConfig.quick_config().steps <= BenchConfig().steps
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flashsim.bench.data import (
    DEFAULT_CACHE_DIR,
    DEFAULT_ROWS,
    QUICK_ROWS,
    BenchData,
    format_for_kind,
    prepare_bench_data,
    rows_for_run,
)
from flashsim.bench.harness import MODES, Trainer, interleaved, run_trial, summarize
from flashsim.bench.machine import describe_machine
from flashsim.bench.resources import NvmlProbe
from flashsim.devices import resolve_device
from flashsim.errors import FlashSimError
from flashsim.flow_config import SPLINE_ENGINES
from flashsim.layouts import OBJECTS, layout_for
from loaders.sources import KIND_OBJECT

MODELS: tuple[str, ...] = ("small", "paper", "none")

SUMMARY_METRICS: tuple[str, ...] = (
    "rows_per_s",
    "steps_per_s",
    "timed_steps",
    "cold_epoch_rows_per_s",
    "data_wait_fraction",
    "device_busy_fraction",
    "gpu_util_mean",
    "cpu_util",
    "cpu_cores_busy",
    "peak_rss_mb",
    "rss_growth_mb",
    "open_s",
    "wall_s",
    "loss_last",
)


@dataclass
class BenchConfig:
    """Settings of one benchmark run (the ``flashsim bench-loader`` options).

    Attributes:
        object: ``"jets"`` or ``"muons"``.
        loaders: loader kinds to compare; ``None``: every kind of :data:`loaders.KINDS`
            except ``auto`` (which only picks one of the others).
        model: training preset (``small``/``paper``) or ``none`` to skip training mode.
        modes: measurements to take, ``"load"`` and/or ``"train"``.
        batch_size: rows per batch, the same for every loader.
        steps: timed optimiser steps per training trial.
        load_steps: timed batches per load-only trial, counted from the start of the
            second epoch (the first is the warm-up); ``None``: one whole epoch.
        warmup: untimed optimiser steps before the timed ones (training mode).
        repeats: trials per loader and mode, interleaved across loaders.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda[:i]``.
        workers: ``num_workers`` passed to every loader.
        threads: torch intra-op threads of the compute during the run (``None``: torch's
            default, usually the core count). On a shared machine 1 avoids the stalls
            of threads waiting for each other.
        data: a store or directory of stores; ``None``: ``shards/`` or toy data.
        cache_dir: where toy data and derived stores are cached.
        rows: training rows of toy data (``None``: enough for the run, at least 200 k).
        seed: seed of the data, the shuffling and the model's initial weights.
        spline: spline engine of the flow (``fused`` or ``nflows``).
        compile: ``torch.compile`` the training loss and backward (:mod:`flashsim.train.step`).
        cuda_graphs: replay the whole training step from a CUDA graph (CUDA only).
        sample_interval_s: period of the RSS/CPU/GPU sampling thread.
        quick: the settings came from :meth:`quick_config` (recorded only).
    """

    object: str = "jets"
    loaders: tuple[str, ...] | None = None
    model: str = "small"
    modes: tuple[str, ...] = MODES
    batch_size: int = 2048
    steps: int = 50
    load_steps: int | None = None
    warmup: int = 5
    repeats: int = 3
    device: str = "auto"
    workers: int = 0
    threads: int | None = None
    data: str | None = None
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    rows: int | None = None
    seed: int = 0
    spline: str = "fused"
    compile: bool = False
    cuda_graphs: bool = False
    sample_interval_s: float = 0.1
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> BenchConfig:
        """Settings that finish in a minute or two on a 2-core CPU: small toy data (jets
        200 k rows, muons 60 k), small model, 10 timed training steps after 2 warm-up,
        2 repeats, one torch thread (several threads stall each other badly when other
        processes share the cores). ``overrides`` (those not ``None``) win."""
        base: dict[str, Any] = {  # BenchConfig's keyword arguments
            "steps": 10,
            "warmup": 2,
            "repeats": 2,
            "threads": 1,
            "model": "small",
            "rows": QUICK_ROWS.get(overrides.get("object") or cls.object, DEFAULT_ROWS),
            "quick": True,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @property
    def modes_run(self) -> tuple[str, ...]:
        """The modes measured: ``modes`` in canonical order, without ``train`` if
        ``model`` is ``none``."""
        return tuple(m for m in MODES if m in self.modes and (m != "train" or self.model != "none"))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "modes": list(self.modes_run)}

    def validate(self) -> None:
        problems = []
        if self.object not in OBJECTS:
            problems.append(f"--object must be one of {', '.join(OBJECTS)} (got {self.object!r})")
        if self.model not in MODELS:
            problems.append(f"--model must be one of {', '.join(MODELS)} (got {self.model!r})")
        for name in ("batch_size", "steps", "repeats", "load_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes_run:
            problems.append(
                f"--modes must name load and/or train (got {', '.join(self.modes) or 'none'}"
                + (", and --model none leaves nothing to do)" if not bad_modes else ")")
            )
        if self.warmup < 0 or self.workers < 0:
            problems.append("--warmup and --workers must be >= 0")
        if self.threads is not None and self.threads < 1:
            problems.append("--threads must be >= 1")
        if self.spline not in SPLINE_ENGINES:
            problems.append(f"--spline must be one of {', '.join(SPLINE_ENGINES)}")
        if problems:
            raise FlashSimError("Invalid benchmark settings: " + "; ".join(problems) + ".")


def loader_kinds(obj: str, requested: tuple[str, ...] | None) -> list[str]:
    """The loader kinds to run: ``requested`` (checked against :data:`loaders.KINDS`) or
    every kind that can read ``obj`` except ``auto`` (which only picks one of the
    others); the original dataset of ``obj`` first.

    The original datasets are object-specific (``original-jets`` slices 31 columns,
    ``original-muons`` 52) and :func:`loaders.open` refuses the other object's, so by
    default only ``original-<obj>`` runs; asking for the other one explicitly records
    the loader's refusal under ``skipped``.
    """
    import loaders
    from loaders.sources import KIND_OBJECT

    kinds = tuple(loaders.KINDS)
    if requested:
        unknown = [k for k in requested if k not in kinds]
        if unknown:
            raise FlashSimError(
                f"Unknown loader(s) {', '.join(unknown)}; the loaders are {', '.join(kinds)}."
            )
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = [k for k in kinds if k != "auto" and KIND_OBJECT.get(k, obj) == obj]
    own = f"original-{obj}"
    return sorted(chosen, key=lambda k: (k != own, not k.startswith("original")))


def make_trainer(
    model: str,
    obj: str,
    device: torch.device,
    seed: int,
    store: Path | None = None,
    spline: str = "fused",
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Trainer | None:
    """The real flow of preset ``model`` for ``obj`` with its Adam optimiser (``None`` for
    ``model="none"``); every call of ``make`` builds the same initial weights. A preset
    with standardised inputs takes the statistics of ``store``'s training split, as
    ``flashsim train`` does (the spline cost per step depends on where the values fall).
    ``spline``, ``compile`` and ``cuda_graphs`` choose the engine and the step, as
    ``flashsim train`` does."""
    if model == "none":
        return None
    from flashsim.model import build_flow, set_standardization
    from flashsim.presets import get_preset
    from flashsim.train.step import make_train_step

    preset = get_preset(model, obj)
    preset = dataclasses.replace(preset, flow=preset.flow.replace(spline=spline))
    stats = None
    if preset.flow.standardize and store is not None:
        from pipelines.store_info import column_stats

        s = column_stats(store, ("train",))
        layout = layout_for(obj)
        x, y = layout.targets, layout.conditioning
        stats = [torch.from_numpy(a) for a in (s.mean[x], s.std[x], s.mean[y], s.std[y])]

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        flow = build_flow(preset.flow, seed=seed)
        if stats is not None:
            set_standardization(flow, *stats)
        flow.to(device)
        return flow, torch.optim.Adam(flow.parameters(), lr=preset.lr)

    def loss(flow: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # an nflows Flow
        return -flow.log_prob(x, context=y).mean()

    def make_step(flow: Any, optimizer: torch.optim.Optimizer) -> Callable:
        if compile:
            torch._dynamo.reset()  # a new flow per trial: compile it afresh, not on top
        step = make_train_step(
            lambda x, y: -flow.log_prob(x, context=y),
            optimizer,
            device,
            spline=spline,
            compile=compile,
            cuda_graphs=cuda_graphs,
        )
        return lambda x, y: step(x, y).mean()

    return Trainer(make=make, loss=loss, make_step=make_step if compile or cuda_graphs else None)


def _opener(kind: str, store: Path, cfg: BenchConfig, device: torch.device) -> Callable:
    import loaders

    def open_loader():
        return loaders.open(
            store,
            split="train",
            object=cfg.object,
            kind=kind,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            device=str(device),
            drop_last=True,  # full batches only: the same rows per step for every loader
            num_workers=cfg.workers,
        )

    return open_loader


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict:
    """Run the benchmark described by ``cfg`` and return its result dictionary.

    Keys: ``machine`` (:func:`describe_machine`), ``config``, ``data`` (stores, rows,
    source), ``notes``, ``results`` (one entry per loader and mode: ``loader``, ``mode``,
    ``baseline``, medians of ``rows_per_s``, ``steps_per_s``, ``data_wait_fraction``,
    ``device_busy_fraction``, ``gpu_util_mean``, ``cpu_util``, ``peak_rss_mb``, ...,
    ``speedup_vs_original`` and ``repeats`` with every metric's values and spread),
    ``skipped`` (loaders that could not run, with the reason) and ``trials`` (every
    measurement in the order taken).
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.cuda_graphs and device.type != "cuda":
        raise FlashSimError(
            f"--cuda-graphs replays the training step on a GPU, but the device is {device}; "
            "drop --cuda-graphs or pass --device cuda."
        )
    kinds = loader_kinds(cfg.object, cfg.loaders)
    modes = cfg.modes_run
    data = _bench_data(cfg, kinds, progress)
    trainer = make_trainer(
        cfg.model,
        cfg.object,
        device,
        cfg.seed,
        next(iter(data.stores.values())),
        spline=cfg.spline,
        compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs,
    )
    machine = describe_machine(device, data.stores)
    notes = list(data.notes)
    nvml = NvmlProbe(device)
    notes += _device_notes(device, nvml, cfg.sample_interval_s)
    notes += _busy_machine_notes(machine)
    trials, skipped = _run_trials(cfg, kinds, modes, data, device, trainer, nvml, machine, progress)
    if not trials:
        raise FlashSimError(
            "No loader could be measured, so nothing was written: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    with contextlib.suppress(OSError):
        machine["load_average_at_end"] = list(os.getloadavg())
    results = aggregate(trials, cfg.object, device, kinds, modes)
    baseline = f"original-{cfg.object}"
    if baseline not in KIND_OBJECT:
        notes.append(
            f"the original trainings had no per-row loader of {cfg.object} rows, so there "
            "is no baseline and no speedup is given."
        )
    elif not any(r["loader"] == baseline for r in results):
        notes.append(f"{baseline} was not measured, so no speedup is given.")
    return {
        "machine": machine,
        "config": {**cfg.to_dict(), "device_resolved": str(device), "loaders_run": kinds},
        "data": data.to_dict(),
        "notes": notes,
        "results": results,
        "skipped": [{"loader": k, "reason": v} for k, v in skipped.items()],
        "trials": trials,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _bench_data(cfg: BenchConfig, kinds: list[str], progress: bool) -> BenchData:
    """The stores every loader of ``kinds`` reads (prepared or reused)."""
    return prepare_bench_data(
        cfg.object,
        [format_for_kind(k) for k in kinds],
        data=cfg.data,
        cache_dir=cfg.cache_dir,
        toy_rows=cfg.rows or rows_for_run(cfg.batch_size, cfg.warmup, cfg.steps),
        seed=cfg.seed,
        use_shards=not cfg.quick,
        progress=progress,
        min_shard_rows=rows_for_run(cfg.batch_size, cfg.warmup, cfg.steps, minimum=0),
    )


def _busy_machine_notes(machine: dict) -> list[str]:
    load = machine.get("load_average_at_start")
    cores = machine["cpu"]["logical_cores"] or 1
    if load and load[0] > 0.5 * cores:
        return [
            f"the machine was busy when the run started (1-min load average {load[0]:.1f} on "
            f"{cores} cores): other processes shared the CPU; interleaving spreads their "
            "effect over all loaders, but absolute numbers are lower than on a quiet machine."
        ]
    return []


def _run_trials(
    cfg: BenchConfig,
    kinds: list[str],
    modes: tuple[str, ...],
    data: BenchData,
    device: torch.device,
    trainer: Trainer | None,
    nvml: NvmlProbe,
    machine: dict,
    progress: bool,
) -> tuple[list[dict], dict[str, str]]:
    """Every (repeat, loader, mode) trial, interleaved: ``(trials, skipped)``, the trials of
    loaders that failed (skipped: loader -> reason) left out. Closes ``nvml``."""
    trials: list[dict] = []
    skipped: dict[str, str] = {}
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    machine["cpu"]["torch_threads"] = torch.get_num_threads()
    schedule = list(interleaved(kinds, modes, cfg.repeats))
    bar = tqdm(schedule, desc="bench-loader", unit="trial", disable=not progress)
    try:
        for repeat, kind, mode in bar:
            if kind in skipped:
                continue
            bar.set_postfix_str(f"{kind} {mode} #{repeat + 1}")
            store = data.stores[format_for_kind(kind)]
            try:
                figures = run_trial(
                    _opener(kind, store, cfg, device),
                    mode,
                    steps=cfg.steps if mode == "train" else cfg.load_steps,
                    warmup=cfg.warmup,
                    device=device,
                    trainer=trainer,
                    sample_interval_s=cfg.sample_interval_s,
                    nvml=nvml,
                )
            except FlashSimError as err:
                skipped[kind] = str(err)
                continue
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as err:  # one broken loader must not void the others' numbers
                skipped[kind] = f"failed with {type(err).__name__}: {err}"
                continue
            trials.append({"loader": kind, "mode": mode, "repeat": repeat, **figures})
    finally:
        bar.close()
        nvml.close()
        torch.set_num_threads(threads_before)
    return [t for t in trials if t["loader"] not in skipped], skipped


def _device_notes(device: torch.device, nvml: NvmlProbe, interval_s: float) -> list[str]:
    if device.type != "cuda":
        why = "no GPU on this machine" if not torch.cuda.is_available() else "--device cpu"
        return [
            f"{why}: the device is the CPU. device_busy_fraction is compute time (forward, "
            "backward, optimiser step) / wall time; gpu_util_mean is null (no GPU "
            "utilisation exists to sample)."
        ]
    if not nvml.available:
        return [
            "GPU present but NVML is not available (install nvidia-ml-py): gpu_util_mean is "
            "null; device_busy_fraction comes from CUDA events."
        ]
    return [
        "device_busy_fraction: CUDA-event time of each training step / wall time; "
        f"gpu_util_mean: NVML utilisation of {nvml.name} sampled every {interval_s:g} s "
        "during the timed steps."
    ]


def aggregate(
    trials: list[dict], obj: str, device: torch.device, kinds: list[str], modes: tuple[str, ...]
) -> list[dict]:
    """One entry per (loader, mode): medians over repeats, spreads, and the speedup over
    ``original-<obj>`` of the same mode, from this run's trials only.

    ``speedup_vs_original`` is the ratio of the median rows/s; ``repeats`` also holds the
    per-repeat ratios (each trial over the baseline's trial of the same repeat).
    """
    baseline = f"original-{obj}"
    busy_source = "cuda-events" if device.type == "cuda" else "cpu-compute-over-wall"
    entries = []
    for kind in kinds:
        for mode in modes:
            ts = [t for t in trials if t["loader"] == kind and t["mode"] == mode]
            if not ts:
                continue
            stats = {m: summarize([t.get(m) for t in ts]) for m in SUMMARY_METRICS}
            medians = {m: (s["median"] if s else None) for m, s in stats.items()}
            entry: dict[str, Any] = {  # one row of the results JSON
                "loader": kind,
                "mode": mode,
                "object": obj,
                "store_format": format_for_kind(kind),
                "baseline": None,
                **medians,
                "samples_per_s": medians["rows_per_s"],
                "device_busy_source": busy_source if mode == "train" else None,
                "n_repeats": len(ts),
                "speedup_vs_original": None,
                "repeats": stats,
            }
            entries.append(entry)
    for mode in modes:
        base = next((e for e in entries if e["loader"] == baseline and e["mode"] == mode), None)
        if base is None:
            continue
        base_by_repeat = {
            t["repeat"]: t["rows_per_s"]
            for t in trials
            if t["loader"] == baseline and t["mode"] == mode
        }
        for e in entries:
            if e["mode"] != mode:
                continue
            e["baseline"] = baseline
            e["speedup_vs_original"] = e["rows_per_s"] / base["rows_per_s"]
            paired = [
                t["rows_per_s"] / base_by_repeat[t["repeat"]]
                for t in trials
                if t["loader"] == e["loader"]
                and t["mode"] == mode
                and t["repeat"] in base_by_repeat
            ]
            e["repeats"]["speedup_vs_original"] = summarize(paired)
    return entries


def default_output_paths(out_dir: str | os.PathLike = "bench-out") -> tuple[Path, Path]:
    """``(json, png)`` default output paths inside ``out_dir``."""
    out = Path(out_dir)
    return out / "bench-loader.json", out / "bench-loader.png"
