"""The training loop: maximum likelihood of the conditional spline flow on a store.

:func:`train` opens the store's ``train`` and ``val`` splits with :func:`loaders.open`,
builds the flow (:func:`flashsim.model.build_flow`) from the preset plus overrides,
and runs Adam with cosine annealing (stepped once per epoch, as the original) for the
requested epochs. Per epoch it records the mean training and validation negative
log-likelihood per row (nats), the learning rate and where the time went
(:mod:`flashsim.train.metrics`), and writes ``checkpoints/last.pt``, ``best.pt`` (lowest
validation loss) and, with ``checkpoint_every``, ``epoch-NNNN.pt``
(:mod:`flashsim.train.checkpoint`). ``resume`` continues bit-for-bit on the same
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
import json
import logging
import math
import os
import random
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flashsim import __version__
from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import Layout, layout_for
from flashsim.model import FlowConfig, build_flow, count_parameters, set_standardization
from flashsim.outputs import write_text_atomic
from flashsim.presets import DEFAULT_PRESET, get_preset
from flashsim.store import find_store, read_metadata, store_layout
from flashsim.train import distributed
from flashsim.train.checkpoint import (
    capture_rng_state,
    copy_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from flashsim.train.config import DEVICES, LOADER_KINDS, TrainConfig, TrainResult
from flashsim.train.interrupt import StopRequest
from flashsim.train.metrics import MetricsLogger
from loaders.base import resolve_device as resolve_loader_device

log = logging.getLogger("flashsim.train")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
RUN_FILE = "run.json"
LOG_FILE = "train.log"
TRACE_DIR = "trace"

_HPARAMS = ("preset", "epochs", "batch_size", "lr", "seed")


class NonFiniteLossError(FlashSimError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


class NegLogLikelihood(nn.Module):
    """``forward(x, y)`` = per-row ``-log p(x | y)``, shape ``(B,)``: the module DDP wraps
    (``Flow.log_prob`` is not ``forward``, so DDP could not hook it directly)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x, context=y)


def row_fingerprints(rows: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint per row of float32 ``rows`` ``(N, C)`` (equal rows, equal
    fingerprints; used by ``trace`` to check that ranks see disjoint rows)."""
    bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32).astype(np.uint64)
    weights = np.random.default_rng(12345).integers(1, 2**63, size=bits.shape[1], dtype=np.uint64)
    weights |= np.uint64(1)
    with np.errstate(over="ignore"):
        return (bits * weights[None, :]).sum(axis=1, dtype=np.uint64)


# ----------------------------------------------------------------- resolution


def resolve_device(name: str) -> torch.device:
    """One of :data:`DEVICES` (``"auto"``: CUDA when available, else CPU) as a device;
    ``"cuda"`` without a GPU is an error."""
    if name not in DEVICES:
        raise FlashSimError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)}.")
    return resolve_loader_device(name)


def check_loader_kind(obj: str, kind: str) -> None:
    """Refuse unknown loader kinds and an ``original-<other object>`` loader."""
    layout_for(obj)
    if kind not in LOADER_KINDS:
        raise FlashSimError(f"Unknown loader {kind!r}; choose one of {', '.join(LOADER_KINDS)}.")
    if kind.startswith("original-") and kind != f"original-{obj}":
        raise FlashSimError(
            f"--loader {kind} reads {kind.split('-', 1)[1]}, but this run trains {obj}; use "
            f"--loader original-{obj}."
        )


def check_store(path: Path, meta: dict, obj: str) -> Layout:
    """The store's layout, after checking it holds ``obj`` rows in the known column order."""
    layout = store_layout(meta, expected_object=obj, path=str(path))
    columns = meta.get("layout", {}).get("columns")
    if columns is not None and tuple(columns) != layout.columns:
        raise StoreError(
            f"{path} has {obj} columns in an order flashsim does not know; re-create it with "
            "`flashsim prep`."
        )
    return layout


def check_out_dir(out: Path, resume: bool) -> None:
    """A new run needs an --out without a run in it; ``resume`` needs one."""
    last = out / CHECKPOINT_DIR / LAST
    if resume and not last.exists():
        raise FlashSimError(
            f"--resume: there is no checkpoint to resume in {out} ({last} is missing). Start "
            "the run without --resume, or pass the --out of the run."
        )
    if not resume and last.exists():
        raise FlashSimError(
            f"{out} already holds a training run ({last}); nothing was changed. Pass --resume "
            "to continue it, or choose another --out."
        )


def resolve_hparams(
    config: TrainConfig, layout: Layout, saved: dict | None = None
) -> tuple[dict, FlowConfig]:
    """The run's hyperparameters: preset + overrides, or the checkpoint's (``saved``).

    Returns:
        ``({"preset", "epochs", "batch_size", "lr", "seed"}, FlowConfig)``.
    """
    if saved is None:
        preset = get_preset(config.preset or DEFAULT_PRESET, config.object)
        try:
            flow = preset.flow.replace(**config.flow)
        except TypeError as err:
            known = ", ".join(f.name for f in dataclasses.fields(FlowConfig))
            raise FlashSimError(f"Unknown flow option ({err}); known: {known}.") from None
        hp = {
            "preset": preset.name,
            "epochs": preset.epochs if config.epochs is None else config.epochs,
            "batch_size": preset.batch_size if config.batch_size is None else config.batch_size,
            "lr": preset.lr if config.lr is None else config.lr,
            "seed": 0 if config.seed is None else config.seed,
        }
    else:
        hp = dict(saved["hparams"])
        flow = FlowConfig.from_dict(saved["flow_config"])
        conflicts = [
            f"{name}={getattr(config, name)!r} (checkpoint: {hp[name]!r})"
            for name in _HPARAMS
            if getattr(config, name) is not None and getattr(config, name) != hp[name]
        ]
        conflicts += [
            f"{k}={v!r} (checkpoint: {getattr(flow, k, None)!r})"
            for k, v in config.flow.items()
            if v is not None and getattr(flow, k, None) != v
        ]
        if conflicts:
            raise FlashSimError(
                "--resume continues the saved run with its own hyperparameters, but these "
                f"options differ: {', '.join(conflicts)}. Drop them to resume, or start a new "
                "run with another --out."
            )
    problems = []
    if int(hp["epochs"]) < 1:
        problems.append(f"epochs must be >= 1 (got {hp['epochs']})")
    if int(hp["batch_size"]) < 2:
        problems.append(f"batch size must be >= 2 for batch norm (got {hp['batch_size']})")
    if not float(hp["lr"]) > 0:
        problems.append(f"learning rate must be > 0 (got {hp['lr']})")
    if problems:
        raise FlashSimError("Invalid training options: " + "; ".join(problems) + ".")
    if (flow.n_targets, flow.n_conditioning) != (layout.n_targets, layout.n_conditioning):
        raise FlashSimError(
            f"The flow expects {flow.n_targets} targets | {flow.n_conditioning} conditioning "
            f"values but the {layout.object} layout has {layout.n_targets} | "
            f"{layout.n_conditioning}; the dimensions come from the store, do not override them."
        )
    return hp, flow


# ----------------------------------------------------------------- the run


@dataclasses.dataclass
class _EpochProgress:
    """Running totals of the current epoch (saved in mid-epoch checkpoints)."""

    steps: int = 0
    rows: int = 0
    loss_sum: float = 0.0
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    elapsed_s: float = 0.0


class _Interrupted(Exception):
    pass


class _Run:
    """One process's share of a training run (all state in one place)."""

    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, device: torch.device):
        self.config = config
        self.ctx = ctx
        self.device = device
        self.out = config.out_dir
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self.history: list[dict] = []
        self.best_val = math.inf
        self.epochs_done = 0
        self.progress: _EpochProgress | None = None  # mid-epoch state from a checkpoint
        self.loader_state = None
        self._trace_file = None

    # -- setup ------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.config
        check_loader_kind(cfg.object, cfg.loader)
        saved = None
        last = self.ckpt_dir / LAST
        check_out_dir(self.out, cfg.resume)
        if cfg.resume:
            saved = read_checkpoint(last, map_location="cpu")
            if saved.get("object") != cfg.object:
                raise FlashSimError(
                    f"{last} is a {saved.get('object')} model; it cannot resume `train "
                    f"{cfg.object}`. Use the --out of a {cfg.object} run."
                )
        if saved is not None and cfg.threads is None and self.device.type == "cpu":
            # Same thread count, same CPU reduction order: the resumed run stays bit-exact.
            torch.set_num_threads(int(saved.get("threads") or torch.get_num_threads()))
        self.hp, self.flow_config = resolve_hparams(cfg, layout_for(cfg.object), saved)
        self._open_loaders()
        self.store = self.train_loader.path
        self.meta = self.train_loader.metadata
        self.layout = check_store(self.store, self.meta, cfg.object)
        if saved is not None:
            self._check_resumable(saved, last)
        seed = int(self.hp["seed"])

        self.flow = build_flow(self.flow_config, seed=seed)
        if self.flow_config.standardize and saved is None:
            self._standardize_from_store()
        self.flow.to(self.device)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=float(self.hp["lr"]))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=int(self.hp["epochs"])
        )
        # Global RNGs (dropout, anything else random) seeded per rank; restored on resume.
        torch.manual_seed(seed + self.ctx.rank)
        np.random.seed((seed + self.ctx.rank) % 2**32)  # noqa: NPY002 (legacy global RNG)
        random.seed(seed + self.ctx.rank)
        if saved is not None:
            self._restore(saved)

        self.model: nn.Module = NegLogLikelihood(self.flow)
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda" and self.flow_config.batch_norm:
                # SyncBatchNorm needs a GPU; on CPU each rank normalises with its own batch
                # and DDP broadcasts rank 0's running statistics.
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        if cfg.compile:
            self.model = torch.compile(self.model)

    def _check_resumable(self, saved: dict, path: Path) -> None:
        old = saved.get("store_metadata", {})
        for key in ("layout", "preprocessing"):
            if key in old and old.get(key) != self.meta.get(key):
                raise FlashSimError(
                    f"The store {self.store} differs in its {key} from the one the checkpoint "
                    f"{path} was trained on ({saved.get('store')}); resuming on differently "
                    "prepared data would mix two datasets. Use the original store or start a "
                    "new run with another --out."
                )
        if saved.get("mid_epoch"):
            info = saved.get("loader") or {}
            if info.get("world_size") != self.ctx.world_size:
                raise FlashSimError(
                    f"{path} was saved in the middle of an epoch by {info.get('world_size')} "
                    f"process(es); resume it with the same number (now {self.ctx.world_size})."
                )
            if info.get("kind") != self.config.loader:
                raise FlashSimError(
                    f"{path} was saved in the middle of an epoch with --loader {info.get('kind')}; "
                    f"resume with the same loader (not {self.config.loader})."
                )

    def _standardize_from_store(self) -> None:
        """Set the flow's fixed standardisation from the training split (one chunk-wise
        pass over the store; a resumed run restores it from the checkpoint instead)."""
        from pipelines.store_info import column_stats

        stats = column_stats(self.store, ("train",))
        x, y = self.layout.targets, self.layout.conditioning
        set_standardization(
            self.flow,
            *(
                torch.from_numpy(a)
                for a in (stats.mean[x], stats.std[x], stats.mean[y], stats.std[y])
            ),
        )

    def _restore(self, saved: dict) -> None:
        self.flow.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.history = list(saved.get("history", []))
        self.best_val = float(saved.get("best_val_loss", math.inf))
        self.epochs_done = int(saved["epochs_done"])
        rng = saved.get("rng") or []
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        if saved.get("mid_epoch"):
            self.progress = _EpochProgress(**saved["epoch_progress"][self.ctx.rank])
            self.loader_state = saved["loader"]["states"][self.ctx.rank]

    def _open_loaders(self) -> None:
        import loaders

        cfg = self.config
        batch = int(self.hp["batch_size"])
        common = {
            "object": cfg.object,
            "kind": cfg.loader,
            "seed": int(self.hp["seed"]),
            "device": str(self.device),
            "rank": self.ctx.rank,
            "world_size": self.ctx.world_size,
            "num_workers": cfg.num_workers,
        }
        # drop_last: a last batch of a handful of rows would make batch norm statistics
        # meaningless (and one row is an error); the next epoch reshuffles anyway.
        self.train_loader = loaders.open(
            cfg.data, "train", batch_size=batch, shuffle=True, drop_last=True, **common
        )
        # The same store for validation (the loader resolved --data to one store).
        self.val_loader = loaders.open(
            self.train_loader.path,
            "val",
            batch_size=max(batch, 4096),
            shuffle=False,
            drop_last=False,
            **common,
        )
        if len(self.train_loader) == 0:
            # A store smaller than one batch (e.g. the few hundred jets of a sample file):
            # train on whole-store batches rather than refuse; batch norm needs >= 2 rows.
            fitted = self.train_loader.n_rows // self.ctx.world_size
            if fitted < 2:
                raise FlashSimError(
                    f"{self.train_loader.path} has too few training rows "
                    f"({self.train_loader.n_rows}) for {self.ctx.world_size} process(es); "
                    "prepare more events with flashsim prep."
                )
            log.warning(
                "%s has %d training rows, fewer than one batch of %d per process: "
                "using batches of %d rows.",
                self.train_loader.path,
                self.train_loader.n_rows,
                batch,
                fitted,
            )
            self.hp["batch_size"] = batch = fitted
            self.train_loader = loaders.open(
                cfg.data, "train", batch_size=batch, shuffle=True, drop_last=True, **common
            )
        if self.val_loader.n_rows == 0:
            raise FlashSimError(
                f"{self.train_loader.path} has no validation rows; prepare it with a val split (flashsim prep)."
            )

    # -- checkpoints -----------------------------------------------------------------

    def _state(self, mid_epoch: bool, ranks: list[dict]) -> dict:
        # ``ranks``: what differs between processes (RNG; mid-epoch also loader position
        # and running totals), one entry per rank so each resumes its own.
        return {
            "object": self.config.object,
            "flow_config": self.flow_config.to_dict(),
            "hparams": dict(self.hp),
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epochs_done": self.epochs_done,
            "mid_epoch": mid_epoch,
            "epoch_progress": [r["progress"] for r in ranks] if mid_epoch else None,
            "loader": (
                {
                    "kind": self.config.loader,
                    "world_size": self.ctx.world_size,
                    "states": [r["loader"] for r in ranks],
                }
                if mid_epoch
                else None
            ),
            "rng": [r["rng"] for r in ranks],
            "history": list(self.history),
            "best_val_loss": self.best_val,
            "store": str(self.store),
            "store_metadata": self.meta,
            "world_size": self.ctx.world_size,
            "threads": torch.get_num_threads(),
            "tool_version": __version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, mid_epoch: bool, is_best: bool = False) -> None:
        """Collective: gather every rank's own state; rank 0 writes."""
        mine = {"rng": capture_rng_state()}
        if mid_epoch:
            mine["loader"] = self.loader_state
            mine["progress"] = dataclasses.asdict(self.progress)
        ranks = distributed.gather_objects(mine, self.ctx)
        if not self.ctx.is_main:
            return
        last = save_checkpoint(self.ckpt_dir / LAST, self._state(mid_epoch, ranks))
        if is_best:
            copy_checkpoint(last, self.ckpt_dir / BEST)
        every = self.config.checkpoint_every
        if not mid_epoch and every and self.epochs_done % every == 0:
            copy_checkpoint(last, self.ckpt_dir / f"epoch-{self.epochs_done:04d}.pt")

    # -- loop ----------------------------------------------------------------------

    def _agree(self, *flags: bool) -> list[bool]:
        values = distributed.all_reduce([float(f) for f in flags], self.ctx, self.device, op="max")
        return [v > 0 for v in values]

    def _raise_non_finite(self, where: str, epoch: int, step: int | None) -> None:
        at = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        last = self.ckpt_dir / LAST
        kept = (
            f"The last good checkpoint {last} (epoch {self.epochs_done}) is intact"
            if last.exists()
            else "No checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"Training stopped: the {where} loss became NaN or infinite at {at} (learning rate "
            f"{self.optimizer.param_groups[0]['lr']:.3g}); nothing from this epoch was saved. "
            f"{kept}. Usually the learning rate is too high (lower --lr and start a new run) "
            f"or the store {self.store} holds extreme or non-finite values (check its "
            "preprocessing)."
        )

    def _train_epoch(self, epoch: int, stop: StopRequest) -> _EpochProgress:
        from tqdm.auto import tqdm

        cfg = self.config
        cuda = self.device.type == "cuda"
        steps_total = len(self.train_loader)
        if cfg.max_steps_per_epoch:
            steps_total = min(steps_total, int(cfg.max_steps_per_epoch))
        self.train_loader.set_epoch(epoch)
        if self.progress is not None:
            acc = self.progress
            self.train_loader.load_state_dict(self.loader_state)
            self.loader_state = None
        else:
            acc = _EpochProgress()
        self.progress = acc
        self.model.train()
        # One float64 accumulator for the whole epoch, read (never reset) at sync points:
        # a resumed epoch continues the same sum, so its loss is bit-identical.
        loss_acc = torch.tensor(acc.loss_sum, dtype=torch.float64, device=self.device)
        events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        check_every = max(1, int(cfg.check_every))
        bar = tqdm(
            total=steps_total,
            initial=acc.steps,
            desc=f"epoch {epoch + 1}/{self.hp['epochs']}",
            unit="batch",
            disable=not (cfg.progress and self.ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        batches = iter(self.train_loader)
        started = time.perf_counter() - acc.elapsed_s
        try:
            while acc.steps < steps_total:
                t0 = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                acc.data_wait_s += t1 - t0
                if acc.steps == 0:
                    self._check_batch(x, y)
                if cuda:
                    ev = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    ev[0].record()
                self.optimizer.zero_grad(set_to_none=True)
                nll = self.model(x, y)
                nll.mean().backward()
                self.optimizer.step()
                if cuda:
                    ev[1].record()
                    events.append(ev)
                else:
                    acc.compute_s += time.perf_counter() - t1
                loss_acc += nll.detach().sum(dtype=torch.float64)
                acc.steps += 1
                acc.rows += int(x.shape[0])
                if cfg.trace:
                    self._trace(epoch, acc.steps, x, y)
                at_check = acc.steps % check_every == 0 or acc.steps == steps_total
                # Single process: honour Ctrl-C at the next step. DDP: ranks must agree,
                # so the flag is exchanged only at the (common) check points.
                want_stop = stop.requested and not self.ctx.distributed
                if at_check or want_stop:
                    acc.loss_sum = float(loss_acc.item())  # the host sync
                    if cuda:
                        acc.compute_s += sum(a.elapsed_time(b) for a, b in events) / 1e3
                        events.clear()
                    bad, stop_now = self._agree(not math.isfinite(acc.loss_sum), stop.requested)
                    if bad:
                        self._raise_non_finite("training", epoch, acc.steps)
                    bar.set_postfix(loss=f"{acc.loss_sum / max(acc.rows, 1):.4f}", refresh=False)
                    if stop_now:
                        acc.elapsed_s = time.perf_counter() - started
                        # Taken here, while the loader's iterator is alive and exactly
                        # acc.steps batches have been consumed.
                        self.loader_state = self.train_loader.state_dict()
                        bar.update(1)
                        raise _Interrupted
                bar.update(1)
        finally:
            bar.close()
            # Stop the loader's background work now (an early stop leaves it mid-epoch).
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        acc.loss_sum = float(loss_acc.item())
        if cuda:
            acc.compute_s += sum(a.elapsed_time(b) for a, b in events) / 1e3
        acc.elapsed_s = time.perf_counter() - started
        return acc

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        want = (self.layout.n_targets, self.layout.n_conditioning)
        if x.ndim != 2 or y.ndim != 2 or (x.shape[1], y.shape[1]) != want:
            raise FlashSimError(
                f"The {self.config.loader} loader yielded batches of shapes {tuple(x.shape)} / "
                f"{tuple(y.shape)} from {self.store}; expected (B, {want[0]}) targets and "
                f"(B, {want[1]}) conditioning for {self.config.object}."
            )

    @torch.no_grad()
    def _validate(self, epoch: int) -> tuple[float, float]:
        start = time.perf_counter()
        self.flow.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        rows = 0
        for x, y in self.val_loader:
            total += (-self.flow.log_prob(x, context=y)).sum(dtype=torch.float64)
            rows += int(x.shape[0])
        self.flow.train()
        loss_sum, n = distributed.all_reduce([float(total.item()), rows], self.ctx, self.device)
        val_loss = loss_sum / max(n, 1)
        if not math.isfinite(val_loss):
            self._raise_non_finite("validation", epoch, None)
        return val_loss, time.perf_counter() - start

    def _record(
        self, epoch: int, acc: _EpochProgress, val_loss: float, val_s: float, lr: float
    ) -> dict:
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

    def _trace(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._trace_file is None:
            path = self.out / TRACE_DIR / f"rank{self.ctx.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._trace_file = open(path, "a")  # noqa: SIM115 (closed at the end of run())
        rows = torch.cat([y, x], dim=1).detach().cpu().numpy()
        with torch.no_grad():
            checksum = sum(
                float(p.double().sum() + p.double().square().sum()) for p in self.flow.parameters()
            )
        self._trace_file.write(
            json.dumps(
                {
                    "epoch": epoch,
                    "step": step,
                    "rows": [str(v) for v in row_fingerprints(rows).tolist()],
                    "param_checksum": checksum,
                }
            )
            + "\n"
        )
        self._trace_file.flush()

    def resume_command(self) -> str:
        if self.ctx.distributed and os.environ.get(distributed.INIT_METHOD_ENV) is None:
            return "relaunch the same torchrun command with --resume"
        parts = ["flashsim", "train", self.config.object, "--data", str(self.config.data)]
        parts += ["--out", str(self.out), "--loader", self.config.loader, "--resume"]
        if self.ctx.distributed:
            parts += ["--nproc", str(self.ctx.world_size)]
        return shlex.join(parts)

    def describe(self) -> str:
        cfg, fc = self.config, self.flow_config
        lines = [
            f"flashsim {__version__}: training {cfg.object} from {self.store} "
            f"({self.train_loader.n_rows} train / {self.val_loader.n_rows} val rows, loader "
            f"{self.train_loader.kind})",
            f"preset {self.hp['preset']}: {fc.num_flow_steps} flow steps, {fc.num_blocks} blocks x "
            f"{fc.hidden_features} hidden, {fc.num_bins} bins, tail bound {fc.tail_bound}, "
            f"{fc.activation}, batch norm {'on' if fc.batch_norm else 'off'}, dropout {fc.dropout}, "
            f"standardized inputs {'on' if fc.standardize else 'off'}; "
            f"{count_parameters(self.flow):,} parameters",
            f"Adam lr {self.hp['lr']:g}, cosine annealing over {self.hp['epochs']} epochs, batch "
            f"{self.hp['batch_size']} per process x {self.ctx.world_size} process(es), seed {self.hp['seed']}",
            f"device {self.device}, {torch.get_num_threads()} CPU thread(s); tf32 {'on' if cfg.tf32 else 'off'}, compile "
            f"{'on' if cfg.compile else 'off'}, deterministic "
            f"{'on' if torch.are_deterministic_algorithms_enabled() else 'off'}"
            + (f", DDP over {self.ctx.world_size} ranks" if self.ctx.distributed else ""),
        ]
        if self.epochs_done or self.progress is not None:
            where = f"epoch {self.epochs_done + 1}" + (
                f", step {self.progress.steps}" if self.progress else ""
            )
            lines.append(f"resuming at {where}")
        return "\n".join(lines)

    def _write_run_file(self) -> None:
        info = {
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(self.config).items()
            },
            "hparams": self.hp,
            "flow_config": self.flow_config.to_dict(),
            "store": str(self.store),
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "tool_version": __version__,
            "torch_version": torch.__version__,
        }
        write_text_atomic(self.out / RUN_FILE, json.dumps(info, indent=1, default=str))

    def run(self) -> TrainResult:
        cfg = self.config
        self.prepare()
        main = self.ctx.is_main
        metrics = MetricsLogger(self.out, self.history, enabled=main, tensorboard=cfg.tensorboard)
        handler = None
        previous_level = log.level
        if main:
            handler = logging.FileHandler(self.out / LOG_FILE)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            handler.setLevel(logging.INFO)
            log.addHandler(handler)
            if log.getEffectiveLevel() > logging.INFO:
                log.setLevel(logging.INFO)  # the run log always gets the summaries
            self._write_run_file()
            summary = self.describe()
            for line in summary.splitlines():
                log.info(line)
            metrics.log_text("run", summary.replace("\n", "  \n"))
        epochs = int(self.hp["epochs"])
        status = "completed"
        ran = 0
        try:
            with StopRequest() as stop:
                while self.epochs_done < epochs:
                    epoch = self.epochs_done
                    lr = float(self.optimizer.param_groups[0]["lr"])
                    try:
                        acc = self._train_epoch(epoch, stop)
                    except _Interrupted:
                        self.save(mid_epoch=True)
                        status = "interrupted"
                        break
                    val_loss, val_s = self._validate(epoch)
                    record = self._record(epoch, acc, val_loss, val_s, lr)
                    self.scheduler.step()
                    self.history.append(record)
                    self.epochs_done = epoch + 1
                    self.progress = None
                    is_best = val_loss < self.best_val
                    if is_best:
                        self.best_val = val_loss
                    self.save(mid_epoch=False, is_best=is_best)
                    metrics.log_epoch(record, self.history)
                    if main:
                        log.info(
                            f"epoch {record['epoch']}/{epochs}: train {record['train_loss']:.4f}  "
                            f"val {val_loss:.4f}{' (best)' if is_best else ''}  lr {lr:.3g}  "
                            f"{record['samples_per_s']:,.0f} rows/s  data wait "
                            f"{100 * record['data_wait_frac']:.0f}%  compute "
                            f"{100 * record['compute_s'] / max(record['epoch_s'], 1e-12):.0f}%"
                        )
                    ran += 1
                    (stop_now,) = self._agree(stop.requested)
                    if stop_now and self.epochs_done < epochs:
                        status = "interrupted"
                        break
                    if (
                        cfg.stop_after_epochs
                        and ran >= cfg.stop_after_epochs
                        and self.epochs_done < epochs
                    ):
                        status = "paused"
                        break
        except FlashSimError as err:
            if handler is not None:  # into train.log (the caller shows it to the user)
                handler.handle(log.makeRecord(log.name, logging.ERROR, "", 0, str(err), (), None))
            raise
        finally:
            metrics.close()
            if self._trace_file is not None:
                self._trace_file.close()
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
                log.setLevel(previous_level)
        last = self.ckpt_dir / LAST
        best = self.ckpt_dir / BEST
        result = TrainResult(
            out=self.out,
            status=status,
            epochs_done=self.epochs_done,
            history=list(self.history),
            last_checkpoint=last if last.exists() else None,
            best_checkpoint=best if best.exists() else None,
            best_val_loss=self.best_val,
            resume_command=None if status == "completed" else self.resume_command(),
            rank=self.ctx.rank,
        )
        if main and status != "completed":
            where = (
                f"in epoch {self.epochs_done + 1} (step {self.progress.steps})"
                if status == "interrupted" and self.progress is not None
                else f"after epoch {self.epochs_done}"
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
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
    elif config.tf32:
        log.warning("--tf32 has no effect on %s", device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cuda.matmul.allow_tf32 = previous[1]
        torch.backends.cudnn.allow_tf32 = previous[2]
        torch.set_num_threads(previous[3])


def _train_process(config: TrainConfig) -> TrainResult:
    device = resolve_device(config.device)
    ctx = distributed.setup(device.type)
    if device.type == "cuda" and ctx.distributed:
        device = torch.device("cuda", ctx.local_rank)
    try:
        with _torch_flags(config, device):
            return _Run(config, ctx, device).run()
    finally:
        distributed.teardown(ctx)


def _precheck(config: TrainConfig) -> None:
    """Fail fast, before starting processes, on the mistakes every rank would hit."""
    check_loader_kind(config.object, config.loader)
    store = find_store(config.data, config.object)
    check_store(store, read_metadata(store), config.object)
    check_out_dir(config.out_dir, config.resume)


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
    if config.nproc > 1:
        resolve_device(config.device)
        _precheck(config)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if config.device in ("cuda", "auto") and gpus and config.nproc > gpus:
            raise FlashSimError(
                f"--nproc {config.nproc} needs one GPU per process but only {gpus} are "
                "visible; lower --nproc or pass --device cpu."
            )
        return distributed.launch(
            config.nproc, _train_process, dataclasses.replace(config, nproc=1)
        )
    return _train_process(config)
