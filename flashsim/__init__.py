"""flashsim: the FlashSim data toolkit.

NanoAOD/HDF5 ntuples to chunked shards (``pipelines``), loaders that keep the GPU
busy (``loaders``), and the conditional spline-flow trainer (``flashsim.train``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flashsim")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
