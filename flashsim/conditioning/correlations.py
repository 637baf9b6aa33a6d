"""Linear correlations, FlashSim vs FullSim.

Pearson coefficients of every target with every target and with every conditioning
column, in the preprocessed space (what the flow models; the logs and arctans there
keep a few far tails from dominating), over the rows where the FlashSim draw is finite.
``Δρ = ρ(FlashSim) - ρ(FullSim)``; ``max |Δρ|`` is reported over all entries (``all``) and separately for the
targets × targets block (the flow's joint distribution) and the targets ×
conditioning block (how the targets follow the gen inputs: about 0 for a blind flow).
Constant columns have no correlation (NaN, left out of the maxima).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashsim.conditioning.rows import CheckRows

BLOCKS = ("targets_targets", "targets_conditioning", "all")


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson coefficients ``(p, q)`` between the columns of ``a (N, p)`` and ``b
    (N, q)``; NaN for a constant column."""
    a = a.astype(np.float64) - a.mean(axis=0)
    b = b.astype(np.float64) - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.sqrt((a**2).sum(axis=0))[:, None] * np.sqrt((b**2).sum(axis=0))[None, :]
        rho = (a.T @ b) / norm
    rho[~(norm > 0)] = np.nan
    return rho


def correlation_matrix(targets: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """``(n_targets, n_targets + n_conditioning)``: ``ρ(targets, [targets | conditioning])``."""
    return pearson(targets, np.concatenate([targets, conditioning], axis=1))


def max_abs(delta: np.ndarray, n_targets: int) -> dict[str, float]:
    """``max |Δρ|`` of each block and of both (``all``); the diagonal of targets ×
    targets (always 1) is left out."""
    tt = delta[:, :n_targets].copy()
    np.fill_diagonal(tt, np.nan)
    blocks = {"targets_targets": tt, "targets_conditioning": delta[:, n_targets:]}
    blocks["all"] = np.concatenate([tt, blocks["targets_conditioning"]], axis=1)
    return {
        k: float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else float("nan")
        for k, v in blocks.items()
    }


@dataclass
class CorrelationResult:
    """Correlation matrices (rows: targets; columns: targets then conditioning)."""

    columns: tuple[str, ...]
    n_targets: int
    fullsim: np.ndarray
    flashsim: np.ndarray
    floors: dict[str, float]  # block -> mean over halvings of max |Δρ| between halves

    @property
    def delta(self) -> np.ndarray:
        return self.flashsim - self.fullsim

    def max_delta(self) -> dict[str, float]:
        return max_abs(self.delta, self.n_targets)

    def worst(self) -> dict:
        """The pair of largest ``|Δρ|``."""
        d = np.abs(self.delta)
        d[:, : self.n_targets][np.eye(self.n_targets, dtype=bool)] = np.nan
        if not np.isfinite(d).any():
            return {"target": None, "column": None, "delta_rho": float("nan")}
        i, j = np.unravel_index(int(np.nanargmax(d)), d.shape)
        return {
            "target": self.columns[i],
            "column": self.columns[j],
            "delta_rho": float(self.delta[i, j]),
        }

    def to_dict(self) -> dict:
        return {
            "space": "preprocessed",
            "rows": list(self.columns[: self.n_targets]),
            "columns": list(self.columns),
            "fullsim": self.fullsim.tolist(),
            "flashsim": self.flashsim.tolist(),
            "max_delta_rho": self.max_delta(),
            "floor": self.floors,
            "worst": self.worst(),
        }


def correlation_check(rows: CheckRows, splits: list) -> CorrelationResult:
    """FlashSim and FullSim matrices, and split-halves floors of both blocks' maxima."""
    layout = rows.layout
    ok = np.isfinite(rows.flash).all(axis=1)
    full = correlation_matrix(rows.full, rows.conditioning)
    flash = correlation_matrix(rows.flash[ok], rows.conditioning[ok])
    halves = [
        max_abs(
            correlation_matrix(rows.full[a], rows.conditioning[a])
            - correlation_matrix(rows.full[b], rows.conditioning[b]),
            layout.n_targets,
        )
        for a, b in splits
    ]
    floors = {k: float(np.nanmean([h[k] for h in halves])) for k in BLOCKS}
    return CorrelationResult(
        columns=layout.target_columns + layout.conditioning_columns,
        n_targets=layout.n_targets,
        fullsim=full,
        flashsim=flash,
        floors=floors,
    )
