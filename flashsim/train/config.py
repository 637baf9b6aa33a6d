"""What a training run is asked to do (:class:`TrainConfig`) and what it did (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flashsim.options import Choices
from flashsim.presets import PresetName
from flashsim.store import LoaderKind

__all__ = ["BEST_BY", "MONITOR_ROWS", "TrainConfig", "TrainResult"]

BestBy = Literal["nll", "conditioning"]
BEST_BY: Choices[BestBy] = Choices.of("best-by", BestBy)
"""What ``best.pt`` means (``flashsim train --best-by``; :mod:`flashsim.train.monitor`)."""
MONITOR_ROWS = 20_000
"""Default size of the conditioning monitor's fixed validation subset (rows)."""


@dataclass
class TrainConfig:
    """Options of :func:`flashsim.train.train` (the ``flashsim train`` command line).

    A new run takes what is left at ``None`` (or ``"auto"``) from the preset (``small`` by
    default) and the defaults below. With ``resume`` everything that shapes the run is
    the checkpoint's: an option left out is restored from it, and one given with another
    value is refused (:mod:`flashsim.train.resume`), except a larger ``epochs``, which
    extends the run with a new cosine cycle (:mod:`flashsim.train.schedule`).

    Attributes:
        object: ``"jets"`` or ``"muons"``.
        data: a store (``shards/jets.zarr``) or a directory of stores; default
            ``shards/`` (resume: the checkpoint's store).
        out: run directory (checkpoints, metrics, plots); default ``runs/<object>``.
        preset: one of :data:`flashsim.presets.PRESETS` (``"small"``, ``"paper"``).
        epochs, batch_size, lr, seed: override the preset (batch size is per process).
        flow: overrides of :class:`~flashsim.model.FlowConfig` fields, e.g.
            ``{"hidden_features": 128, "num_bins": 32, "spline": "nflows"}``.
        loader: loader kind passed to :func:`loaders.open` (:data:`flashsim.store.LOADER_KINDS`;
            ``"auto"`` picks one, or on resume the checkpoint's).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (:func:`flashsim.devices.parse_device`).
        resume: continue from ``out/checkpoints/last.pt``.
        checkpoint_every: also keep ``epoch-NNNN.pt`` every N epochs (default 0: never).
        max_steps_per_epoch: cap optimiser steps per epoch (quick runs; default: none).
        stop_after_epochs: stop (resumably) after this many epochs in this invocation,
            e.g. to fit a batch-system time limit.
        nproc: launch this many local processes (DDP); 1 = this process only.
        tf32: TF32 matmuls on CUDA (default off).
        compile: ``torch.compile`` the loss and its backward (``fullgraph=True`` with the
            fused spline engine; see :mod:`flashsim.train.step`; default off).
        cuda_graphs: capture the whole training step (forward, backward, Adam) in a CUDA
            graph and replay it per batch (CUDA, fused spline engine, one process; default off).
        deterministic: ``torch.use_deterministic_algorithms`` (default: on for CPU, off
            on CUDA).
        num_workers: loader worker processes (default 0).
        threads: torch intra-op CPU threads for this run (default: torch's choice; under
            ``nproc`` the cores are shared out). Small flows on a busy CPU often run
            faster with 1.
        check_every: steps between host syncs that check the loss is finite (and, under
            DDP, agree on a stop request); default 20.
        progress: show a tqdm progress bar (rank 0).
        tensorboard: write TensorBoard event files (default on).
        monitor_every: run the conditioning monitor every K epochs and after the last
            (:mod:`flashsim.train.monitor`; 0: off; default: the preset's, 1 for small,
            5 for paper).
        monitor_rows: rows of the fixed validation subset it uses (default 20 000).
        best_by: what ``best.pt`` is: ``"nll"`` (lowest validation loss, default) or
            ``"conditioning"`` (lowest conditioning score of the monitor).
        trace: diagnostics for tests and debugging: write per-step row fingerprints and a
            parameter checksum per rank to ``out/trace/`` (slow; small runs only).
    """

    object: str
    data: str | Path | None = None
    out: str | Path | None = None
    preset: PresetName | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    flow: dict = field(default_factory=dict)
    loader: LoaderKind = "auto"
    device: str = "auto"
    resume: bool = False
    checkpoint_every: int | None = None
    max_steps_per_epoch: int | None = None
    stop_after_epochs: int | None = None
    nproc: int = 1
    tf32: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    deterministic: bool | None = None
    num_workers: int | None = None
    threads: int | None = None
    check_every: int | None = None
    progress: bool = True
    tensorboard: bool | None = None
    monitor_every: int | None = None
    monitor_rows: int | None = None
    best_by: BestBy | None = None
    trace: bool = False

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs") / self.object


@dataclass
class TrainResult:
    """Outcome of :func:`flashsim.train.train` (as seen by rank 0).

    Attributes:
        out: the run directory.
        status: ``"completed"`` (all epochs), ``"paused"`` (``stop_after_epochs``) or
            ``"interrupted"`` (Ctrl-C/SIGTERM; a mid-epoch checkpoint was written).
        epochs_done: completed epochs.
        history: one metrics record per completed epoch (see :mod:`flashsim.train.metrics`).
        last_checkpoint: ``out/checkpoints/last.pt``.
        best_checkpoint: ``out/checkpoints/best.pt`` (lowest validation loss), if any.
        best_val_loss: its validation loss.
        resume_command: the command that continues this run (unless completed).
        rank: the process that returned this result (0 unless under torchrun).
        best_by: what ``best_checkpoint`` is the best by (``"nll"`` or ``"conditioning"``).
    """

    out: Path
    status: str
    epochs_done: int
    history: list[dict]
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_val_loss: float
    resume_command: str | None = None
    rank: int = 0
    best_by: str = "nll"
