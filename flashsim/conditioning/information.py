"""How much the flow draws from its conditioning: ΔNLL under permutations.

``ΔNLL = mean NLL(targets | permuted conditioning) - mean NLL(targets | conditioning)``,
in nats per row, over the same rows. Permuting the conditioning rows across the split
keeps its distribution but breaks its pairing with the targets: a flow that ignores its
conditioning scores ``ΔNLL ≈ 0``, one that uses it scores the mutual information it has
learnt (a lower bound of it). Permuting one conditioning column at a time (the others
kept) tells which generator-level inputs the flow actually uses.

The error of a ΔNLL is the standard error of the per-row differences (paired: the same
rows on both sides), ``std / sqrt(N)``.
"""

from __future__ import annotations

import numpy as np
import torch
from nflows import flows

from flashsim.conditioning.floors import stream

NLL_BATCH_ROWS = 16_384


@torch.no_grad()
def row_nll(
    flow: flows.Flow,
    targets: np.ndarray,
    conditioning: np.ndarray,
    batch_rows: int = NLL_BATCH_ROWS,
) -> np.ndarray:
    """Negative log-likelihood per row (nats), float64 ``(N,)``; inputs preprocessed,
    ``(N, n_targets)`` and ``(N, n_conditioning)`` float32. ``flow`` in eval mode."""
    device = next(flow.parameters()).device
    out = np.empty(len(targets))
    for start in range(0, len(targets), batch_rows):
        x = torch.from_numpy(np.ascontiguousarray(targets[start : start + batch_rows]))
        y = torch.from_numpy(np.ascontiguousarray(conditioning[start : start + batch_rows]))
        out[start : start + len(x)] = (
            -flow.log_prob(x.to(device), context=y.to(device)).cpu().numpy()
        )
    return out


def _delta(nll_true: np.ndarray, nll_permuted: np.ndarray) -> dict:
    diff = nll_permuted - nll_true
    ok = np.isfinite(diff)
    n = int(ok.sum())
    return {
        "delta_nll": float(diff[ok].mean()) if n else float("nan"),
        "error": float(diff[ok].std() / np.sqrt(n)) if n > 1 else float("nan"),
        "nonfinite_rows": int(len(diff) - n),
    }


def delta_nll(
    flow: flows.Flow,
    targets: np.ndarray,
    conditioning: np.ndarray,
    seed: int,
    columns: tuple[str, ...] | None = None,
) -> dict:
    """ΔNLL of permuting all conditioning rows; with ``columns`` (the conditioning
    column names) also of permuting each column alone.

    Returns:
        ``{"nll", "nll_permuted", "delta_nll", "error", "nonfinite_rows"}`` plus, with
        ``columns``, ``"per_column": {name: {"delta_nll", "error", ...}}``.
    """
    rng = stream(seed, "nll-permutation")
    perm = rng.permutation(len(targets))
    nll = row_nll(flow, targets, conditioning)
    nll_perm = row_nll(flow, targets, conditioning[perm])
    out = {
        "nll": float(np.mean(nll[np.isfinite(nll)])),
        "nll_permuted": float(np.mean(nll_perm[np.isfinite(nll_perm)])),
        **_delta(nll, nll_perm),
    }
    if columns is not None:
        per_column = {}
        for j, name in enumerate(columns):
            shuffled = conditioning.copy()
            shuffled[:, j] = conditioning[perm, j]
            per_column[name] = _delta(nll, row_nll(flow, targets, shuffled))
        out["per_column"] = per_column
    return out
