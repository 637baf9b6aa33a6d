"""FlowConfig: the hyperparameters of one flow, light to import (no torch).

Kept apart from :mod:`flashsim.model` so that the CLI and the presets can describe
and validate a flow without importing torch and nflows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from flashsim.errors import FlashSimError


def check_known_keys(cls: type, values: dict, what: str) -> None:
    """Refuse keys of ``values`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FlashSimError(f"Unknown {what} keys {unknown}; known keys: {sorted(known)}.")


ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "leaky_relu", "gelu")
"""Names of the activation functions of the conditioner networks."""

SPLINE_ENGINES: tuple[str, ...] = ("fused", "nflows")
"""Implementations of the rational-quadratic coupling transforms (the same mathematics and
the same weights): ``fused`` (:mod:`flashsim.spline`: no masks, no host syncs,
compilable) and ``nflows`` (the library's own, for comparison)."""
DEFAULT_SPLINE = "fused"


@dataclass(frozen=True)
class FlowConfig:
    """Hyperparameters of one flow; saved in every checkpoint so the flow can be rebuilt.

    Attributes:
        n_targets: dimension of ``x`` (reconstructed variables): 17 for jets, 22 for muons.
        n_conditioning: dimension of the context ``y`` (generator level): 14 / 30.
        num_flow_steps: coupling steps (the paper: one per target).
        hidden_features: width of the residual conditioner network.
        num_blocks: residual blocks per conditioner.
        num_bins: spline bins on [-tail_bound, tail_bound].
        tail_bound: half-width of the spline interval; outside it the transform is linear.
        activation: one of :data:`ACTIVATIONS`.
        dropout: dropout probability inside the residual blocks.
        batch_norm: batch normalisation inside the residual blocks.
        standardize: put a fixed per-column standardisation, ``(v - mean) / std`` with the
            training split's statistics, in front of the flow for both the targets (an
            affine first transform, so densities stay those of the stored values) and the
            conditioning. Not in the original model; it makes the spline interval
            ``[-tail_bound, tail_bound]`` fit every column, so small flows learn in
            minutes instead of days.
        spline: the engine that computes the coupling splines, one of
            :data:`SPLINE_ENGINES`. Not a hyperparameter: both give the same flow with the
            same ``state_dict``, so a checkpoint of either can be rebuilt with the other
            (``load_model(..., spline=...)``). Checkpoints written before this field
            existed load as ``"fused"``.
    """

    n_targets: int
    n_conditioning: int
    num_flow_steps: int = 17
    hidden_features: int = 298
    num_blocks: int = 10
    num_bins: int = 128
    tail_bound: float = 1.0
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = True
    standardize: bool = False
    spline: str = DEFAULT_SPLINE

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_targets", "n_conditioning", "num_flow_steps", "hidden_features"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_targets < 2:
            problems.append("n_targets must be >= 2 for a coupling flow")
        if self.num_blocks < 0:
            problems.append(f"num_blocks must be >= 0 (got {self.num_blocks})")
        if self.num_bins < 2:
            problems.append(f"num_bins must be >= 2 (got {self.num_bins})")
        if not self.tail_bound > 0:
            problems.append(f"tail_bound must be > 0 (got {self.tail_bound})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.activation not in ACTIVATIONS:
            problems.append(
                f"activation must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})"
            )
        if self.spline not in SPLINE_ENGINES:
            problems.append(
                f"spline must be one of {', '.join(SPLINE_ENGINES)} (got {self.spline!r})"
            )
        if problems:
            raise FlashSimError("Invalid flow configuration: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict:
        """Plain dictionary (JSON- and checkpoint-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FlowConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, missing keys
        take their defaults (``spline``: checkpoints older than it load as ``"fused"``)."""
        check_known_keys(cls, values, "flow configuration")
        return cls(**values)

    def replace(self, **changes) -> FlowConfig:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
