"""Training presets: the paper's configuration and a small one for CPUs.

A preset fixes the flow hyperparameters (:class:`~flashsim.model.FlowConfig`) and the
optimisation (Adam learning rate, cosine annealing over ``epochs``, batch size) for
one object. Every value can be overridden (``flashsim train --help``).

* ``paper``: the original FlashSim models: jets 17 targets | 14 conditioning, 17 flow
  steps, 10 residual blocks of 298 hidden units, 128 bins, batch norm, ReLU; muons
  22 | 30, 22 steps, 256 hidden; Adam lr 1e-5, cosine annealing over 600 epochs,
  batch 2048 (about 5 days per model on a V100 with 5 M rows).
* ``small``: 5 steps, 2 blocks of 64 hidden units, 16 bins on [-5, 5], batch norm, ReLU,
  inputs standardised inside the flow (``FlowConfig.standardize``); Adam lr 3e-3, cosine
  annealing over 5 epochs, batch 1024: a couple of minutes on a 2-core CPU for 100 k
  rows, and visibly learns (236 k parameters for jets).

Examples
--------
>>> from flashsim.presets import get_preset
>>> p = get_preset("paper", "jets")
>>> p.flow.num_flow_steps, p.flow.hidden_features, p.lr, p.epochs, p.batch_size
(17, 298, 1e-05, 600, 2048)
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Literal

from flashsim.errors import FlashSimError
from flashsim.flow_config import FlowConfig, check_known_keys
from flashsim.layouts import layout_for
from flashsim.options import Choices

PresetName = Literal["paper", "small"]
PRESETS: Choices[PresetName] = Choices.of("preset", PresetName)
"""The preset names (``flashsim train --preset``)."""
DEFAULT_PRESET: PresetName = "small"


@dataclass(frozen=True)
class Preset:
    """A complete training recipe for one object.

    Attributes:
        name: preset name.
        flow: flow hyperparameters (dimensions match the object's layout).
        lr: Adam learning rate at the start of the cosine schedule.
        epochs: epochs, also the cosine annealing period ``T_max``.
        batch_size: rows per optimiser step (per process under DDP).
        monitor_every: epochs between runs of the conditioning monitor.
    """

    name: str
    flow: FlowConfig
    lr: float
    epochs: int
    batch_size: int
    monitor_every: int = 1


@dataclass(frozen=True)
class HParams:
    """The optimisation hyperparameters of a training run: a preset's, overridden
    (saved in its checkpoints and ``run.json`` as ``hparams``).

    Attributes:
        preset: the preset they started from.
        epochs: epochs, also the cosine annealing period ``T_max``.
        batch_size: rows per optimiser step and per process (>= 2, for batch norm).
        lr: Adam learning rate at the start of each cosine cycle.
        seed: seed of the weights, the shuffling and dropout.
        restarts: epochs (0-based) where a new cosine cycle starts: the warm restarts of
            a run extended with ``--resume --epochs`` (:mod:`flashsim.train.schedule`);
            empty for a run trained as planned.
    """

    preset: str
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    restarts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (("epochs", int), ("batch_size", int), ("lr", float), ("seed", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "restarts", tuple(int(r) for r in self.restarts))
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        bounds = (0, *self.restarts, self.epochs)
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            problems.append(
                f"restarts must increase strictly within (0, {self.epochs}) (got {self.restarts})"
            )
        if self.batch_size < 2:
            problems.append(f"batch size must be >= 2 for batch norm (got {self.batch_size})")
        if not self.lr > 0:
            problems.append(f"learning rate must be > 0 (got {self.lr})")
        if problems:
            raise FlashSimError("Invalid training options: " + "; ".join(problems) + ".")

    @classmethod
    def of(
        cls,
        preset: Preset,
        seed: int = 0,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
    ) -> HParams:
        """The preset's values, each overridden where the argument is not ``None``."""
        return cls(
            preset=preset.name,
            epochs=preset.epochs if epochs is None else epochs,
            batch_size=preset.batch_size if batch_size is None else batch_size,
            lr=preset.lr if lr is None else lr,
            seed=seed,
        )

    @property
    def cycles(self) -> list[tuple[int, int]]:
        """The cosine cycles ``[(first epoch, end epoch), ...]`` (0-based, end exclusive)."""
        bounds = (0, *self.restarts, self.epochs)
        return list(itertools.pairwise(bounds))

    def cycle_of(self, epoch: int) -> tuple[int, int]:
        """The cycle that holds 0-based ``epoch`` (the last one for epochs past the end)."""
        return next((c for c in self.cycles if c[0] <= epoch < c[1]), self.cycles[-1])

    def extended(self, epochs: int) -> HParams:
        """These hyperparameters run on to ``epochs`` with a new cosine cycle that starts
        where the current schedule ends (a warm restart)."""
        return dataclasses.replace(self, epochs=epochs, restarts=(*self.restarts, self.epochs))

    def to_dict(self) -> dict:
        """Plain dictionary (JSON- and checkpoint-safe)."""
        values = dataclasses.asdict(self)
        values["restarts"] = list(self.restarts)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> HParams:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        check_known_keys(cls, values, "hyperparameter")
        return cls(**values)


def _flow(obj: str, **settings: Any) -> FlowConfig:
    """A flow on ``obj``'s columns with what both presets share (relu, no dropout, batch
    norm in the residual blocks) and ``settings``."""
    layout = layout_for(obj)
    return FlowConfig(
        n_targets=layout.n_targets,
        n_conditioning=layout.n_conditioning,
        activation="relu",
        dropout=0.0,
        batch_norm=True,
        **settings,
    )


def _paper(obj: str) -> Preset:
    flow = _flow(
        obj,
        num_flow_steps=layout_for(obj).n_targets,  # 17 for jets, 22 for muons, as in the paper
        hidden_features=layout_for(obj).paper_hidden_features,  # 298 jets, 256 muons
        num_blocks=10,
        num_bins=128,
        tail_bound=1.0,
    )
    return Preset("paper", flow, lr=1e-5, epochs=600, batch_size=2048, monitor_every=5)


def _small(obj: str) -> Preset:
    flow = _flow(
        obj,
        num_flow_steps=5,
        hidden_features=64,
        num_blocks=2,
        num_bins=16,
        # standardised columns: most of each distribution lies within +-5 std
        tail_bound=5.0,
        # the stored columns keep the original preprocessing, whose scales range from
        # 0.03 (eta residuals) to 10s (nConstituents): standardising them lets a small
        # flow fit them all within minutes
        standardize=True,
    )
    return Preset("small", flow, lr=3e-3, epochs=5, batch_size=1024, monitor_every=1)


_MAKERS = {"paper": _paper, "small": _small}


def get_preset(name: str, obj: str) -> Preset:
    """The preset ``name`` (one of :data:`PRESETS`) for object ``obj``.

    Raises:
        FlashSimError: for an unknown preset or object.
    """
    return _MAKERS[PRESETS.normalize(name)](obj)
