"""Description of the machine and software a benchmark ran on (recorded in its JSON).

>>> info = describe_machine("cpu")
>>> info["cpu"]["logical_cores"] >= 1 and info["gpu"] is None
True
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import psutil
import torch

PACKAGES: tuple[str, ...] = (
    "flashsim",
    "torch",
    "numpy",
    "zarr",
    "numcodecs",
    "h5py",
    "webdataset",
    "nflows",
    "psutil",
    "nvidia-ml-py",
)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else :mod:`platform`)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("flashsim") is None:  # running from a source tree
        from flashsim import __version__

        out["flashsim"] = __version__
    return out


def gpu_description(device: torch.device | str) -> dict | None:
    """Name, memory and CUDA/driver versions of a CUDA ``device``; ``None`` otherwise."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info = {
        "name": props.name,
        "memory_gb": props.total_memory / 1e9,
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
        "driver": None,
        "nvml": False,
    }
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        info["nvml"] = True
        pynvml.nvmlShutdown()
    return info


def path_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a file or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def describe_machine(
    device: torch.device | str, stores: Mapping[str, str | os.PathLike] | None = None
) -> dict:
    """Everything needed to compare benchmark numbers across machines.

    Args:
        device: the device the benchmark computes on.
        stores: ``{format: path}`` of the stores read; their sizes on disk are recorded.
    """
    mem = psutil.virtual_memory()
    load = None
    with contextlib.suppress(OSError):
        load = list(os.getloadavg())
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "cpu": {
            "model": cpu_model(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "torch_threads": torch.get_num_threads(),
        },
        "memory_gb": mem.total / 1e9,
        "load_average_at_start": load,
        "device": str(torch.device(device)),
        "gpu": gpu_description(device),
        "versions": package_versions(),
        "stores": {
            fmt: {"path": str(p), "bytes": path_size(p)} for fmt, p in (stores or {}).items()
        },
    }
