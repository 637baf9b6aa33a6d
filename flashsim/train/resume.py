"""What a resumed run takes from its checkpoint, and what it refuses.

``flashsim train OBJECT --out RUN --resume`` continues the run in ``RUN`` as it was
started: every option that shapes what the run computes is recorded in each checkpoint
(the hyperparameters and flow configuration, the store, the number of processes, and
:class:`RunOptions`) and restored when left out. One given with another value is
refused before anything is written, except a larger ``--epochs``: that extends the run
with a new cosine cycle (:mod:`flashsim.train.schedule`). Options that change only what
the run writes or how fast it reads (:data:`SETTINGS`) are restored when left out and
may be changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flashsim.checkpoint import Checkpoint
from flashsim.errors import FlashSimError
from flashsim.presets import DEFAULT_PRESET, get_preset
from flashsim.store import DEFAULT_DATA_DIR
from flashsim.train import distributed
from flashsim.train.config import BEST_BY, MONITOR_ROWS, TrainConfig

__all__ = ["SETTINGS", "SHAPING", "RunOptions", "resolve_config"]

SHAPING: tuple[str, ...] = ("loader", "device", "deterministic", "tf32", "compile", "cuda_graphs")
SHAPING += ("max_steps_per_epoch", "monitor_rows", "best_by")
"""Options (besides the hyperparameters) that change what the run computes or what its
records mean: restored from the checkpoint when left out, refused when changed."""
SETTINGS = ("checkpoint_every", "tensorboard", "num_workers", "check_every", "monitor_every")
"""Options that change only what the run writes or how fast: restored when left out."""

NEW_RUN_DEFAULTS: dict[str, Any] = {
    "data": DEFAULT_DATA_DIR,
    "tf32": False,
    "compile": False,
    "cuda_graphs": False,
    "checkpoint_every": 0,
    "tensorboard": True,
    "num_workers": 0,
    "check_every": 20,
    "monitor_rows": MONITOR_ROWS,
    "best_by": "nll",
}
"""What a new run uses for the :class:`TrainConfig` fields left at ``None``."""

_HPARAMS = ("preset", "batch_size", "lr", "seed")
"""The :class:`TrainConfig` fields that are :class:`~flashsim.presets.HParams` fields
(besides ``epochs``, which may grow)."""


@dataclass(frozen=True)
class RunOptions:
    """The options a checkpoint records besides hyperparameters, flow, store, processes
    and threads (``Checkpoint.run_options``), as the run resolved them.

    Attributes:
        loader: the loader kind the run read with (``"auto"`` resolved).
        device: the device type (``"cpu"`` or ``"cuda"``).
        deterministic, tf32, compile, cuda_graphs: the numerics options.
        max_steps_per_epoch: the step cap (``None``: whole epochs).
        monitor_rows, best_by: the conditioning monitor's subset, what ``best.pt`` is.
        checkpoint_every, tensorboard, num_workers, check_every, monitor_every:
            :data:`SETTINGS`.
    """

    loader: str
    device: str
    deterministic: bool
    tf32: bool
    compile: bool
    cuda_graphs: bool
    max_steps_per_epoch: int | None
    checkpoint_every: int
    tensorboard: bool
    num_workers: int
    check_every: int
    monitor_rows: int
    best_by: str
    monitor_every: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recorded_options(saved: Checkpoint) -> dict[str, Any]:
    """What ``saved`` says of each option of :data:`SHAPING`, :data:`SETTINGS` and
    ``threads`` (checkpoints of earlier versions record fewer)."""
    recorded: dict[str, Any] = dict(saved.run_options or {})
    if saved.threads is not None:
        recorded["threads"] = saved.threads
    return recorded


def _given(config: TrainConfig, name: str) -> Any:
    """The value of option ``name`` in ``config``, ``None`` when left out."""
    value = getattr(config, name)
    return None if name in ("loader", "device") and value == "auto" else value


def _differs(name: str, given: Any, recorded: Any, device: str) -> bool:
    if name == "device":
        return str(given).split(":")[0] != recorded
    if name == "threads":  # CPU reduction order; on a GPU the threads only feed it
        return device == "cpu" and given != recorded
    return given != recorded


def _option_conflicts(config: TrainConfig, recorded: dict[str, Any]) -> tuple[dict, list[str]]:
    """``(options restored from the checkpoint, conflicts)``."""
    device = str(recorded.get("device", "cpu"))
    restored: dict[str, Any] = {}
    conflicts = []
    for name in (*SHAPING, "threads", *SETTINGS):
        given, was = _given(config, name), recorded.get(name)
        if given is None:
            if name in recorded:
                restored[name] = was
        elif name in recorded and name not in SETTINGS and _differs(name, given, was, device):
            conflicts.append(f"{name}={given!r} (checkpoint: {was!r})")
    return restored, conflicts


def _hparam_conflicts(config: TrainConfig, saved: Checkpoint) -> list[str]:
    hp, flow = saved.hparams, saved.flow_config
    assert hp is not None
    conflicts = [
        f"{name}={getattr(config, name)!r} (checkpoint: {getattr(hp, name)!r})"
        for name in _HPARAMS
        if getattr(config, name) is not None and getattr(config, name) != getattr(hp, name)
    ]
    if config.epochs is not None and config.epochs < hp.epochs:
        conflicts.append(
            f"epochs={config.epochs} (checkpoint: {hp.epochs}; a run can be extended, not "
            "shortened)"
        )
    conflicts += [
        f"{k}={v!r} (checkpoint: {getattr(flow, k, None)!r})"
        for k, v in config.flow.items()
        if v is not None and getattr(flow, k, None) != v
    ]
    world = config.nproc if config.nproc > 1 else distributed.env_world_size()
    if world != saved.world_size:
        conflicts.append(f"{world} process(es) (checkpoint: {saved.world_size})")
    return conflicts


def resolve_config(config: TrainConfig, saved: Checkpoint | None) -> TrainConfig:
    """``config`` with every option left out filled in: from ``saved`` (the checkpoint a
    resumed run continues) or, for a new run, :data:`NEW_RUN_DEFAULTS`.

    Raises:
        FlashSimError: ``saved`` is given and an option differs from what it recorded
            (all differences in one message); nothing has been written.
    """
    changes: dict[str, Any] = {}
    if saved is not None:
        if saved.hparams is None:
            raise FlashSimError(f"The checkpoint of {config.out_dir} holds no hyperparameters.")
        changes, conflicts = _option_conflicts(config, recorded_options(saved))
        conflicts += _hparam_conflicts(config, saved)
        if conflicts:
            raise FlashSimError(
                "--resume continues the saved run as it was started, but these options "
                f"differ from its checkpoint: {', '.join(conflicts)}. Nothing was changed. "
                "Drop them to resume (only a larger --epochs is accepted: it extends the "
                "run), or start a new run with another --out."
            )
        if config.data is None:
            changes["data"] = saved.store
    for name, default in NEW_RUN_DEFAULTS.items():
        if changes.get(name, getattr(config, name)) is None:
            changes[name] = default
    if changes.get("monitor_every", config.monitor_every) is None:
        preset = saved.hparams.preset if saved and saved.hparams else config.preset
        changes["monitor_every"] = get_preset(preset or DEFAULT_PRESET, config.object).monitor_every
    resolved = dataclasses.replace(config, **changes)
    _check_monitor(resolved)
    return resolved


def _check_monitor(config: TrainConfig) -> None:
    BEST_BY.normalize(config.best_by)
    if config.best_by == "conditioning" and not config.monitor_every:
        raise FlashSimError(
            "--best-by conditioning picks best.pt by the conditioning monitor, which "
            "--monitor-every 0 turns off; pass --monitor-every K (K > 0) or --best-by nll."
        )
