"""What a training run checks and resolves before its first step: the options, the run
directory, the hyperparameters (preset + overrides, or the checkpoint's), the loaders
and the store's statistics.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flashsim.checkpoint import Checkpoint
from flashsim.errors import FlashSimError
from flashsim.layouts import Layout, layout_for
from flashsim.model import FlowConfig, set_standardization
from flashsim.presets import DEFAULT_PRESET, HParams, get_preset
from flashsim.store import LOADER_KINDS, check_store, find_store, read_metadata
from flashsim.train.config import TrainConfig
from flashsim.train.distributed import DistContext
from loaders.sources import KIND_OBJECT, own_loader_kind

if TYPE_CHECKING:
    from loaders.base import BaseLoader

log = logging.getLogger("flashsim.train")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


def check_loader_kind(obj: str, kind: str) -> None:
    """Refuse unknown loader kinds and an ``original-<other object>`` loader."""
    layout_for(obj)
    LOADER_KINDS.normalize(kind)
    implied = KIND_OBJECT.get(kind)
    if implied is not None and implied != obj:
        raise FlashSimError(
            f"--loader {kind} reads {implied}, but this run trains {obj}; use --loader "
            f"{own_loader_kind(obj)}."
        )


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


def precheck(config: TrainConfig) -> None:
    """Fail fast, before starting processes, on a store every rank would refuse."""
    assert config.data is not None  # resolved
    store = find_store(config.data, config.object)
    check_store(store, read_metadata(store), config.object)


def resolve_hparams(
    config: TrainConfig, layout: Layout, saved: Checkpoint | None = None
) -> tuple[HParams, FlowConfig]:
    """The run's hyperparameters: preset + overrides, or the checkpoint's (``saved``;
    :func:`flashsim.train.resume.resolve_config` has refused options that differ), run
    on to a larger ``config.epochs`` with a new cosine cycle."""
    if saved is None:
        preset = get_preset(config.preset or DEFAULT_PRESET, config.object)
        try:
            flow = preset.flow.replace(**config.flow)
        except TypeError as err:
            known = ", ".join(f.name for f in dataclasses.fields(FlowConfig))
            raise FlashSimError(f"Unknown flow option ({err}); known: {known}.") from None
        hp = HParams.of(
            preset,
            seed=0 if config.seed is None else config.seed,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
        )
    else:
        if saved.hparams is None:
            raise FlashSimError(f"The checkpoint of {config.out_dir} holds no hyperparameters.")
        hp, flow = saved.hparams, saved.flow_config
        if config.epochs is not None and config.epochs > hp.epochs:
            hp = hp.extended(config.epochs)  # a warm restart where the schedule ended
    if (flow.n_targets, flow.n_conditioning) != (layout.n_targets, layout.n_conditioning):
        raise FlashSimError(
            f"The flow expects {flow.n_targets} targets | {flow.n_conditioning} conditioning "
            f"values but the {layout.object} layout has {layout.n_targets} | "
            f"{layout.n_conditioning}; the dimensions come from the store, do not override them."
        )
    return hp, flow


def open_loaders(
    config: TrainConfig, hp: HParams, ctx: DistContext, device: torch.device
) -> tuple[BaseLoader, BaseLoader, HParams]:
    """``(train loader, val loader, hp)``: the store's two splits for this rank.

    A store with fewer training rows than one batch per process trains on whole-store
    batches; the returned ``hp`` then holds that batch size.
    """
    import loaders

    data = config.data
    assert data is not None  # resolved (resume.resolve_config)
    common: dict[str, Any] = {
        "object": config.object,
        "kind": config.loader,
        "seed": hp.seed,
        "device": str(device),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "num_workers": config.num_workers,
    }

    def open_train(batch: int):
        # drop_last: a last batch of a handful of rows would make batch norm statistics
        # meaningless (and one row is an error); the next epoch reshuffles anyway.
        return loaders.open(data, "train", batch_size=batch, shuffle=True, drop_last=True, **common)

    train = open_train(hp.batch_size)
    # The same store for validation (the loader resolved --data to one store).
    val = loaders.open(
        train.path,
        "val",
        batch_size=max(hp.batch_size, 4096),
        shuffle=False,
        drop_last=False,
        **common,
    )
    if len(train) == 0:
        fitted = train.n_rows // ctx.world_size
        if fitted < 2:
            raise FlashSimError(
                f"{train.path} has too few training rows ({train.n_rows}) for "
                f"{ctx.world_size} process(es); prepare more events with flashsim prep."
            )
        log.warning(
            "%s has %d training rows, fewer than one batch of %d per process: "
            "using batches of %d rows.",
            train.path,
            train.n_rows,
            hp.batch_size,
            fitted,
        )
        hp = dataclasses.replace(hp, batch_size=fitted)
        train = open_train(fitted)
    if val.n_rows == 0:
        raise FlashSimError(
            f"{train.path} has no validation rows; prepare it with a val split (flashsim prep)."
        )
    return train, val, hp


def standardize_from_store(flow: torch.nn.Module, store: Path, layout: Layout) -> None:
    """Set the flow's fixed standardisation from the training split (one chunk-wise
    pass over the store; a resumed run restores it from the checkpoint instead)."""
    from pipelines.store_info import column_stats

    stats = column_stats(store, ("train",))
    x, y = layout.targets, layout.conditioning
    set_standardization(
        flow,
        *(torch.from_numpy(a) for a in (stats.mean[x], stats.std[x], stats.mean[y], stats.std[y])),
    )
