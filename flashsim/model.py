"""The conditional neural spline flow of FlashSim, built with nflows.

The architecture is the original FlashSim ``create_NDE_model`` (itself adapted from
the ``uci.py`` example of the neural spline flow paper, arXiv:1906.04032):

* base distribution: ``StandardNormal((n_targets,))``;
* ``num_flow_steps`` steps, each ``RandomPermutation`` + ``LULinear(identity_init=True)``
  followed by a ``PiecewiseRationalQuadraticCouplingTransform`` (computed by the engine
  ``FlowConfig.spline``: :mod:`flashsim.spline`'s sync-free
  :class:`~flashsim.spline.FusedRQCouplingTransform` by default, or nflows' own; the same
  mathematics and parameters; the fused engine's ``LULinear`` also keeps its index
  arrays on the device, :mod:`flashsim.lu_linear`) whose mask alternates
  (``even = step % 2 == 0``), ``tails="linear"``, ``tail_bound`` (1.0, the original
  default: the splines act on [-1, 1], the linear tails pass the rest through), and a
  conditioner ``ResidualNet(in, out, hidden, context_features=n_conditioning,
  num_blocks, activation, dropout, batch_norm)``;
* one final ``RandomPermutation`` + ``LULinear`` (as the original's
  ``create_linear_transform``);
* with ``standardize`` (not in the original; the ``small`` preset's default), a fixed
  affine map ``(x - mean) / std`` first and the same for the context (the flow's
  embedding net); the statistics are buffers, saved with the weights, set from the
  training split by :func:`set_standardization`.

The flow models ``p(targets | conditioning)``: ``flow.log_prob(x, context=y)`` with
``x`` of shape ``(B, n_targets)`` and ``y`` of shape ``(B, n_conditioning)``;
``flow.sample(k, context=y)`` returns ``(B, k, n_targets)``.

Examples
--------
>>> import torch
>>> from flashsim.model import FlowConfig, build_flow
>>> cfg = FlowConfig(n_targets=3, n_conditioning=2, num_flow_steps=2, hidden_features=8,
...                  num_blocks=1, num_bins=4)
>>> flow = build_flow(cfg, seed=0)
>>> flow.log_prob(torch.zeros(5, 3), context=torch.zeros(5, 2)).shape
torch.Size([5])
"""

from __future__ import annotations

import os
import warnings

import torch
from nflows import distributions, flows, transforms, utils
from nflows.nn.nets import ResidualNet
from torch.nn import functional as F

from flashsim.checkpoint import load_checkpoint
from flashsim.errors import FlashSimError
from flashsim.flow_config import FlowConfig
from flashsim.lu_linear import DeviceIndexLULinear
from flashsim.spline import FusedRQCouplingTransform

# nflows 0.14 (the last release) calls torch.triangular_solve, deprecated since torch 2.0;
# the warning is the library's, not the user's, and would repeat every run.
warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")

ACTIVATION_FUNCTIONS = {"relu": F.relu, "elu": F.elu, "leaky_relu": F.leaky_relu, "gelu": F.gelu}
"""Activation functions of the conditioner networks, by name (see ``ACTIVATIONS``)."""

ENGINES = {
    "fused": (FusedRQCouplingTransform, DeviceIndexLULinear),
    "nflows": (transforms.PiecewiseRationalQuadraticCouplingTransform, transforms.LULinear),
}
"""``(coupling transform, LU linear)`` classes of each engine (``FlowConfig.spline``): the
fused engine's are nflows' own classes with sync-free internals, same parameters."""


def _linear_transform(features: int, config: FlowConfig) -> transforms.Transform:
    # A random (fixed) permutation then a learnable LU-decomposed linear map starting at
    # the identity: the original's create_linear_transform.
    lu_linear = ENGINES[config.spline][1]
    return transforms.CompositeTransform(
        [
            transforms.RandomPermutation(features=features),
            lu_linear(features, identity_init=True),
        ]
    )


def _coupling_transform(step: int, config: FlowConfig) -> transforms.Transform:
    activation = ACTIVATION_FUNCTIONS[config.activation]

    def conditioner(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(
            in_features=in_features,
            out_features=out_features,
            hidden_features=config.hidden_features,
            context_features=config.n_conditioning,
            num_blocks=config.num_blocks,
            activation=activation,
            dropout_probability=config.dropout,
            use_batch_norm=config.batch_norm,
        )

    return ENGINES[config.spline][0](
        mask=utils.create_alternating_binary_mask(config.n_targets, even=(step % 2 == 0)),
        transform_net_create_fn=conditioner,
        num_bins=config.num_bins,
        tails="linear",
        tail_bound=config.tail_bound,
        apply_unconditional_transform=False,
    )


class ContextStandardization(torch.nn.Module):
    """``(y - mean) / std`` per conditioning column; ``mean`` and ``std`` are buffers."""

    mean: torch.Tensor  # (features,), registered as buffers: typed for the checker
    std: torch.Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std


def set_standardization(
    flow: flows.Flow,
    x_mean: torch.Tensor,
    x_std: torch.Tensor,
    y_mean: torch.Tensor,
    y_std: torch.Tensor,
) -> None:
    """Set the fixed standardisation of a flow built with ``standardize=True``.

    Args:
        x_mean, x_std: ``(n_targets,)`` statistics of the targets (training split).
        y_mean, y_std: ``(n_conditioning,)`` statistics of the conditioning.

    A standard deviation of 0 (a constant column) is replaced by 1.
    """
    affine, context = _standardizers(flow)
    if affine is None:
        raise ValueError("this flow was built without standardize=True")

    def safe(std: torch.Tensor) -> torch.Tensor:
        std = torch.as_tensor(std, dtype=torch.float32)
        return torch.where(std > 0, std, torch.ones_like(std))

    x_std, y_std = safe(x_std), safe(y_std)
    x_mean = torch.as_tensor(x_mean, dtype=torch.float32)
    with torch.no_grad():
        affine._scale.copy_(1.0 / x_std)
        affine._shift.copy_(-x_mean / x_std)
        context.mean.copy_(torch.as_tensor(y_mean, dtype=torch.float32))
        context.std.copy_(y_std)


def _standardizers(flow: flows.Flow):
    first = flow._transform._transforms[0]
    if isinstance(first, transforms.PointwiseAffineTransform):
        return first, flow._embedding_net
    return None, None


def build_flow(config: FlowConfig, seed: int | None = None) -> flows.Flow:
    """Build the (untrained) conditional spline flow described by ``config``.

    Args:
        config: the hyperparameters.
        seed: if given, the permutations and initial weights are drawn from a generator
            seeded with it (the global torch RNG is left untouched); otherwise from the
            global torch RNG.

    Returns:
        An ``nflows.flows.Flow`` on the CPU, in training mode.
    """

    def build() -> flows.Flow:
        steps = [
            transforms.CompositeTransform(
                [_linear_transform(config.n_targets, config), _coupling_transform(i, config)]
            )
            for i in range(config.num_flow_steps)
        ]
        layers = [*steps, _linear_transform(config.n_targets, config)]
        embedding = None
        if config.standardize:  # identity until set_standardization
            layers.insert(
                0,
                transforms.PointwiseAffineTransform(
                    shift=torch.zeros(config.n_targets), scale=torch.ones(config.n_targets)
                ),
            )
            embedding = ContextStandardization(config.n_conditioning)
        transform = transforms.CompositeTransform(layers)
        base = distributions.StandardNormal((config.n_targets,))
        return flows.Flow(transform, base, embedding_net=embedding)

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def load_model(
    checkpoint_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    spline: str | None = None,
) -> tuple[flows.Flow, FlowConfig, dict]:
    """Rebuild a trained flow from a checkpoint file alone.

    Args:
        checkpoint_path: a checkpoint written by ``flashsim train`` (``best.pt``,
            ``last.pt``, ``epoch-0005.pt``, ...).
        device: where to put the flow.
        spline: rebuild the flow with this spline engine (``"fused"``/``"nflows"``)
            instead of the checkpoint's; the weights are the same either way.

    Returns:
        ``(flow, config, metadata)``: the flow in eval mode, its :class:`FlowConfig` and
        the metadata of the store it was trained on (``object``, ``layout``,
        ``preprocessing`` with every transform and its inverse, ...).

    Raises:
        FlashSimError: if the file is missing or not a flashsim checkpoint.
    """
    ckpt = load_checkpoint(checkpoint_path, map_location="cpu")
    config = ckpt.flow_config.replace(spline=spline)
    flow = build_flow(config)
    try:
        flow.load_state_dict(ckpt.model)
    except RuntimeError as err:
        raise FlashSimError(
            f"{checkpoint_path}: the saved weights do not fit the saved flow configuration "
            f"({str(err).splitlines()[0]}); the file is damaged or from an incompatible version."
        ) from None
    flow.to(device)
    flow.eval()
    return flow, config, ckpt.store_metadata
