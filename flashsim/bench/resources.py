"""Resource sampling during one measurement: memory, CPU, GPU.

:class:`ResourceSampler` runs a daemon thread that, every ``interval_s`` seconds, reads
the resident memory (RSS) and CPU times of the whole process tree (this process and its
children, e.g. DataLoader workers) with psutil and, on NVIDIA GPUs, the utilisation
reported by NVML (``pynvml``, package ``nvidia-ml-py``; optional). :class:`BusyTimer`
measures how long the device was busy computing: CUDA events on a GPU, wall-clock
compute time on a CPU. :func:`process_peak_rss_bytes` and :func:`process_cpu_seconds`
give the exact figures of a process measured alone (the load-only epochs benchmark).

Examples
--------
>>> import time
>>> with ResourceSampler(interval_s=0.01) as sampler:
...     sampler.start_window()
...     time.sleep(0.05)
>>> usage = sampler.summary()
>>> usage["peak_rss_mb"] > 0 and 0.0 <= usage["cpu_util"] <= 1.0
True
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import torch


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return [proc]


def _cpu_seconds(proc: psutil.Process) -> float | None:
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return t.user + t.system
    return None


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, exact (not sampled).

    For a process measured alone (``flashsim.bench.epochs`` runs each loader in a fresh
    one). Linux: ``VmHWM`` of ``/proc/self/status`` (``ru_maxrss`` would report the
    parent's peak in a freshly spawned child, as it survives fork and exec).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class NvmlProbe:
    """GPU utilisation of one CUDA device through NVML, or nothing.

    ``available`` is False without ``pynvml``, without an NVIDIA driver or when
    ``device`` is not a CUDA device; :meth:`utilization` then returns ``None``.
    """

    def __init__(self, device: torch.device) -> None:
        self.available = False
        self.name: str | None = None
        self.driver: str | None = None
        self._nvml = None
        self._handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = self._handle_for(pynvml, device)
            self.driver = _as_str(pynvml.nvmlSystemGetDriverVersion())
            self.name = _as_str(pynvml.nvmlDeviceGetName(self._handle))
            self.available = True
        except Exception:  # no pynvml, no driver, no permission: report nothing
            self._nvml = self._handle = None

    @staticmethod
    def _handle_for(pynvml: Any, device: torch.device) -> Any:  # pynvml is untyped
        # CUDA and NVML may number devices differently (CUDA_VISIBLE_DEVICES, ordering):
        # match by PCI bus id when torch exposes it.
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            with contextlib.suppress(Exception):
                bus_id = (
                    f"{getattr(props, 'pci_domain_id', 0):08X}:{bus:02X}:"
                    f"{getattr(props, 'pci_device_id', 0):02X}.0"
                )
                return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def utilization(self) -> float | None:
        """Fraction (0-1) of the last NVML sample period in which a kernel ran."""
        if self._nvml is None:  # set only when NVML initialised (``available``)
            return None
        try:
            return self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
        except Exception:
            return None

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
            self.available = False


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ResourceSampler:
    """Sample the process tree's RSS and CPU time, and NVML GPU utilisation, in a thread.

    Peak RSS covers the whole ``with`` block (so a loader that reads its split into
    memory when opened is charged for it). CPU and GPU utilisation cover only the
    window from :meth:`start_window` to the end of the block (the measured steps).

    Args:
        interval_s: seconds between samples.
        device: the device computing; NVML is queried only for a CUDA device.
        nvml: an :class:`NvmlProbe` to reuse (it is not closed here).
    """

    def __init__(
        self,
        interval_s: float = 0.1,
        device: torch.device | str = "cpu",
        nvml: NvmlProbe | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.device = torch.device(device)
        self._own_nvml = nvml is None
        self.nvml = nvml if nvml is not None else NvmlProbe(self.device)
        self._proc = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._peak_rss = 0
        self._start_rss = 0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._window_t0: float | None = None
        self._window_t1: float | None = None
        self._gpu: list[float] = []

    # The sampling thread ------------------------------------------------------------
    def _sample(self) -> None:
        rss = 0
        cpu: dict[int, float] = {}
        for p in _tree(self._proc):
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
            seconds = _cpu_seconds(p)
            if seconds is not None:
                cpu[p.pid] = seconds
        gpu = self.nvml.utilization() if self._window_t0 is not None else None
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
            if self._window_t0 is not None and self._window_t1 is None:
                for pid, seconds in cpu.items():
                    # A worker started inside the window counts from zero.
                    self._cpu_start.setdefault(pid, 0.0)
                    self._cpu_last[pid] = seconds
                if gpu is not None:
                    self._gpu.append(gpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    # Public API -------------------------------------------------------------------------
    def __enter__(self) -> ResourceSampler:
        self._start_rss = self._proc.memory_info().rss
        self._sample()
        self._thread = threading.Thread(
            target=self._run, name="flashsim-bench-sampler", daemon=True
        )
        self._thread.start()
        return self

    def start_window(self) -> None:
        """Begin the utilisation window (call after the warm-up steps)."""
        self._sample()
        with self._lock:
            self._cpu_start = {}
            self._cpu_last = {}
            for p in _tree(self._proc):
                seconds = _cpu_seconds(p)
                if seconds is not None:
                    self._cpu_start[p.pid] = seconds
                    self._cpu_last[p.pid] = seconds
            self._gpu = []
            self._window_t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._window_t0 is not None:
            self._sample()  # last CPU times of the window
            self._window_t1 = time.perf_counter()
        if self._own_nvml:
            self.nvml.close()

    def summary(self) -> dict:
        """Figures of the sampled run.

        Keys: ``peak_rss_mb`` (peak RSS of the process tree, MiB), ``rss_growth_mb``
        (peak minus this process's RSS on entry, MiB), ``cpu_util`` (CPU time of the tree
        over the window divided by wall time x logical cores, 0-1), ``cpu_cores_busy``
        (the same in cores), ``gpu_util_mean``/``gpu_util_max`` (NVML, 0-1, ``None``
        without NVML or GPU) and ``gpu_samples``.
        """
        mib = 2**20
        out: dict = {
            "peak_rss_mb": self._peak_rss / mib,
            "rss_growth_mb": max(0.0, (self._peak_rss - self._start_rss) / mib),
            "cpu_util": None,
            "cpu_cores_busy": None,
            "gpu_util_mean": None,
            "gpu_util_max": None,
            "gpu_samples": len(self._gpu),
        }
        if self._window_t0 is not None and self._window_t1 is not None:
            wall = max(self._window_t1 - self._window_t0, 1e-9)
            cpu = sum(self._cpu_last[p] - self._cpu_start.get(p, 0.0) for p in self._cpu_last)
            cores = psutil.cpu_count(logical=True) or 1
            out["cpu_cores_busy"] = max(0.0, cpu / wall)
            out["cpu_util"] = min(1.0, out["cpu_cores_busy"] / cores)
        if self._gpu:
            out["gpu_util_mean"] = sum(self._gpu) / len(self._gpu)
            out["gpu_util_max"] = max(self._gpu)
        return out


class BusyTimer:
    """Time the device spends computing, summed over steps.

    On a CUDA device each :meth:`span` records a pair of CUDA events on the current
    stream; :meth:`total_s` synchronises and sums their elapsed times (the device
    timeline from the first kernel of the step to its last). On a CPU the span is wall
    time in the calling thread (the compute is synchronous there).

    >>> timer = BusyTimer("cpu")
    >>> with timer.span():
    ...     _ = sum(range(1000))
    >>> timer.total_s() > 0
    True
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._events: list[tuple] = []
        self._cpu_s = 0.0

    @contextlib.contextmanager
    def span(self) -> Iterator[None]:
        if self._cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu_s += time.perf_counter() - t0

    def total_s(self) -> float:
        """Seconds of device compute recorded so far."""
        if self._cuda:
            torch.cuda.synchronize(self.device)
            return sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        return self._cpu_s
