"""Per-epoch training metrics: JSON lines, TensorBoard and a loss-curve PNG.

One record per epoch (a flat dict of numbers), written by rank 0 only:

* ``metrics.jsonl``: one JSON object per line, replaced whole every epoch (and from the
  checkpoint's history when a run resumes), so it never holds epochs the checkpoint does
  not know nor ends with a partial line;
* ``tensorboard/``: the same scalars (``tensorboard --logdir runs/``);
* ``loss.png``: training and validation loss per epoch, refreshed each epoch.

Record keys: ``epoch`` (1-based), ``train_loss`` and ``val_loss`` (mean negative
log-likelihood per row, nats), ``lr``, ``rows`` (training rows seen, all ranks),
``steps``, ``epoch_s`` (wall seconds of the training pass), ``data_wait_s`` (host
blocked waiting for the loader), ``compute_s`` (forward + backward + optimiser step:
CPU wall time, or GPU time from CUDA events), ``host_s`` (the rest:
``epoch_s - data_wait_s - compute_s``, floored at 0), ``data_wait_frac``,
``samples_per_s`` (rows/s, all ranks), ``val_s``; after the epochs the conditioning
monitor measured (:mod:`flashsim.train.monitor`) also its keys (``delta_nll``,
``pit_ks_max``/``pit_ks_floor``, ``max_delta_auc``/``…_floor``,
``profile_chi2_ndf_max``/``…_floor``, ``conditioning_score``, ``monitor_s``; TensorBoard
tags ``conditioning/<key>``), shown in the lower panel of ``loss.png``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flashsim.outputs import (
    atomic_output,
    make_output_dir,
    output_errors,
    strict_json,
    write_text_atomic,
)
from flashsim.train.monitor import RECORD_KEYS

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
TENSORBOARD_DIR = "tensorboard"

_SCALARS = (
    "train_loss",
    "val_loss",
    "lr",
    "epoch_s",
    "data_wait_s",
    "compute_s",
    "host_s",
    "data_wait_frac",
    "samples_per_s",
    "val_s",
)


_RATIOS = (
    ("PIT KS", "pit_ks_max", "pit_ks_floor"),
    ("ΔAUC", "max_delta_auc", "max_delta_auc_floor"),
    ("profile χ²/ndf", "profile_chi2_ndf_max", "profile_chi2_ndf_floor"),
)


def _plot_conditioning(ax: Any, history: Sequence[dict]) -> None:
    """The monitor's panel: each check over its floor, the combined score, and ΔNLL."""
    monitored = [r for r in history if "conditioning_score" in r]
    epochs = [r["epoch"] for r in monitored]
    for label, value, floor in _RATIOS:
        ratios = [r[value] / r[floor] if r[floor] else math.nan for r in monitored]
        ax.plot(epochs, ratios, ".-", ms=3, label=label)
    ax.plot(epochs, [r["conditioning_score"] for r in monitored], "k-", lw=2, label="score")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("check / its floor")
    ax.grid(alpha=0.3)
    nll = ax.twinx()
    nll.plot(epochs, [r["delta_nll"] for r in monitored], "m--", lw=1)
    nll.set_ylabel("ΔNLL [nats/row] (dashed)", color="m")
    ax.legend(fontsize="small", ncol=2)


def plot_losses(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Write the loss-curve PNG (train and validation NLL per epoch, and the conditioning
    monitor's panel when it ran) atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [r["epoch"] for r in history]
    panels = 2 if any("conditioning_score" in r for r in history) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(6.4, 4.2 * panels), dpi=100, squeeze=False)
    ax = axes[0, 0]
    try:
        ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
        ax.plot(epochs, [r["val_loss"] for r in history], "s-", ms=3, label="validation")
        if history:
            best = min(history, key=lambda r: r["val_loss"])
            ax.axvline(
                best["epoch"],
                color="grey",
                ls=":",
                lw=1,
                label=f"lowest val loss (epoch {best['epoch']})",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("negative log-likelihood per row [nats]")
        ax.grid(alpha=0.3)
        ax.legend()
        if panels == 2:
            _plot_conditioning(axes[1, 0], history)
        fig.tight_layout()
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(strict_json(r)) + "\n" for r in records)


class _QuietWriterThread:
    """``threading.excepthook`` while a run writes TensorBoard files. TensorBoard's event
    writer thread hands a failed write (a full disk) to the training thread, which reports
    it as an output error, and then re-raises it, which would print a traceback: that one
    is not printed. Every other thread's error goes to the previous hook."""

    def __init__(self, previous: Callable[[threading.ExceptHookArgs], Any]) -> None:
        self.previous = previous

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        writer = type(args.thread).__module__.startswith("tensorboard.")
        if not (writer and issubclass(args.exc_type, OSError)):
            self.previous(args)


class MetricsLogger:
    """Writes epoch records to ``out_dir`` (JSON lines, TensorBoard, PNG).

    ``metrics.jsonl`` and ``loss.png`` are replaced whole (atomically) every epoch, so a
    full disk or a kill leaves the previous complete version, never a partial line; a
    failed write is raised as a one-paragraph :class:`~flashsim.errors.StoreError`.

    Args:
        out_dir: the run directory.
        history: records already known (from a resumed checkpoint); the JSON-lines
            file is rewritten to exactly these before new epochs are added.
        enabled: ``False`` on ranks other than 0: every method is then a no-op.
        tensorboard: also write TensorBoard event files.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        history: Sequence[dict] = (),
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        self._hook: _QuietWriterThread | None = None
        if not enabled:
            return
        make_output_dir(self.out_dir)
        write_text_atomic(self.out_dir / METRICS_FILE, _jsonl(history))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._hook = _QuietWriterThread(threading.excepthook)
            threading.excepthook = self._hook
            try:
                with output_errors(self._tb_dir):
                    # purge_step drops events of epochs after the resumed checkpoint.
                    self._tb = SummaryWriter(str(self._tb_dir), purge_step=len(history) + 1)
            except BaseException:
                self.close()
                raise

    @property
    def _tb_dir(self) -> Path:
        return self.out_dir / TENSORBOARD_DIR

    def log_text(self, tag: str, text: str) -> None:
        """Record a text note (e.g. the options that were on) in TensorBoard."""
        if self._tb is not None:
            with output_errors(self._tb_dir):
                self._tb.add_text(tag, text)

    def log_epoch(self, record: dict, history: Sequence[dict]) -> None:
        """Add ``record`` (the last of ``history``) and refresh the plot of ``history``."""
        if not self.enabled:
            return
        write_text_atomic(self.out_dir / METRICS_FILE, _jsonl(history))
        if self._tb is not None:
            with output_errors(self._tb_dir):
                for key in _SCALARS:
                    if key in record:
                        self._tb.add_scalar(key, record[key], record["epoch"])
                for key in RECORD_KEYS:
                    if key in record:
                        self._tb.add_scalar(f"conditioning/{key}", record[key], record["epoch"])
                self._tb.flush()
        plot_losses(history, self.out_dir / LOSS_PLOT)

    def close(self) -> None:
        """Close the TensorBoard files (raises a write that failed on the way)."""
        tb, self._tb = self._tb, None
        try:
            if tb is not None:
                with output_errors(self._tb_dir):
                    tb.close()
        finally:
            if self._hook is not None and threading.excepthook is self._hook:
                threading.excepthook = self._hook.previous
            self._hook = None
