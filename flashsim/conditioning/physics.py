"""The physics checks of the field, FlashSim vs FullSim, by true class.

* Response profiles: mean and RMS of each ``ColumnRoles.responses`` target (jets:
  ``ptRatio``, ``etaMinusGen``, ``phiMinusGen``) in bins of gen pT and of gen eta, per
  class (jet flavour b / c / light, muon prompt / non-prompt), with errors, and a
  ``χ²/ndf`` between FlashSim and FullSim per profile and statistic.
* ROC curves and AUC of each ``ColumnRoles.discriminants`` entry (b taggers for b vs
  light and c vs light, c taggers for c vs light; muons' ``pfRelIso03_all`` and
  ``ip3d`` for non-prompt vs prompt) using the true class, and ``ΔAUC`` = FlashSim AUC
  minus FullSim AUC.

Floors: the same statistics between two halves of FullSim (:mod:`.floors`).
All in physical units; non-finite FlashSim values are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from flashsim.conditioning.rows import CheckRows

PROFILE_BINS = 8
"""Bins of gen pT and of gen eta in the profiles (quantiles of the rows)."""
MIN_BIN_ROWS = 50
"""A profile bin enters the χ² when FlashSim and FullSim both have this many rows."""
MIN_CLASS_ROWS = 20
"""A ROC check needs this many signal and background rows."""
ROC_POINTS = 101
STATS = ("mean", "rms")


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges: the range of the finite ``values`` with interior edges at their
    quantiles rounded to 3 significant digits (duplicates merged)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return np.array([0.0, 1.0])
    inner = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    inner = np.unique([float(f"{e:.3g}") for e in inner])
    inner = inner[(inner > v.min()) & (inner < v.max())]
    return np.concatenate([[v.min()], inner, [v.max()]])


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value, ``0 .. len(edges) - 2`` (the outer edges are inclusive)."""
    return np.searchsorted(edges[1:-1], values, side="right")


def binned_moments(values: np.ndarray, index: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Count, mean, RMS (standard deviation) and their errors per bin.

    ``index`` is the bin of each value (``-1``: none). Errors: ``rms / sqrt(n)`` for the
    mean; for the RMS, ``sqrt((m4 - m2²) / n) / (2 rms)`` (from the error of the
    variance with the bin's own fourth moment: valid for non-Gaussian tails too).
    """
    ok = (index >= 0) & np.isfinite(values)
    v, i = values[ok].astype(np.float64), index[ok]
    n = np.bincount(i, minlength=n_bins).astype(np.float64)
    safe = np.maximum(n, 1)
    mean = np.bincount(i, v, n_bins) / safe
    d = v - mean[i]
    m2 = np.bincount(i, d**2, n_bins) / safe
    m4 = np.bincount(i, d**4, n_bins) / safe
    rms = np.sqrt(m2)
    with np.errstate(divide="ignore", invalid="ignore"):
        rms_err = np.sqrt(np.maximum(m4 - m2**2, 0) / safe) / (2 * rms)
    return {
        "count": n,
        "mean": mean,
        "mean_err": rms / np.sqrt(safe),
        "rms": rms,
        "rms_err": rms_err,
    }


def chi2_ndf(a: dict, b: dict, stat: str) -> tuple[np.ndarray, np.ndarray]:
    """``χ²/ndf`` and ``ndf`` of statistic ``stat`` between two binned moment sets of
    shape ``(n_classes, n_bins)``, per class (NaN where no bin qualifies)."""
    err2 = a[f"{stat}_err"] ** 2 + b[f"{stat}_err"] ** 2
    ok = (a["count"] >= MIN_BIN_ROWS) & (b["count"] >= MIN_BIN_ROWS) & (err2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ok, (a[stat] - b[stat]) ** 2 / err2, 0.0)
        ndf = ok.sum(axis=-1)
        return terms.sum(axis=-1) / np.where(ndf > 0, ndf, np.nan), ndf


@dataclass
class Profile:
    """Mean and RMS of one response target versus gen pT or eta, for every class."""

    target: str
    versus: str  # "pt" or "eta"
    edges: np.ndarray
    classes: tuple[str, ...]
    full: dict  # arrays (n_classes, n_bins): count, mean, mean_err, rms, rms_err
    flash: dict
    chi2_ndf: dict  # stat -> (n_classes,)
    ndf: dict
    halves: dict = field(default_factory=dict)  # stat -> (n_splits, n_classes) χ²/ndf

    def to_dict(self) -> dict:
        def listed(d: dict) -> dict:
            return {k: np.asarray(v).tolist() for k, v in d.items()}

        return {
            "target": self.target,
            "versus": self.versus,
            "edges": self.edges.tolist(),
            "classes": {
                name: {
                    "fullsim": {k: v[c].tolist() for k, v in self.full.items()},
                    "flashsim": {k: v[c].tolist() for k, v in self.flash.items()},
                    **{f"chi2_ndf_{s}": float(self.chi2_ndf[s][c]) for s in STATS},
                    **{f"ndf_{s}": int(self.ndf[s][c]) for s in STATS},
                    **{f"floor_{s}": _nanmean(self.halves[s][:, c]) for s in STATS},
                }
                for c, name in enumerate(self.classes)
            },
            "halves_chi2_ndf": listed(self.halves),
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _moments(values: np.ndarray, index: np.ndarray, shape: tuple[int, int]) -> dict:
    m = binned_moments(values, index, shape[0] * shape[1])
    return {k: v.reshape(shape) for k, v in m.items()}


def profiles(rows: CheckRows, splits: list, bins: int = PROFILE_BINS) -> list[Profile]:
    """Every response target versus gen pT and gen eta (see module doc)."""
    out = []
    for versus, gen in (("pt", rows.gen_pt), ("eta", rows.gen_eta)):
        edges = quantile_edges(gen, bins)
        shape = (len(rows.class_names), len(edges) - 1)
        # one bin per (class, gen bin): a single bincount per target and sample
        index = np.where(rows.labels >= 0, rows.labels * shape[1] + bin_index(gen, edges), -1)
        for target in rows.roles.responses:
            j = rows.target(target)
            full, flash = rows.full_physical[:, j], rows.flash_physical[:, j]
            mf, mg = _moments(full, index, shape), _moments(flash, index, shape)
            fits = {s: chi2_ndf(mg, mf, s) for s in STATS}
            halves: dict[str, list[np.ndarray]] = {s: [] for s in STATS}
            for a, b in splits:
                ha, hb = _moments(full[a], index[a], shape), _moments(full[b], index[b], shape)
                for s in STATS:
                    halves[s].append(chi2_ndf(ha, hb, s)[0])
            out.append(
                Profile(
                    target=target,
                    versus=versus,
                    edges=edges,
                    classes=rows.class_names,
                    full=mf,
                    flash=mg,
                    chi2_ndf={s: fits[s][0] for s in STATS},
                    ndf={s: fits[s][1] for s in STATS},
                    halves={s: np.array(halves[s]) for s in STATS},
                )
            )
    return out


def auc(signal: np.ndarray, background: np.ndarray) -> float:
    """Area under the ROC curve: P(signal score > background score), ties counting a
    half (Mann-Whitney); NaN if either side is empty."""
    signal, background = signal[np.isfinite(signal)], background[np.isfinite(background)]
    ns, nb = len(signal), len(background)
    if not ns or not nb:
        return float("nan")
    ranks = rankdata(np.concatenate([signal, background]))
    return float((ranks[:ns].sum() - ns * (ns + 1) / 2) / (ns * nb))


def roc_curve(
    signal: np.ndarray, background: np.ndarray, points: int = ROC_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """``(signal efficiency, background efficiency)`` of the cuts ``score > t``, ``t``
    at quantiles of the signal scores (so the points spread along the signal axis)."""
    s, b = np.sort(signal[np.isfinite(signal)]), np.sort(background[np.isfinite(background)])
    t = np.quantile(s, np.linspace(0, 1, points))
    eff_s = 1 - np.searchsorted(s, t, side="right") / len(s)
    eff_b = 1 - np.searchsorted(b, t, side="right") / len(b)
    return eff_s, eff_b


@dataclass
class RocCheck:
    """One discriminant, one signal/background pair, FlashSim vs FullSim."""

    column: str
    signal: str
    background: str
    n_signal: int
    n_background: int
    auc_fullsim: float
    auc_flashsim: float
    halves: np.ndarray  # (n_splits,) |AUC(half A) - AUC(half B)| of FullSim
    curve_fullsim: tuple
    curve_flashsim: tuple

    @property
    def delta_auc(self) -> float:
        return self.auc_flashsim - self.auc_fullsim

    def to_dict(self) -> dict:
        return {
            "column": self.column,
            "signal": self.signal,
            "background": self.background,
            "n_signal": self.n_signal,
            "n_background": self.n_background,
            "auc_fullsim": self.auc_fullsim,
            "auc_flashsim": self.auc_flashsim,
            "delta_auc": self.delta_auc,
            "floor": float(np.mean(self.halves)),
        }


def roc_checks(rows: CheckRows, splits: list) -> list[RocCheck]:
    """Every discriminant of the layout whose classes both have enough rows."""
    names = rows.class_names
    out = []
    for d in rows.roles.discriminants:
        sig, bkg = rows.labels == names.index(d.signal), rows.labels == names.index(d.background)
        if sig.sum() < MIN_CLASS_ROWS or bkg.sum() < MIN_CLASS_ROWS:
            continue
        j = rows.target(d.column)
        full, flash = rows.full_physical[:, j], rows.flash_physical[:, j]
        halves = [
            abs(auc(full[a][sig[a]], full[a][bkg[a]]) - auc(full[b][sig[b]], full[b][bkg[b]]))
            for a, b in splits
        ]
        out.append(
            RocCheck(
                column=d.column,
                signal=d.signal,
                background=d.background,
                n_signal=int(sig.sum()),
                n_background=int(bkg.sum()),
                auc_fullsim=auc(full[sig], full[bkg]),
                auc_flashsim=auc(flash[sig], flash[bkg]),
                halves=np.array(halves),
                curve_fullsim=roc_curve(full[sig], full[bkg]),
                curve_flashsim=roc_curve(flash[sig], flash[bkg]),
            )
        )
    return out
