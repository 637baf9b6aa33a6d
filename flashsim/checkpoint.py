"""Checkpoint files: what they hold (:class:`Checkpoint`), atomic writes, safe reads,
and the RNG state they carry.

A checkpoint is one ``torch.save`` dictionary, :meth:`Checkpoint.to_dict`: model,
optimiser, scheduler, loader state, RNG states, the flow configuration, the training
hyperparameters, the store metadata and the history, plus a ``format``/``version``
marker. Its keys are those every earlier version wrote, so old checkpoints load and
resume unchanged. It is written to a temporary file in the same directory, flushed to disk and moved
into place with :func:`os.replace`, so a crash never leaves a half-written
checkpoint under a final name. Files are read with ``weights_only=True`` (no
arbitrary pickles): numpy values are converted to tensors/Python values on save and
back on load (:func:`to_safe` / :func:`from_safe`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashsim.errors import FlashSimError
from flashsim.flow_config import FlowConfig
from flashsim.outputs import atomic_output
from flashsim.presets import HParams

CHECKPOINT_FORMAT = "flashsim-checkpoint"
CHECKPOINT_VERSION = 2
"""2 added ``run_options`` and ``hparams.restarts``; version 1 files still load and resume."""

_NUMPY_TAG = "__numpy_array__"
_ENVELOPE = ("format", "version")


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint file holds (the fields are its on-disk keys, in their order).

    Only ``flow_config`` and ``model`` are needed to rebuild the flow
    (:func:`flashsim.model.load_model`); the rest resumes a training run.

    Attributes:
        object: ``"jets"`` or ``"muons"``.
        flow_config: the flow's hyperparameters.
        hparams: the run's optimisation hyperparameters.
        model, optimizer, scheduler: ``state_dict()`` of the flow, Adam and the schedule.
        epochs_done: completed epochs.
        mid_epoch: saved inside an epoch (Ctrl-C): ``epoch_progress`` and ``loader`` hold
            each rank's running totals and loader position.
        epoch_progress: per rank, the epoch's running totals (``mid_epoch`` only).
        loader: ``{"kind", "world_size", "states": [per rank]}`` (``mid_epoch`` only).
        rng: per rank, :func:`capture_rng_state`.
        history: the metrics record of every completed epoch.
        best_val_loss: the lowest validation loss so far (nats per row).
        store, store_metadata: the store trained on and its metadata.
        world_size, threads: processes and torch CPU threads of the run that saved it.
        tool_version, saved_at: flashsim version and local time of the save.
        run_options: the other options that shape the run or what it writes, as it
            resolved them (:class:`flashsim.train.resume.RunOptions`; ``None`` in files
            of version 1).
    """

    object: str | None
    flow_config: FlowConfig
    hparams: HParams | None
    model: dict[str, torch.Tensor]
    optimizer: dict | None = None
    scheduler: dict | None = None
    epochs_done: int = 0
    mid_epoch: bool = False
    epoch_progress: list[dict] | None = None
    loader: dict | None = None
    rng: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    store: str | None = None
    store_metadata: dict = field(default_factory=dict)
    world_size: int = 1
    threads: int | None = None
    tool_version: str | None = None
    saved_at: str | None = None
    run_options: dict | None = None

    def to_dict(self) -> dict:
        """The ``torch.save`` dictionary (keys in the order earlier versions wrote them)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["flow_config"] = self.flow_config.to_dict()
        values["hparams"] = None if self.hparams is None else self.hparams.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str | os.PathLike = "") -> Checkpoint:
        """Rebuild from :meth:`to_dict` output or a file's dictionary (its ``format`` and
        ``version`` marker is dropped).

        Raises:
            FlashSimError: unknown keys, or no ``flow_config``/``model``.
        """
        where = f"{path}: " if path else ""
        values = {k: v for k, v in values.items() if k not in _ENVELOPE}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        missing = [k for k in ("flow_config", "model") if k not in values]
        if unknown or missing:
            raise FlashSimError(
                f"{where}the checkpoint has "
                + (f"unknown keys {unknown}" if unknown else f"no {' or '.join(missing)}")
                + "; it was not written by `flashsim train` of this version."
            )
        hparams = values.get("hparams")
        return cls(
            **{
                "object": None,
                **values,
                "flow_config": FlowConfig.from_dict(values["flow_config"]),
                "hparams": None if hparams is None else HParams.from_dict(hparams),
            }
        )


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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """:func:`read_checkpoint` as a :class:`Checkpoint`."""
    return Checkpoint.from_dict(read_checkpoint(path, map_location), path=path)
