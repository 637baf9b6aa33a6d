"""A run's checkpoints: ``checkpoints/last.pt`` every epoch (and on Ctrl-C, mid-epoch),
``best.pt`` (lowest validation loss) and ``epoch-NNNN.pt`` (``checkpoint_every``), and
the checks before a run resumes from one.

Every rank contributes what differs between processes (RNG states; mid-epoch also the
loader position and running totals); rank 0 writes the file
(:func:`flashsim.checkpoint.save_checkpoint`, atomic).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flashsim.checkpoint import (
    Checkpoint,
    capture_rng_state,
    copy_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from flashsim.errors import FlashSimError
from flashsim.train import distributed
from flashsim.train.setup import BEST, CHECKPOINT_DIR, LAST


@dataclass
class EpochProgress:
    """Running totals of the current epoch (saved in mid-epoch checkpoints)."""

    steps: int = 0
    rows: int = 0
    loss_sum: float = 0.0
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    elapsed_s: float = 0.0


@dataclass
class RunProgress:
    """Where a run stands: completed epochs, their records, the best validation loss,
    and inside an epoch its running totals and the loader position to resume from."""

    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    epochs_done: int = 0
    epoch: EpochProgress | None = None
    loader_state: dict | None = None

    @classmethod
    def restored(cls, saved: Checkpoint, ctx: distributed.DistContext) -> RunProgress:
        """This rank's progress from ``saved``; also restores its RNG states."""
        if len(saved.rng) == ctx.world_size:
            restore_rng_state(saved.rng[ctx.rank])
        progress = cls(list(saved.history), float(saved.best_val_loss), int(saved.epochs_done))
        if saved.mid_epoch:
            assert saved.epoch_progress is not None and saved.loader is not None
            progress.epoch = EpochProgress(**saved.epoch_progress[ctx.rank])
            progress.loader_state = saved.loader["states"][ctx.rank]
        return progress


_STORE_IDENTITY = ("layout", "preprocessing", "rows", "seed", "inputs")
"""The store metadata that must match for a run to resume on a store (its path may differ:
a copied or moved store resumes)."""


def _identity(meta: dict, key: str) -> object:
    value = meta.get(key)
    if key == "inputs" and isinstance(value, list):  # the files' content, not their paths
        return [(i.get("sha256"), i.get("events")) for i in value if isinstance(i, dict)]
    return value


def load_resumable(out: Path, obj: str) -> Checkpoint:
    """``out/checkpoints/last.pt``, checked to be a model of ``obj``."""
    last = out / CHECKPOINT_DIR / LAST
    saved = load_checkpoint(last, map_location="cpu")
    if saved.object != obj:
        raise FlashSimError(
            f"{last} is a {saved.object} model; it cannot resume `train {obj}`. Use the --out "
            f"of a {obj} run."
        )
    return saved


class RunCheckpoints:
    """The ``checkpoints/`` folder of the run directory ``out``.

    Args:
        out: the run directory.
        ctx: this process's place in the process group (rank 0 writes).
        every: also keep ``epoch-NNNN.pt`` every this many epochs (0: never).
    """

    def __init__(self, out: Path, ctx: distributed.DistContext, every: int = 0) -> None:
        self.dir = out / CHECKPOINT_DIR
        self.last = self.dir / LAST
        self.best = self.dir / BEST
        self.ctx = ctx
        self.every = every

    def check_resumable(self, saved: Checkpoint, store: Path, meta: dict, kind: str) -> None:
        """Refuse to resume on other data (differently prepared, other rows or inputs),
        or mid-epoch with another loader kind (files of version 1 record no other)."""
        for key in _STORE_IDENTITY:
            if key in saved.store_metadata and _identity(saved.store_metadata, key) != (
                _identity(meta, key)
            ):
                raise FlashSimError(
                    f"The store {store} differs in its {key} from the one the checkpoint "
                    f"{self.last} was trained on ({saved.store}); resuming on other data "
                    "would mix two datasets. Nothing was changed. Use the original store "
                    "(--data) or start a new run with another --out."
                )
        info = saved.loader or {}
        if saved.mid_epoch and info.get("kind") != kind:
            raise FlashSimError(
                f"{self.last} was saved in the middle of an epoch with --loader "
                f"{info.get('kind')}; resume with the same loader (not {kind})."
            )

    def save(
        self,
        progress: RunProgress,
        build: Callable[[bool, list[dict]], Checkpoint],
        mid_epoch: bool,
        is_best: bool = False,
    ) -> None:
        """Collective: gather every rank's own state; rank 0 writes ``build(mid_epoch,
        ranks)`` to ``last.pt`` (and copies it to ``best.pt``/``epoch-NNNN.pt``)."""
        mine: dict = {"rng": capture_rng_state()}
        if mid_epoch:
            assert progress.epoch is not None
            mine["loader"] = progress.loader_state
            mine["progress"] = dataclasses.asdict(progress.epoch)
        ranks = distributed.gather_objects(mine, self.ctx)
        if not self.ctx.is_main:
            return
        last = save_checkpoint(self.last, build(mid_epoch, ranks).to_dict())
        if is_best:
            copy_checkpoint(last, self.best)
        done = progress.epochs_done
        if not mid_epoch and self.every and done % self.every == 0:
            copy_checkpoint(last, self.dir / f"epoch-{done:04d}.pt")
