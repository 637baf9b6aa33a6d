"""The training loop: maximum likelihood of the conditional spline flow on a store.

:func:`train` opens the store's ``train`` and ``val`` splits with :func:`loaders.open`,
builds the flow (:func:`flashsim.model.build_flow`) from the preset plus overrides,
and runs Adam with cosine annealing (stepped once per epoch, as the original) for the
requested epochs. Per epoch it records the mean training and validation negative
log-likelihood per row (nats), the learning rate and where the time went
(:mod:`flashsim.train.metrics`), and writes ``checkpoints/last.pt``, ``best.pt`` (lowest
validation loss) and, with ``checkpoint_every``, ``epoch-NNNN.pt``
(:mod:`flashsim.train.checkpointing`). ``resume`` continues bit-for-bit on the same
hardware: model, optimiser, scheduler, loader position and every RNG are restored.

Under ``torchrun`` or with ``nproc > 1`` the flow is wrapped in DDP (batch norm
synchronised on CUDA), each rank reads its own shard of the rows, losses and timings
are summed over ranks, and only rank 0 writes files.

Run directory (``runs/<object>/`` by default)::

    checkpoints/last.pt  best.pt  epoch-0005.pt
    metrics.jsonl  loss.png  tensorboard/  train.log  run.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time

import numpy as np
import torch
from torch import nn

from flashsim import __version__
from flashsim.checkpoint import Checkpoint
from flashsim.devices import resolve_device
from flashsim.errors import FlashSimError
from flashsim.layouts import layout_for
from flashsim.model import build_flow
from flashsim.store import check_store
from flashsim.train import distributed
from flashsim.train.about import describe, resume_command, run_info, run_options
from flashsim.train.checkpointing import RunCheckpoints, RunProgress, load_resumable
from flashsim.train.config import TrainConfig, TrainResult
from flashsim.train.interrupt import StopRequest
from flashsim.train.loop import (
    EpochLoop,
    Interrupted,
    NegLogLikelihood,
    NonFiniteLossError,
    Trainable,
)
from flashsim.train.monitor import ConditioningMonitor, is_best, is_due
from flashsim.train.resume import resolve_config
from flashsim.train.runlog import RunLog
from flashsim.train.schedule import cosine_schedule, restart_if_due
from flashsim.train.setup import (
    check_loader_kind,
    check_out_dir,
    open_loaders,
    precheck,
    resolve_hparams,
    standardize_from_store,
)
from flashsim.train.step import make_train_step

__all__ = ["NonFiniteLossError", "train"]

log = logging.getLogger("flashsim.train")


class _Run:
    """One process's share of a training run: sets it up, runs the epochs, and says
    where it stopped. The pieces: :class:`RunCheckpoints` (checkpoints), :class:`RunLog`
    (train.log, run.json, metrics), :class:`EpochLoop` (the passes of an epoch)."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: distributed.DistContext,
        device: torch.device,
        saved: Checkpoint | None = None,
    ) -> None:
        self.config = config  # resolved (resume.resolve_config): no option left out
        self.ctx = ctx
        self.device = device
        self.out = config.out_dir
        self.saved = saved
        self.checkpoints = RunCheckpoints(self.out, ctx, int(config.checkpoint_every or 0))
        self.progress = RunProgress()

    # -- setup ------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.config  # train() has checked the loader kind and the run directory
        saved = self.saved
        if cfg.resume and saved is None:  # a process started by --nproc: read it again
            saved = load_resumable(self.out, cfg.object)
        hp, self.flow_config = resolve_hparams(cfg, layout_for(cfg.object), saved)
        self.train_loader, self.val_loader, self.hp = open_loaders(cfg, hp, self.ctx, self.device)
        self.store = self.train_loader.path
        self.meta = self.train_loader.metadata
        self.layout = check_store(self.store, self.meta, cfg.object)
        if saved is not None:
            self.checkpoints.check_resumable(saved, self.store, self.meta, cfg.loader)
        self.parts = self._build(saved)
        self.monitor = (
            ConditioningMonitor(self.store, self.meta, self.layout, cfg.monitor_rows, hp.seed)
            if cfg.monitor_every and cfg.monitor_rows and self.ctx.is_main
            else None
        )
        if self.progress.loader_state is not None:
            # Refused now, before anything is written, if the batch order would differ
            # (applied again, identically, when the epoch starts).
            self.train_loader.load_state_dict(self.progress.loader_state)
        self.loop = EpochLoop(
            cfg,
            self.ctx,
            self.device,
            self.parts,
            self.train_loader,
            self.val_loader,
            self.progress,
            self.hp.epochs,
            self.checkpoints.last,
        )

    def _build(self, saved: Checkpoint | None) -> Trainable:
        """The flow, Adam and the schedule: new, or as ``saved`` left them (the order of
        the random draws is part of the bit-exact resume)."""
        seed = self.hp.seed
        flow = build_flow(self.flow_config, seed=seed)
        if self.flow_config.standardize and saved is None:
            standardize_from_store(flow, self.store, self.layout)
        flow.to(self.device)
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.hp.lr)
        scheduler = cosine_schedule(optimizer, self.hp)
        # Global RNGs (dropout, anything else random) seeded per rank; restored on resume.
        torch.manual_seed(seed + self.ctx.rank)
        np.random.seed((seed + self.ctx.rank) % 2**32)  # noqa: NPY002 (legacy global RNG)
        random.seed(seed + self.ctx.rank)
        if saved is not None:
            assert saved.optimizer is not None and saved.scheduler is not None
            flow.load_state_dict(saved.model)
            optimizer.load_state_dict(saved.optimizer)
            scheduler.load_state_dict(saved.scheduler)
            self.progress = RunProgress.restored(saved, self.ctx)
        model = self._wrap(flow)
        step = make_train_step(
            model,
            optimizer,
            self.device,
            spline=self.flow_config.spline,
            compile=bool(self.config.compile),
            cuda_graphs=bool(self.config.cuda_graphs),
            distributed=self.ctx.distributed,
        )
        return Trainable(flow, model, optimizer, scheduler, step)

    def _wrap(self, flow: nn.Module) -> nn.Module:
        model: nn.Module = NegLogLikelihood(flow)
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda" and self.flow_config.batch_norm:
                # SyncBatchNorm needs a GPU; on CPU each rank normalises with its own batch
                # and DDP broadcasts rank 0's running statistics.
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return model

    # -- checkpoints ---------------------------------------------------------------

    def _checkpoint(self, mid_epoch: bool, ranks: list[dict]) -> Checkpoint:
        # ``ranks``: what differs between processes (RNG; mid-epoch also loader position
        # and running totals), one entry per rank so each resumes its own.
        progress = self.progress
        return Checkpoint(
            object=self.config.object,
            flow_config=self.flow_config,
            hparams=self.hp,
            model=self.parts.flow.state_dict(),
            optimizer=self.parts.optimizer.state_dict(),
            scheduler=self.parts.scheduler.state_dict(),
            epochs_done=progress.epochs_done,
            mid_epoch=mid_epoch,
            epoch_progress=[r["progress"] for r in ranks] if mid_epoch else None,
            loader=(
                {
                    "kind": self.train_loader.kind,
                    "world_size": self.ctx.world_size,
                    "states": [r["loader"] for r in ranks],
                }
                if mid_epoch
                else None
            ),
            rng=[r["rng"] for r in ranks],
            history=list(progress.history),
            best_val_loss=progress.best_val,
            store=str(self.store),
            store_metadata=self.meta,
            world_size=self.ctx.world_size,
            threads=torch.get_num_threads(),
            run_options=run_options(self).to_dict(),
            tool_version=__version__,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    def save(self, mid_epoch: bool, is_best: bool = False) -> None:
        """Collective: every rank's state into ``last.pt`` (rank 0 writes)."""
        self.checkpoints.save(self.progress, self._checkpoint, mid_epoch, is_best)

    # -- the epochs ----------------------------------------------------------------

    def run(self) -> TrainResult:
        self.prepare()
        try:
            with RunLog(
                self.out, self.ctx.is_main, self.progress.history, bool(self.config.tensorboard)
            ) as runlog:
                runlog.start(run_info(self), describe(self))
                status = self._epochs(runlog)
                runlog.finish(status)
        finally:
            if self.loop.trace is not None:
                self.loop.trace.close()
        return self._result(status)

    def _epochs(self, runlog: RunLog) -> str:
        """Run epochs until done, a stop request or ``stop_after_epochs``; the status."""
        epochs, progress, ran = self.hp.epochs, self.progress, 0
        with StopRequest() as stop:
            while progress.epochs_done < epochs:
                epoch = progress.epochs_done
                self.parts.scheduler = restart_if_due(self.parts.scheduler, self.hp, epoch)
                lr = self.parts.lr
                try:
                    acc = self.loop.train_epoch(epoch, stop)
                except Interrupted:
                    self.save(mid_epoch=True)
                    return "interrupted"
                val_loss, val_s = self.loop.validate(epoch)
                record = self.loop.record(epoch, acc, val_loss, val_s, lr)
                if self.monitor and is_due(epoch + 1, int(self.config.monitor_every or 0), epochs):
                    record.update(self.monitor.measure(self.parts.flow))
                self.parts.scheduler.step()
                best = is_best(
                    record, progress.history, progress.best_val, str(self.config.best_by)
                )
                progress.history.append(record)
                progress.epochs_done = epoch + 1
                progress.epoch = None
                progress.best_val = min(progress.best_val, val_loss)
                self.save(mid_epoch=False, is_best=best)
                runlog.epoch(record, progress.history, epochs, best)
                ran += 1
                (stop_now,) = self.loop.agree(stop.requested)
                if stop_now and progress.epochs_done < epochs:
                    return "interrupted"
                limit = self.config.stop_after_epochs
                if limit and ran >= limit and progress.epochs_done < epochs:
                    return "paused"
        return "completed"

    def _result(self, status: str) -> TrainResult:
        last, best = self.checkpoints.last, self.checkpoints.best
        result = TrainResult(
            out=self.out,
            status=status,
            epochs_done=self.progress.epochs_done,
            history=list(self.progress.history),
            last_checkpoint=last if last.exists() else None,
            best_checkpoint=best if best.exists() else None,
            best_val_loss=self.progress.best_val,
            resume_command=None if status == "completed" else resume_command(self),
            rank=self.ctx.rank,
            best_by=str(self.config.best_by),
        )
        if self.ctx.is_main and status != "completed":
            mid = self.progress.epoch
            where = (
                f"in epoch {self.progress.epochs_done + 1} (step {mid.steps})"
                if status == "interrupted" and mid is not None
                else f"after epoch {self.progress.epochs_done}"
            )
            log.info(f"Stopped {where}; checkpoint {last}. Resume with: {result.resume_command}")
        return result


@contextlib.contextmanager
def _torch_flags(config: TrainConfig, device: torch.device):
    """Apply tf32/determinism for the run and restore the previous global settings."""
    deterministic = config.deterministic
    if deterministic is None:
        deterministic = device.type == "cpu"
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_num_threads(),
    )
    if config.threads:
        torch.set_num_threads(int(config.threads))
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(config.tf32)
        torch.backends.cudnn.allow_tf32 = bool(config.tf32)
    elif config.tf32:
        log.warning("--tf32 has no effect on %s", device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cuda.matmul.allow_tf32 = previous[1]
        torch.backends.cudnn.allow_tf32 = previous[2]
        torch.set_num_threads(previous[3])


def _train_process(config: TrainConfig, saved: Checkpoint | None = None) -> TrainResult:
    device = resolve_device(config.device)
    ctx = distributed.setup(device.type)
    if device.type == "cuda" and ctx.distributed:
        device = torch.device("cuda", ctx.local_rank)
    elif device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # cuda:N: CUDA events and the allocator use GPU N
    failed = True
    try:
        with _torch_flags(config, device):
            result = _Run(config, ctx, device, saved).run()
        failed = False
        return result
    finally:
        distributed.teardown(ctx, failed)


def train(config: TrainConfig) -> TrainResult:
    """Train a flow as described by ``config``; see the module docstring.

    With ``config.nproc > 1`` this launches that many local processes (DDP, gloo on
    CPU, NCCL on CUDA) and returns rank 0's result; under ``torchrun`` every process
    calls it with ``nproc=1``.

    Raises:
        FlashSimError: bad options, a missing/wrong store, an existing run without
            ``resume``, or a non-finite loss (:class:`NonFiniteLossError`).

    Example:
        >>> from flashsim.train import TrainConfig, train              # doctest: +SKIP
        >>> result = train(TrainConfig("jets", data="shards", epochs=2))  # doctest: +SKIP
        >>> result.history[-1]["val_loss"]                              # doctest: +SKIP
    """
    check_loader_kind(config.object, config.loader)
    check_out_dir(config.out_dir, config.resume)
    saved = load_resumable(config.out_dir, config.object) if config.resume else None
    config = resolve_config(config, saved)
    if config.nproc > 1:
        device = resolve_device(config.device)
        if device.index is not None:
            raise FlashSimError(
                f"--nproc {config.nproc} gives each process its own GPU (cuda:0, cuda:1, ...); "
                f"pass --device cuda instead of --device {config.device}."
            )
        precheck(config)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if config.device in ("cuda", "auto") and gpus and config.nproc > gpus:
            raise FlashSimError(
                f"--nproc {config.nproc} needs one GPU per process but only {gpus} are "
                "visible; lower --nproc or pass --device cpu."
            )
        return distributed.launch(
            config.nproc, _train_process, dataclasses.replace(config, nproc=1)
        )
    return _train_process(config, saved)
