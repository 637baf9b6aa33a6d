"""Checkpoint files: atomic writes, safe reads, and the RNG state they carry.

A checkpoint is one ``torch.save`` dictionary (see :func:`flashsim.train.trainer.train`
for the keys): model, optimiser, scheduler, loader state, RNG states, the flow
configuration, the training hyperparameters, the store metadata and the history.
It is written to a temporary file in the same directory, flushed to disk and moved
into place with :func:`os.replace`, so a crash never leaves a half-written
checkpoint under a final name. Files are read with ``weights_only=True`` (no
arbitrary pickles): numpy values are converted to tensors/Python values on save and
back on load (:func:`to_safe` / :func:`from_safe`).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashsim.errors import FlashSimError
from flashsim.outputs import atomic_output

CHECKPOINT_FORMAT = "flashsim-checkpoint"
CHECKPOINT_VERSION = 1

_NUMPY_TAG = "__numpy_array__"


def to_safe(obj: Any) -> Any:
    """Copy of ``obj`` loadable with ``torch.load(weights_only=True)``.

    numpy arrays become tagged tensors (restored exactly by :func:`from_safe`), numpy
    scalars become Python scalars; dicts, lists and tuples are converted recursively.
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [to_safe(v) for v in obj.tolist()]
        return {_NUMPY_TAG: torch.from_numpy(np.array(obj, copy=True)), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any) -> Any:
    """Inverse of :func:`to_safe`."""
    if isinstance(obj, dict):
        if _NUMPY_TAG in obj:
            return obj[_NUMPY_TAG].numpy().astype(np.dtype(obj["dtype"]), copy=True)
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(v) for v in obj)
    return obj


def capture_rng_state() -> dict:
    """The state of every RNG training touches: torch (CPU and CUDA), numpy, Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global RNG, for code that uses it)
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA only where it exists)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(tuple(state["numpy"]))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    The previous file at ``path`` stays intact until the new one is complete.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **to_safe(state)}
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a crash keeps old or new, whole
    return path


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy a checkpoint file (e.g. ``last.pt`` to ``best.pt``)."""
    dst = Path(dst)
    with atomic_output(dst, overwrite=True) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 24)
        fout.flush()
        os.fsync(fout.fileno())
    return dst


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FlashSimError: if the file is missing, unreadable or not a flashsim checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FlashSimError(
            f"No checkpoint at {path}. Train a model first (`flashsim train jets`) or pass "
            "the path of an existing checkpoint (runs/<object>/checkpoints/best.pt)."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged/foreign files
        raise FlashSimError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). It is damaged or not a "
            "flashsim checkpoint; use another one (e.g. best.pt or an epoch-NNNN.pt)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FlashSimError(
            f"{path} is not a flashsim checkpoint (no {CHECKPOINT_FORMAT!r} marker); pass a "
            "file written by `flashsim train`."
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise FlashSimError(
            f"{path} was written by a newer flashsim (checkpoint version "
            f"{payload['version']} > {CHECKPOINT_VERSION}); upgrade flashsim to read it."
        )
    return from_safe(payload)
