"""One process's epoch: the training pass (timed, resumable mid-epoch, Ctrl-C aware),
the validation pass and the epoch's metrics record, summed over ranks.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

import numpy as np
import torch
from nflows.flows import Flow
from torch import nn

from flashsim.errors import FlashSimError
from flashsim.layouts import Layout
from flashsim.train import distributed
from flashsim.train.checkpointing import EpochProgress, RunProgress
from flashsim.train.config import TrainConfig
from flashsim.train.interrupt import StopRequest
from flashsim.train.step import TrainStep

if TYPE_CHECKING:
    from tqdm import tqdm

    from loaders.base import BaseLoader

TRACE_DIR = "trace"


class NonFiniteLossError(FlashSimError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


class Interrupted(Exception):
    """A stop request was honoured inside an epoch (its state is in the run's progress)."""


class NegLogLikelihood(nn.Module):
    """``forward(x, y)`` = per-row ``-log p(x | y)``, shape ``(B,)``: the module DDP wraps
    (``Flow.log_prob`` is not ``forward``, so DDP could not hook it directly)."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x, context=y)


@dataclass
class Trainable:
    """What the optimiser works on: the flow, the module trained (the flow's negative
    log-likelihood, DDP-wrapped as asked), Adam, its cosine schedule, and the optimiser
    step on a batch (eager, compiled or a CUDA graph: :func:`flashsim.train.step.make_train_step`)."""

    flow: Flow
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def row_fingerprints(rows: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint per row of float32 ``rows`` ``(N, C)`` (equal rows, equal
    fingerprints; used by ``trace`` to check that ranks see disjoint rows)."""
    bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32).astype(np.uint64)
    weights = np.random.default_rng(12345).integers(1, 2**63, size=bits.shape[1], dtype=np.uint64)
    weights |= np.uint64(1)
    with np.errstate(over="ignore"):
        return (bits * weights[None, :]).sum(axis=1, dtype=np.uint64)


class StepTrace:
    """``out/trace/rank<R>.jsonl``: per step the rows' fingerprints and a checksum of the
    parameters (the ``trace`` diagnostics; slow, small runs only)."""

    def __init__(self, out: Path, rank: int, flow: nn.Module) -> None:
        self.path = out / TRACE_DIR / f"rank{rank}.jsonl"
        self.flow = flow
        self._file: TextIO | None = None

    def write(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 (closed by close())
        rows = torch.cat([y, x], dim=1).detach().cpu().numpy()
        with torch.no_grad():
            checksum = sum(
                float(p.double().sum() + p.double().square().sum()) for p in self.flow.parameters()
            )
        fingerprints = [str(v) for v in row_fingerprints(rows).tolist()]
        line = {"epoch": epoch, "step": step, "rows": fingerprints, "param_checksum": checksum}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _ComputeClock:
    """Compute time of the steps: CPU wall time, or GPU time from CUDA events (read only
    at the host syncs, so timing adds none)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start = 0.0

    def start(self) -> None:
        if self.cuda:
            self._events.append(
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            )
            self._events[-1][0].record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        """Seconds since :meth:`start` on the CPU; 0 on CUDA (see :meth:`collect`)."""
        if self.cuda:
            self._events[-1][1].record()
            return 0.0
        return time.perf_counter() - self._start

    def collect(self) -> float:
        """GPU seconds of the steps since the last call (CUDA; 0 on the CPU)."""
        seconds = sum(a.elapsed_time(b) for a, b in self._events) / 1e3
        self._events.clear()
        return seconds


class EpochLoop:
    """The training and validation passes of one process.

    Args:
        config: the run's options (``check_every``, ``max_steps_per_epoch``, ``trace``,
            ``progress``).
        ctx, device: this process's rank and device.
        parts: what is trained.
        train_loader, val_loader: this rank's loaders.
        progress: the run's progress; :meth:`train_epoch` keeps ``progress.epoch``
            current, so a stop inside an epoch can be saved and resumed exactly.
        epochs: the run's epochs (for the progress bar).
        last_checkpoint: named in the error when the loss stops being finite.
    """

    def __init__(
        self,
        config: TrainConfig,
        ctx: distributed.DistContext,
        device: torch.device,
        parts: Trainable,
        train_loader: BaseLoader,
        val_loader: BaseLoader,
        progress: RunProgress,
        epochs: int,
        last_checkpoint: Path,
    ) -> None:
        self.config, self.ctx, self.device, self.parts = config, ctx, device, parts
        self.train_loader, self.val_loader = train_loader, val_loader
        self.layout: Layout = train_loader.layout
        self.progress = progress
        self.epochs = epochs
        self.last_checkpoint = last_checkpoint
        self.check_every = max(1, int(config.check_every or 1))  # resolved: never None
        self.trace = StepTrace(config.out_dir, ctx.rank, parts.flow) if config.trace else None

    # -- training pass ---------------------------------------------------------------

    def train_epoch(self, epoch: int, stop: StopRequest) -> EpochProgress:
        """Train one epoch (or its rest, after a mid-epoch resume); its totals.

        Raises:
            Interrupted: a stop request was honoured; ``progress`` holds the state.
            NonFiniteLossError: the loss stopped being finite.
        """
        acc, steps_total = self._begin(epoch)
        # One float64 accumulator for the whole epoch, read (never reset) at sync points:
        # a resumed epoch continues the same sum, so its loss is bit-identical.
        loss_acc = torch.tensor(acc.loss_sum, dtype=torch.float64, device=self.device)
        clock = _ComputeClock(self.device.type == "cuda")
        bar = self._progress_bar(epoch, steps_total, acc.steps)
        batches = iter(self.train_loader)
        started = time.perf_counter() - acc.elapsed_s
        try:
            while acc.steps < steps_total:
                t0 = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                acc.data_wait_s += time.perf_counter() - t0
                if acc.steps == 0:
                    self._check_batch(x, y)
                self._step(epoch, x, y, acc, loss_acc, clock)
                at_check = acc.steps % self.check_every == 0 or acc.steps == steps_total
                # Single process: honour Ctrl-C at the next step. DDP: ranks must agree,
                # so the flag is exchanged only at the (common) check points.
                if at_check or (stop.requested and not self.ctx.distributed):
                    self._sync(epoch, acc, loss_acc, clock, stop, bar, started)
                bar.update(1)
        finally:
            bar.close()
            # Stop the loader's background work now (an early stop leaves it mid-epoch).
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        acc.loss_sum = float(loss_acc.item())
        acc.compute_s += clock.collect()
        acc.elapsed_s = time.perf_counter() - started
        return acc

    def _begin(self, epoch: int) -> tuple[EpochProgress, int]:
        """The epoch's running totals (a resumed epoch's, or new ones) and its steps."""
        steps_total = len(self.train_loader)
        if self.config.max_steps_per_epoch:
            steps_total = min(steps_total, int(self.config.max_steps_per_epoch))
        self.train_loader.set_epoch(epoch)
        if self.progress.epoch is not None:
            assert self.progress.loader_state is not None  # saved with the epoch's totals
            acc = self.progress.epoch
            self.train_loader.load_state_dict(self.progress.loader_state)
            self.progress.loader_state = None
        else:
            acc = EpochProgress()
        self.progress.epoch = acc
        self.parts.model.train()
        return acc, steps_total

    def _progress_bar(self, epoch: int, total: int, initial: int) -> tqdm[NoReturn]:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            disable=not (self.config.progress and self.ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )

    def _step(
        self,
        epoch: int,
        x: torch.Tensor,
        y: torch.Tensor,
        acc: EpochProgress,
        loss_acc: torch.Tensor,
        clock: _ComputeClock,
    ) -> None:
        clock.start()
        nll = self.parts.step(x, y)  # zero_grad, loss, backward, optimiser step
        acc.compute_s += clock.stop()
        loss_acc += nll.detach().sum(dtype=torch.float64)
        acc.steps += 1
        acc.rows += int(x.shape[0])
        if self.trace is not None:
            self.trace.write(epoch, acc.steps, x, y)

    def _sync(
        self,
        epoch: int,
        acc: EpochProgress,
        loss_acc: torch.Tensor,
        clock: _ComputeClock,
        stop: StopRequest,
        bar: tqdm[NoReturn],
        started: float,
    ) -> None:
        """A host sync: check the loss is finite and (with all ranks) for a stop request.

        Raises:
            Interrupted: after recording the loader position in ``progress``.
        """
        acc.loss_sum = float(loss_acc.item())
        acc.compute_s += clock.collect()
        bad, stop_now = self.agree(not math.isfinite(acc.loss_sum), stop.requested)
        if bad:
            self._raise_non_finite("training", epoch, acc.steps)
        bar.set_postfix(loss=f"{acc.loss_sum / max(acc.rows, 1):.4f}", refresh=False)
        if stop_now:
            acc.elapsed_s = time.perf_counter() - started
            # Taken here, while the loader's iterator is alive and exactly acc.steps
            # batches have been consumed.
            self.progress.loader_state = self.train_loader.state_dict()
            bar.update(1)
            raise Interrupted

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        want = (self.layout.n_targets, self.layout.n_conditioning)
        if x.ndim != 2 or y.ndim != 2 or (x.shape[1], y.shape[1]) != want:
            raise FlashSimError(
                f"The {self.config.loader} loader yielded batches of shapes {tuple(x.shape)} / "
                f"{tuple(y.shape)} from {self.train_loader.path}; expected (B, {want[0]}) "
                f"targets and (B, {want[1]}) conditioning for {self.config.object}."
            )

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank (collective)."""
        values = distributed.all_reduce([float(f) for f in flags], self.ctx, self.device, op="max")
        return [v > 0 for v in values]

    def _raise_non_finite(self, where: str, epoch: int, step: int | None) -> None:
        at = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        last = self.last_checkpoint
        kept = (
            f"The last good checkpoint {last} (epoch {self.progress.epochs_done}) is intact"
            if last.exists()
            else "No checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Training stopped: the {where} loss became NaN or infinite at {at} (learning rate "
            f"{self.parts.lr:.3g}); nothing from this epoch was saved. {kept}. Usually the "
            "learning rate is too high (lower --lr and start a new run) or the store "
            f"{self.train_loader.path} holds extreme or non-finite values (check its "
            "preprocessing)."
        )

    # -- validation and the record ---------------------------------------------------

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[float, float]:
        """``(mean validation NLL per row over all ranks, seconds)``."""
        start = time.perf_counter()
        flow = self.parts.flow
        flow.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        rows = 0
        for x, y in self.val_loader:
            total += (-flow.log_prob(x, context=y)).sum(dtype=torch.float64)
            rows += int(x.shape[0])
        flow.train()
        loss_sum, n = distributed.all_reduce([float(total.item()), rows], self.ctx, self.device)
        val_loss = loss_sum / max(n, 1)
        if not math.isfinite(val_loss):
            self._raise_non_finite("validation", epoch, None)
        return val_loss, time.perf_counter() - start

    def record(
        self, epoch: int, acc: EpochProgress, val_loss: float, val_s: float, lr: float
    ) -> dict:
        """The epoch's metrics record (:mod:`flashsim.train.metrics`), over all ranks."""
        ws = self.ctx.world_size
        loss_sum, rows, steps, wait, compute, wall = distributed.all_reduce(
            [acc.loss_sum, acc.rows, acc.steps, acc.data_wait_s, acc.compute_s, acc.elapsed_s],
            self.ctx,
            self.device,
        )
        wait, compute, wall = wait / ws, compute / ws, wall / ws
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(rows, 1),
            "val_loss": val_loss,
            "lr": lr,
            "rows": int(rows),
            "steps": int(steps / ws),
            "epoch_s": wall,
            "data_wait_s": wait,
            "compute_s": compute,
            "host_s": max(wall - wait - compute, 0.0),
            "data_wait_frac": wait / wall if wall > 0 else 0.0,
            "samples_per_s": rows / wall if wall > 0 else 0.0,
            "val_s": val_s,
        }
