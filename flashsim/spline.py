"""A mask-free, sync-free rational-quadratic spline: the same mathematics as nflows 0.14.

nflows' ``unconstrained_rational_quadratic_spline`` (Durkan et al., arXiv:1906.04032)
picks the elements inside ``[-B, B]`` with boolean masks and checks ``torch.any``,
``torch.min``/``max`` and the inverse's discriminant on every call. On a GPU each of
those is a device-to-host synchronisation, and the masks give data-dependent shapes,
which rule out ``torch.compile(fullgraph=True)`` and CUDA graphs. Here every element goes
through the spline after being clamped into the interval, and :func:`torch.where` puts
the linear tails (the identity, log-det 0) back outside it; bins are found with
:func:`torch.searchsorted`. Inside the interval the results are nflows' own, operation
for operation:

* bin widths ``w_min + (1 - w_min K) softmax(.)``, cumulated, scaled to the interval, the
  end knots pinned to ``-B`` and ``B`` (no gradient flows through them); heights alike;
* knot derivatives ``d_min + softplus(.)`` with the two end derivatives set to the
  constant ``log(exp(1 - d_min) - 1)``, i.e. slope 1, continuous with the linear tails;
* a value exactly on a knot belongs to the bin to its right; ``B`` itself to the last
  bin (nflows adds ``1e-6`` to the last knot before its search);
* the inverse takes the numerically stable root ``2c / (-b - sqrt(b^2 - 4ac))``.

Only what the element's own bin needs is computed per element: the softmax and cumulative
sums run over all bins (the knot positions over all bins of the searched coordinate),
but widths, heights, slopes and derivatives are formed after gathering the two knots of
the bin (nflows forms them for every bin, then gathers), with the same floating-point
operations, so the values are nflows' to the last bit.

:class:`FusedRQCouplingTransform` is a drop-in for nflows'
``PiecewiseRationalQuadraticCouplingTransform`` with linear tails: same constructor,
same parameters and buffers (``state_dict`` keys and shapes), so a checkpoint of one
loads into the other.

Examples
--------
>>> import torch
>>> x = torch.tensor([[-3.0, 0.2, 3.0]])
>>> w, h, d = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.zeros(1, 3, 3)
>>> y, logdet = rational_quadratic_spline(x, w, h, d, tail_bound=1.0)
>>> y[0, 0].item(), y[0, 2].item(), logdet[0, 0].item()   # linear tails: the identity
(-3.0, 3.0, 0.0)
>>> x_back, _ = rational_quadratic_spline(y, w, h, d, inverse=True, tail_bound=1.0)
>>> bool(torch.allclose(x_back, x, atol=1e-6))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.splines import rational_quadratic as nflows_rq
from torch import nn
from torch.nn import functional as F

DEFAULT_MIN_BIN_WIDTH: float = nflows_rq.DEFAULT_MIN_BIN_WIDTH
DEFAULT_MIN_BIN_HEIGHT: float = nflows_rq.DEFAULT_MIN_BIN_HEIGHT
DEFAULT_MIN_DERIVATIVE: float = nflows_rq.DEFAULT_MIN_DERIVATIVE


def _inner_cumulative(unnormalized: torch.Tensor, min_size: float) -> torch.Tensor:
    """``(..., K)`` bin logits -> ``(..., K - 1)`` cumulative floored bin sizes (on [0, 1])
    at the inner knots: nflows' ``w_min + (1 - K w_min) softmax``, cumulated."""
    num_bins = unnormalized.shape[-1]
    sizes = F.softmax(unnormalized, dim=-1) * (1 - min_size * num_bins) + min_size
    return torch.cumsum(sizes[..., :-1], dim=-1)


def _to_interval(cumulative: torch.Tensor, bound: float) -> torch.Tensor:
    # nflows' ``(right - left) * cumwidths + left``: the same operations, the same rounding
    return (2 * bound) * cumulative + (-bound)


def _gather_pair(table: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    picked = table.gather(-1, pair)
    return picked[..., 0], picked[..., 1]


def _bins(
    clamped: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool,
    bound: float,
    minima: tuple[float, float, float],
) -> tuple[torch.Tensor, ...]:
    """The bin of each clamped value ``(...)``: its left knot ``x_k``, width ``w_k``,
    bottom ``y_k``, height ``h_k`` and the derivatives ``d_k``, ``d_k1`` at its ends."""
    min_bin_width, min_bin_height, min_derivative = minima
    num_bins = unnormalized_widths.shape[-1]
    # Only the K - 1 inner knots are searched or gathered: the end knots are the bounds,
    # pinned (as nflows pins them, so no gradient flows through them).
    cum_w = _inner_cumulative(unnormalized_widths, min_bin_width)
    cum_h = _inner_cumulative(unnormalized_heights, min_bin_height)
    cum_searched, cum_other = (cum_h, cum_w) if inverse else (cum_w, cum_h)
    knots = _to_interval(cum_searched, bound)  # only the searched coordinate in full
    # bin = number of knots <= value, minus one (nflows' count; the first knot, -B, is
    # always <= the clamped value; the last, B + 1e-6 in nflows, never)
    index = torch.searchsorted(knots, clamped[..., None].contiguous(), right=True)
    first, last = index[..., 0] == 0, index[..., 0] == num_bins - 1
    # inner knots k and k + 1 (1-based), the bin's left and right, as table columns
    pair = torch.cat([(index - 1).clamp_(min=0), index.clamp(max=num_bins - 2)], dim=-1)

    lo, hi = _gather_pair(knots, pair)
    lo_other, hi_other = _gather_pair(cum_other, pair)
    lo_other, hi_other = _to_interval(lo_other, bound), _to_interval(hi_other, bound)
    lo, lo_other = torch.where(first, -bound, lo), torch.where(first, -bound, lo_other)
    hi, hi_other = torch.where(last, bound, hi), torch.where(last, bound, hi_other)
    if inverse:
        (y_k, y_k1), (x_k, x_k1) = (lo, hi), (lo_other, hi_other)
    else:
        (x_k, x_k1), (y_k, y_k1) = (lo, hi), (lo_other, hi_other)
    w_k, h_k = x_k1 - x_k, y_k1 - y_k

    # knot derivatives: the end ones are softplus^-1(1 - d_min), slope 1 with the tails
    edge = math.log(math.exp(1 - min_derivative) - 1)  # nflows' constant, as it writes it
    u_k, u_k1 = _gather_pair(unnormalized_derivatives, pair)
    d_k = min_derivative + F.softplus(torch.where(first, edge, u_k))
    d_k1 = min_derivative + F.softplus(torch.where(last, edge, u_k1))
    return x_k, w_k, y_k, h_k, d_k, d_k1


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    tail_bound: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotonic rational-quadratic spline on ``[-tail_bound, tail_bound]``, identity outside.

    Args:
        inputs: ``(...)`` values (any real number).
        unnormalized_widths, unnormalized_heights: ``(..., K)`` logits of the bin sizes.
        unnormalized_derivatives: ``(..., K - 1)`` pre-softplus derivatives at the inner
            knots (the end knots have derivative 1, matching the linear tails).
        inverse: apply the inverse map.
        tail_bound: half-width ``B`` of the interval of the spline.
        min_bin_width, min_bin_height, min_derivative: floors, as nflows.

    Returns:
        ``(outputs, logabsdet)``, both shaped like ``inputs``; ``logabsdet`` is
        ``log |d outputs / d inputs|`` (0 in the tails).
    """
    num_bins = unnormalized_widths.shape[-1]
    if min_bin_width * num_bins > 1.0 or min_bin_height * num_bins > 1.0:
        raise ValueError("Minimal bin width or height too large for the number of bins")
    bound = float(tail_bound)
    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)

    x_k, w_k, y_k, h_k, d_k, d_k1 = _bins(
        clamped,
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        inverse,
        bound,
        (min_bin_width, min_bin_height, min_derivative),
    )
    s_k = h_k / w_k  # nflows gathers heights / widths: the same quotient
    curvature = d_k + d_k1 - 2 * s_k

    if inverse:
        offset = clamped - y_k
        a = offset * curvature + h_k * (s_k - d_k)
        b = h_k * d_k - offset * curvature
        c = -s_k * offset
        # >= 0 in exact arithmetic; nflows asserts it (a host sync), rounding can dip below
        discriminant = (b.pow(2) - 4 * a * c).clamp_min(0)
        theta = (2 * c) / (-b - torch.sqrt(discriminant))
        outputs = theta * w_k + x_k
    else:
        theta = (clamped - x_k) / w_k
    theta_one_minus_theta = theta * (1 - theta)
    denominator = s_k + curvature * theta_one_minus_theta
    if not inverse:
        numerator = h_k * (s_k * theta.pow(2) + d_k * theta_one_minus_theta)
        outputs = y_k + numerator / denominator
    derivative_numerator = s_k.pow(2) * (
        d_k1 * theta.pow(2) + 2 * s_k * theta_one_minus_theta + d_k * (1 - theta).pow(2)
    )
    logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    return torch.where(inside, outputs, inputs), torch.where(inside, logabsdet, 0.0)


class FusedRQCouplingTransform(PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic coupling transform computed by :func:`rational_quadratic_spline`.

    Same constructor as ``PiecewiseRationalQuadraticCouplingTransform``, for the case
    flashsim uses: ``tails="linear"``, no unconditional transform, 2-D inputs
    ``(B, features)``. Parameters and buffers are the parent's (a checkpoint of either
    loads into the other); the split of the features and their merge back are fixed
    gathers, so nothing depends on the data.
    """

    def __init__(
        self,
        mask: torch.Tensor | Sequence[int],
        transform_net_create_fn: Callable[[int, int], nn.Module],
        *args,
        **kwargs,
    ) -> None:
        super().__init__(mask, transform_net_create_fn, *args, **kwargs)
        if self.tails != "linear" or self.unconditional_transform is not None:
            raise ValueError(
                "FusedRQCouplingTransform implements tails='linear' without an "
                f"unconditional transform (got tails={self.tails!r}, "
                f"apply_unconditional_transform={self.unconditional_transform is not None}); "
                "use nflows' PiecewiseRationalQuadraticCouplingTransform for the others."
            )
        order = torch.cat([self.identity_features, self.transform_features])
        # not persistent: the state_dict stays exactly the parent's
        self.register_buffer("_merge_index", torch.argsort(order), persistent=False)
        hidden = getattr(self.transform_net, "hidden_features", None)
        if hidden is None:
            hidden = getattr(self.transform_net, "hidden_channels", None)
        # nflows divides the width and height logits by sqrt(hidden) (better initialisation)
        self._logit_scale = float(math.sqrt(hidden)) if hidden is not None else None

    def _spline(
        self, inputs: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.num_bins
        params = params.reshape(inputs.shape[0], inputs.shape[1], -1)
        # split, not slices: its backward is one cat, not a zero-filled copy per slice
        widths, heights, derivatives = params.split([k, k, k - 1], dim=-1)
        if self._logit_scale is not None:
            widths, heights = widths / self._logit_scale, heights / self._logit_scale
        outputs, logabsdet = rational_quadratic_spline(
            inputs,
            widths,
            heights,
            derivatives,
            inverse=inverse,
            tail_bound=self.tail_bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
        return outputs, logabsdet.sum(dim=-1)

    def _couple(
        self, inputs: torch.Tensor, context: torch.Tensor | None, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 2 or inputs.shape[1] != self.features:
            raise ValueError(f"Expected inputs of shape (B, {self.features}), got {inputs.shape}.")
        identity = inputs.index_select(1, self.identity_features)
        transform = inputs.index_select(1, self.transform_features)
        params = self.transform_net(identity, context)
        transformed, logabsdet = self._spline(transform, params, inverse)
        outputs = torch.cat([identity, transformed], dim=1).index_select(1, self._merge_index)
        return outputs, logabsdet

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(inputs, context, inverse=False)

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(inputs, context, inverse=True)

    def _coupling_transform_forward(
        self, inputs: torch.Tensor, transform_params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(inputs, transform_params, inverse=False)

    def _coupling_transform_inverse(
        self, inputs: torch.Tensor, transform_params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(inputs, transform_params, inverse=True)
