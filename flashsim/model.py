"""The conditional neural spline flow of FlashSim, built with nflows.

The architecture is the original FlashSim ``create_NDE_model`` (itself adapted from
the ``uci.py`` example of the neural spline flow paper, arXiv:1906.04032):

* base distribution: ``StandardNormal((n_targets,))``;
* ``num_flow_steps`` steps, each ``RandomPermutation`` + ``LULinear(identity_init=True)``
  followed by a ``PiecewiseRationalQuadraticCouplingTransform`` whose mask alternates
  (``even = step % 2 == 0``), ``tails="linear"``, ``tail_bound`` (1.0, the original
  default: the splines act on [-1, 1], the linear tails pass the rest through), and a
  conditioner ``ResidualNet(in, out, hidden, context_features=n_conditioning,
  num_blocks, activation, dropout, batch_norm)``;
* one final ``RandomPermutation`` + ``LULinear`` (as the original's
  ``create_linear_transform``).

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

from flashsim.errors import FlashSimError
from flashsim.flow_config import FlowConfig

# nflows 0.14 (the last release) calls torch.triangular_solve, deprecated since torch 2.0;
# the warning is the library's, not the user's, and would repeat every run.
warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")

ACTIVATION_FUNCTIONS = {"relu": F.relu, "elu": F.elu, "leaky_relu": F.leaky_relu, "gelu": F.gelu}
"""Activation functions of the conditioner networks, by name (see ``ACTIVATIONS``)."""


def _linear_transform(features: int) -> transforms.Transform:
    # A random (fixed) permutation then a learnable LU-decomposed linear map starting at
    # the identity: the original's create_linear_transform.
    return transforms.CompositeTransform(
        [
            transforms.RandomPermutation(features=features),
            transforms.LULinear(features, identity_init=True),
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

    return transforms.PiecewiseRationalQuadraticCouplingTransform(
        mask=utils.create_alternating_binary_mask(config.n_targets, even=(step % 2 == 0)),
        transform_net_create_fn=conditioner,
        num_bins=config.num_bins,
        tails="linear",
        tail_bound=config.tail_bound,
        apply_unconditional_transform=False,
    )


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
                [_linear_transform(config.n_targets), _coupling_transform(i, config)]
            )
            for i in range(config.num_flow_steps)
        ]
        transform = transforms.CompositeTransform([*steps, _linear_transform(config.n_targets)])
        return flows.Flow(transform, distributions.StandardNormal((config.n_targets,)))

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def load_model(
    checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[flows.Flow, FlowConfig, dict]:
    """Rebuild a trained flow from a checkpoint file alone.

    Args:
        checkpoint_path: a checkpoint written by ``flashsim train`` (``best.pt``,
            ``last.pt``, ``epoch-0005.pt``, ...).
        device: where to put the flow.

    Returns:
        ``(flow, config, metadata)``: the flow in eval mode, its :class:`FlowConfig` and
        the metadata of the store it was trained on (``object``, ``layout``,
        ``preprocessing`` with every transform and its inverse, ...).

    Raises:
        FlashSimError: if the file is missing or not a flashsim checkpoint.
    """
    from flashsim.train.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint_path, map_location="cpu")
    config = FlowConfig.from_dict(ckpt["flow_config"])
    flow = build_flow(config)
    try:
        flow.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise FlashSimError(
            f"{checkpoint_path}: the saved weights do not fit the saved flow configuration "
            f"({str(err).splitlines()[0]}); the file is damaged or from an incompatible version."
        ) from None
    flow.to(device)
    flow.eval()
    return flow, config, ckpt.get("store_metadata", {})
