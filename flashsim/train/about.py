"""What a training run says about itself: the summary at the top of ``train.log``,
``run.json``, the options its checkpoints record (:class:`RunOptions`) and the command
that resumes it.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flashsim import __version__
from flashsim.model import count_parameters
from flashsim.train import distributed
from flashsim.train.resume import RunOptions
from flashsim.train.schedule import describe_schedule, schedule_record

if TYPE_CHECKING:
    from flashsim.train.trainer import _Run

_NOT_IN_RUN_CONFIG: tuple[str, ...] = ("resume", "stop_after_epochs", "progress", "trace")
_NOT_IN_RUN_CONFIG += ("preset", "epochs", "batch_size", "lr", "seed", "flow")
"""Left out of ``run.json``'s ``config``: the options of one invocation, and the
overrides that its ``hparams`` and ``flow_config`` hold as resolved."""


def run_options(run: _Run) -> RunOptions:
    """The options of ``run`` as it resolved them (saved in every checkpoint)."""
    cfg = run.config
    return RunOptions(
        loader=run.train_loader.kind,
        device=run.device.type,
        deterministic=torch.are_deterministic_algorithms_enabled(),
        tf32=bool(cfg.tf32),
        compile=bool(cfg.compile),
        cuda_graphs=bool(cfg.cuda_graphs),
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        checkpoint_every=int(cfg.checkpoint_every or 0),
        tensorboard=bool(cfg.tensorboard),
        num_workers=int(cfg.num_workers or 0),
        check_every=int(cfg.check_every or 1),
        monitor_rows=int(cfg.monitor_rows or 0),
        best_by=str(cfg.best_by),
        monitor_every=int(cfg.monitor_every or 0),
    )


def resume_command(run: _Run) -> str:
    """The command that continues ``run``; the checkpoint restores everything else."""
    if run.ctx.distributed and not distributed.launched_by_nproc():
        return "relaunch the same torchrun command with --resume"
    parts = ["flashsim", "train", run.config.object, "--data", str(run.store)]
    parts += ["--out", str(run.out), "--resume"]
    if run.ctx.distributed:
        parts += ["--nproc", str(run.ctx.world_size)]
    return shlex.join(parts)


def _on(flag: object) -> str:
    return "on" if flag else "off"


def describe(run: _Run) -> str:
    """The multi-line summary of ``run`` (train.log, TensorBoard text)."""
    cfg, fc, hp, ctx = run.config, run.flow_config, run.hp, run.ctx
    lines = [
        f"flashsim {__version__}: training {cfg.object} from {run.store} "
        f"({run.train_loader.n_rows} train / {run.val_loader.n_rows} val rows, loader "
        f"{run.train_loader.kind})",
        f"preset {hp.preset}: {fc.num_flow_steps} flow steps, {fc.num_blocks} blocks x "
        f"{fc.hidden_features} hidden, {fc.num_bins} bins, tail bound {fc.tail_bound}, "
        f"{fc.activation}, batch norm {_on(fc.batch_norm)}, dropout {fc.dropout}, "
        f"standardized inputs {_on(fc.standardize)}, spline engine {fc.spline}; "
        f"{count_parameters(run.parts.flow):,} parameters",
        f"Adam lr {hp.lr:g}, {describe_schedule(hp)}, batch "
        f"{hp.batch_size} per process x {ctx.world_size} process(es), seed {hp.seed}",
        f"device {run.device}, {torch.get_num_threads()} CPU thread(s); tf32 "
        f"{_on(cfg.tf32)}, compile {_on(cfg.compile)}, deterministic "
        f"{_on(torch.are_deterministic_algorithms_enabled())}"
        + (", CUDA graphs on" if cfg.cuda_graphs else "")
        + (f", DDP over {ctx.world_size} ranks" if ctx.distributed else ""),
    ]
    if cfg.monitor_every:
        lines.append(
            f"conditioning monitor every {cfg.monitor_every} epoch(s) on "
            f"{min(int(cfg.monitor_rows or 0), run.val_loader.n_rows):,} val rows; best.pt "
            f"by {cfg.best_by}"
        )
    mid = run.progress.epoch
    if run.progress.epochs_done or mid is not None:
        where = f"epoch {run.progress.epochs_done + 1}" + (f", step {mid.steps}" if mid else "")
        lines.append(f"resuming at {where}")
    return "\n".join(lines)


def run_info(run: _Run) -> dict[str, Any]:
    """What ``run.json`` records: the run's options (as resolved), hyperparameters, flow,
    learning-rate cycles and environment; the same for every invocation of an unchanged
    run."""
    options = dataclasses.asdict(run.config)
    for name in _NOT_IN_RUN_CONFIG:
        options.pop(name)
    options.update(run_options(run).to_dict(), data=run.store)
    options.update(threads=torch.get_num_threads(), nproc=run.ctx.world_size)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        "hparams": run.hp.to_dict(),
        "lr_schedule": schedule_record(run.hp),
        "flow_config": run.flow_config.to_dict(),
        "store": str(run.store),
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "tool_version": __version__,
        "torch_version": torch.__version__,
    }
