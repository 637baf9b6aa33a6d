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

Only what the element's own bin needs is computed per element. The tables (all bins of a
row) are the costly part, so their pipeline is short (:class:`_BinTables`): widths and
heights go through it stacked as one ``(..., 2, K)`` table (the division by the logit
scale, softmax, floor, cumulative sum, each once), the knots in the interval are formed
for the searched coordinate only, and widths, heights, slopes and derivatives are formed
after gathering the bin's two ends (nflows forms them for every bin, then gathers). The
forward and the inverse keep nflows' floating-point operations, so their values are
nflows' (bit for bit in ``tests/test_spline.py``; in 17 of the 610 k values of 36 k toy
jets sampled by ``flashsim generate``, one ulp apart, where an elementwise kernel's vector
and scalar paths round differently on differently shaped tensors); the forward and
the inverse must round alike: a knot one ulp apart between them is amplified by the
slope ratio of a bin at the floors (up to ~1e3) in the inverse of the forward. The
backward is analytic and writes one gradient buffer for the packed parameters: a row's
cumulative sums reach the result only at its bin's two ends, so their gradient is a step
over the bins and softmax's backward a ``where`` and a multiply (no reversed cumulative
sum, no zero-filled table per gather, no ``cat`` for the split); the gradients agree with
autograd's to rounding (relative 8e-7 for the paper flow).

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
from typing import Any

import torch
from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.splines import rational_quadratic as nflows_rq
from torch import nn
from torch.nn import functional as F

DEFAULT_MIN_BIN_WIDTH: float = nflows_rq.DEFAULT_MIN_BIN_WIDTH
DEFAULT_MIN_BIN_HEIGHT: float = nflows_rq.DEFAULT_MIN_BIN_HEIGHT
DEFAULT_MIN_DERIVATIVE: float = nflows_rq.DEFAULT_MIN_DERIVATIVE
CPU_PASS_TABLE_ELEMENTS = 2**20
"""Table entries (rows x features x 2K) per pass of a spline without gradients on a CPU:
larger calls (sampling batches) go through in passes of rows whose tables stay in the
caches; the paper flows' inverse of 4096 rows runs ~2x faster (same values)."""


class _BinTables(torch.autograd.Function):
    """The table part of the spline: each value's bin ends and their derivative logits,
    from the packed parameters.

    ``params`` ``(..., 3K - 1)`` are nflows' layout, width logits | height logits |
    derivative logits of the inner knots; ``clamped`` ``(...)`` are the values, inside
    ``[-B, B]``, of the searched coordinate (``x`` forward, ``y`` inverse). Returns
    ``(x_k, x_k1, y_k, y_k1, u_k, u_k1)``, each ``(...)``: the bin's left and right knot in
    ``x`` and ``y`` and the derivative logits there (the ends' pinned to slope 1).

    Forward: nflows' operations (so nflows' rounding) on the stacked width and height
    logits ``(..., 2, K)``: division by the logit scale (which also makes them
    contiguous), softmax, floor ``m + (1 - K m) p``, cumulative sum; the knots in the
    interval for the searched coordinate only, the rest after the gather. Backward:
    analytic, into one gradient buffer for ``params`` (no ``cat``, no zero-filled table
    per gather, no reversed cumulative sum): a row's sums reach the result only at its
    bin's two ends, so their gradient is a step over the bins, and softmax's backward one
    ``where`` and one multiply.
    """

    @staticmethod
    def forward(
        ctx: Any,
        params: torch.Tensor,
        clamped: torch.Tensor,
        inverse: bool,
        bound: float,
        logit_scale: float,
        minima: tuple[float, float, float],
    ) -> tuple[torch.Tensor, ...]:
        k = (params.shape[-1] + 1) // 3
        logits = params[..., : 2 * k].unflatten(-1, (2, k)) / logit_scale  # (..., 2, K): w, h
        probs = torch.softmax(logits, dim=-1)
        # the floored sizes overwrite the logits, or the softmax when there is no backward
        sizes = logits if ctx.needs_input_grad[0] else probs
        cumulative = _cumsum_rows(_floored(probs, minima[:2], out=sizes))
        # the bin = how many inner knots (the first K - 1 sums, in the interval) of the
        # searched coordinate are <= the value: nflows' count (a value on a knot belongs
        # to the bin on its right, B itself to the last bin)
        knots = _to_interval(cumulative[..., int(inverse), :-1], bound)
        index = torch.searchsorted(knots, clamped.unsqueeze(-1).contiguous(), right=True)
        # the columns of the bin's ends (knots index and index + 1, 1-based); the first
        # bin's left end is -B and the last's right end B, pinned as nflows pins them.
        # Every gathered end is its own contiguous (...) tensor: elementwise work on
        # (..., 2) tensors runs several times slower on a CPU
        left, right = (index - 1).clamp(min=0), index.clamp(max=k - 2)
        first, last = index.squeeze(-1) == 0, index.squeeze(-1) == k - 1
        sums = [
            cumulative[..., t, :].gather(-1, c).squeeze(-1) for t in (0, 1) for c in (left, right)
        ]
        x_k, x_k1, y_k, y_k1 = (
            torch.where(pinned, end, _to_interval(s, bound))
            for s, pinned, end in zip(sums, (first, last) * 2, (-bound, bound) * 2, strict=True)
        )
        edge = math.log(math.exp(1 - minima[2]) - 1)  # softplus^-1(1 - d_min): slope 1
        u = params[..., 2 * k :]
        u_k = torch.where(first, edge, u.gather(-1, left).squeeze(-1))
        u_k1 = torch.where(last, edge, u.gather(-1, right).squeeze(-1))
        ctx.save_for_backward(probs, index, left, right, *sums)
        ctx.constants = (bound, logit_scale, minima)
        return x_k, x_k1, y_k, y_k1, u_k, u_k1

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        probs, index, left, right, *sums = ctx.saved_tensors
        bound, logit_scale, minima = ctx.constants
        k = probs.shape[-1]
        keep = index.squeeze(-1) != 0, index.squeeze(-1) != k - 1  # unpinned ends
        terms = [
            _end_terms(
                grads[2 * t : 2 * t + 2],
                sums[2 * t : 2 * t + 2],
                (left, right),
                keep,
                minima[t],
                k,
                bound,
                logit_scale,
            )
            for t in (0, 1)
        ]
        step, total, right_end = (
            torch.stack(z, dim=-1).unsqueeze(-1) for z in zip(*terms, strict=True)
        )
        before = (torch.arange(k, device=index.device) < index).unsqueeze(-2)  # (..., 1, K)
        # straight into one buffer for params; dynamo refuses a strided ``out=``, but
        # under torch.compile the final cat is fused anyway
        grad = (
            None if torch.compiler.is_compiling() else probs.new_empty(*index.shape[:-1], 3 * k - 1)
        )
        out = None if grad is None else grad[..., : 2 * k].unflatten(-1, (2, k))
        grad_logits = torch.where(before, step - total, -total, out=out)
        grad_logits.scatter_add_(-1, index.unsqueeze(-2).expand_as(total), right_end)
        grad_logits.mul_(probs)
        grad_derivative_logits = (
            probs.new_zeros(*index.shape[:-1], k - 1)
            if grad is None
            else grad[..., 2 * k :].zero_()
        )
        for column, g, kept in zip((left, right), grads[4:], keep, strict=True):
            grad_derivative_logits.scatter_add_(-1, column, (g * kept).unsqueeze(-1))
        if grad is None:
            grad = torch.cat([grad_logits.flatten(-2), grad_derivative_logits], dim=-1)
        return grad, None, None, None, None, None


def _end_terms(
    grads: Sequence[torch.Tensor],
    sums: Sequence[torch.Tensor],
    columns: tuple[torch.Tensor, torch.Tensor],
    keep: tuple[torch.Tensor, torch.Tensor],
    min_size: float,
    k: int,
    bound: float,
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One table's share of the backward, each ``(...)``: ``step``, the gradient of the
    scaled logits' softmax below the bin, ``total`` (subtracted everywhere) and
    ``right_end`` (added at the bin's column).

    The table's cumulative floored sizes ``C(i) = (1 - K m) P(i) + m (i + 1)`` (``P`` the
    cumulative softmax ``p``) reach the result at the bin's ends, columns ``b - 1`` and
    ``b``, with gradients ``g_left``, ``g_right``; so ``dL/dp_j = (1 - K m)(g_left [j < b]
    + g_right [j <= b])``, and softmax's backward divided by the scale is ``p_j (dL/dp_j -
    sum_i p_i dL/dp_i) / scale``, the sum being ``g . (C(ends) - m (i + 1))``.
    """
    g_left, g_right = (g * (kept * (2 * bound)) for g, kept in zip(grads, keep, strict=True))
    share = (1 - min_size * k) / logit_scale
    c_left, c_right = (
        s - min_size * (c.squeeze(-1) + 1).to(s.dtype) for s, c in zip(sums, columns, strict=True)
    )
    total = (g_left * c_left + g_right * c_right) / logit_scale
    return (g_left + g_right) * share, total, g_right * share


def _floored(
    probs: torch.Tensor, min_sizes: tuple[float, float], out: torch.Tensor
) -> torch.Tensor:
    """``(..., 2, K)`` softmax -> nflows' floored sizes ``m + (1 - K m) p`` (``m`` per table:
    widths, heights) with nflows' operations, written into ``out`` (contiguous, or ``probs``)."""
    k = probs.shape[-1]
    if min_sizes[0] == min_sizes[1]:
        return torch.mul(probs, 1 - min_sizes[0] * k, out=out).add_(min_sizes[0])
    for t, m in enumerate(min_sizes):  # different floors: table by table
        out[..., t, :].copy_(probs[..., t, :] * (1 - m * k)).add_(m)
    return out


def _cumsum_rows(table: torch.Tensor) -> torch.Tensor:
    """Cumulative sums along the last axis of a contiguous table, in place; as one
    ``(rows, K)`` matrix, which the CPU kernel scans about twice as fast as 4-D."""
    return table.view(-1, table.shape[-1]).cumsum_(dim=-1).view(table.shape)


def _to_interval(cumulative: torch.Tensor, bound: float) -> torch.Tensor:
    # nflows' ``(right - left) * cumwidths + left``: the same operations, the same rounding
    return ((2 * bound) * cumulative).add_(-bound)


def packed_rational_quadratic_spline(
    inputs: torch.Tensor,
    params: torch.Tensor,
    inverse: bool = False,
    tail_bound: float = 1.0,
    logit_scale: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rational_quadratic_spline` on nflows' packed coupling parameters.

    Args:
        inputs: ``(...)`` values (any real number).
        params: ``(..., 3K - 1)``: the ``K`` width logits, the ``K`` height logits and
            the ``K - 1`` derivative logits, concatenated (a coupling network's output).
        logit_scale: the width and height logits are divided by it (nflows divides them
            by ``sqrt(hidden_features)`` of the conditioner).
        inverse, tail_bound, min_bin_width, min_bin_height, min_derivative: as
            :func:`rational_quadratic_spline`.

    Returns:
        ``(outputs, logabsdet)``, both shaped like ``inputs``.
    """
    num_bins = (params.shape[-1] + 1) // 3
    if params.shape[-1] != 3 * num_bins - 1 or num_bins < 2:
        raise ValueError(f"Expected 3K - 1 parameters with K >= 2, got {params.shape[-1]}")
    if min_bin_width * num_bins > 1.0 or min_bin_height * num_bins > 1.0:
        raise ValueError("Minimal bin width or height too large for the number of bins")
    bound = float(tail_bound)
    minima = (min_bin_width, min_bin_height, min_derivative)
    rows = _pass_rows(inputs, params)
    if rows is None:
        return _spline_pass(inputs, params, inverse, bound, float(logit_scale), minima)
    passes = [
        _spline_pass(x, p, inverse, bound, float(logit_scale), minima)
        for x, p in zip(inputs.split(rows), params.split(rows), strict=True)
    ]
    return torch.cat([y for y, _ in passes]), torch.cat([lad for _, lad in passes])


def _pass_rows(inputs: torch.Tensor, params: torch.Tensor) -> int | None:
    """Rows per pass for a call without gradients on a CPU whose tables exceed
    :data:`CPU_PASS_TABLE_ELEMENTS` (``None``: one pass). A multiple of 64 rows: every
    pass but the last then fills whole vectors, so the values are a single pass's."""
    needs_grad = torch.is_grad_enabled() and (inputs.requires_grad or params.requires_grad)
    if needs_grad or params.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if params.dim() < 2 or params.shape[:-1] != inputs.shape:
        return None
    table = params.numel() // params.shape[-1] * (params.shape[-1] + 1) * 2 // 3
    passes = -(-table // CPU_PASS_TABLE_ELEMENTS)
    rows = -(-params.shape[0] // passes)
    rows = -(-rows // 64) * 64
    return rows if rows < params.shape[0] else None


def _spline_pass(
    inputs: torch.Tensor,
    params: torch.Tensor,
    inverse: bool,
    bound: float,
    logit_scale: float,
    minima: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`packed_rational_quadratic_spline` in one pass (its arguments, checked)."""
    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)
    x_k, x_k1, y_k, y_k1, u_k, u_k1 = _BinTables.apply(
        params, clamped.detach(), inverse, bound, logit_scale, minima
    )
    d_k, d_k1 = minima[2] + F.softplus(u_k), minima[2] + F.softplus(u_k1)
    outputs, logabsdet = _evaluate(clamped, (x_k, x_k1, y_k, y_k1, d_k, d_k1), inverse)
    return torch.where(inside, outputs, inputs), torch.where(inside, logabsdet, 0.0)


def _evaluate(
    clamped: torch.Tensor, bin_: tuple[torch.Tensor, ...], inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rational-quadratic map of each value ``(...)`` in its bin ``(x_k, x_k1, y_k,
    y_k1, d_k, d_k1)`` (its knots and the derivatives there, each ``(...)``); nflows'
    formulas."""
    x_k, x_k1, y_k, y_k1, d_k, d_k1 = bin_
    w_k, h_k = x_k1 - x_k, y_k1 - y_k
    s_k = h_k / w_k
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
    return outputs, -logabsdet if inverse else logabsdet


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
    params = torch.cat([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], -1)
    return packed_rational_quadratic_spline(
        inputs,
        params,
        inverse=inverse,
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


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
        self._logit_scale = float(math.sqrt(hidden)) if hidden is not None else 1.0

    def _spline(
        self, inputs: torch.Tensor, params: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = params.reshape(inputs.shape[0], inputs.shape[1], -1)
        outputs, logabsdet = packed_rational_quadratic_spline(
            inputs,
            params,
            inverse=inverse,
            tail_bound=self.tail_bound,
            logit_scale=self._logit_scale,
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
