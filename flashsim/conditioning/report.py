"""All conditioning checks on one split, their summary and their terminal lines.

:func:`check_conditioning` runs the checks of :mod:`.pit`, :mod:`.information`,
:mod:`.physics` and :mod:`.correlations` on the rows of a split and returns a
:class:`ConditioningResult`: the ``conditioning`` section of ``validation.json``
(:meth:`~ConditioningResult.section`), the numbers added to its ``summary``
(:meth:`~ConditioningResult.summary`), one terminal line per check
(:func:`table_lines`) and the figures (:meth:`~ConditioningResult.figures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from nflows import flows

from flashsim.conditioning.correlations import CorrelationResult, correlation_check
from flashsim.conditioning.floors import FLOOR_SPLITS, split_halves, stream
from flashsim.conditioning.information import delta_nll
from flashsim.conditioning.physics import Profile, RocCheck, profiles, roc_checks
from flashsim.conditioning.pit import DEFAULT_SAMPLES, PitResult, draw_ranks, pit_check
from flashsim.conditioning.rows import CheckRows
from flashsim.transforms import Preprocessing

DEFAULT_PIT_ROWS = 20_000
"""Rows of the checks that evaluate the flow many times per row (PIT, ΔNLL)."""


@dataclass
class ConditioningResult:
    """What :func:`check_conditioning` measured (a check not run is ``None`` / empty)."""

    settings: dict
    information: dict | None = None
    pit: PitResult | None = None
    profiles: list[Profile] = field(default_factory=list)
    rocs: list[RocCheck] = field(default_factory=list)
    correlations: CorrelationResult | None = None

    def summary(self) -> dict:
        """The ``summary`` numbers (NaN for a check without data); see docs/validation.md."""
        out = {"delta_nll": math.nan, "delta_nll_err": math.nan}
        if self.information is not None:
            out["delta_nll"] = self.information["delta_nll"]
            out["delta_nll_err"] = self.information["error"]
        out.update(_pit_summary(self.pit))
        out.update(_roc_summary(self.rocs))
        out.update(_rho_summary(self.correlations))
        out.update(_profile_summary(self.profiles))
        return out

    def section(self) -> dict:
        """The ``conditioning`` section of ``validation.json``."""
        return {
            "settings": self.settings,
            "information": self.information,
            "pit": self.pit.to_dict() if self.pit is not None else None,
            "profiles": [p.to_dict() for p in self.profiles],
            "roc": [r.to_dict() for r in self.rocs],
            "correlations": self.correlations.to_dict() if self.correlations else None,
        }

    def figures(self, title: str) -> dict:
        """``{file name: matplotlib Figure}``: profiles.png, roc.png, correlations.png,
        pit.png (for the checks that ran)."""
        from flashsim.conditioning import plots

        out = {}
        if any(n.any() for p in self.profiles for n in p.ndf.values()):
            out["profiles.png"] = plots.plot_profiles(self.profiles, title)
        if self.rocs:
            out["roc.png"] = plots.plot_rocs(self.rocs, title)
        if self.correlations is not None:
            out["correlations.png"] = plots.plot_correlations(self.correlations, title)
        if self.pit is not None:
            out["pit.png"] = plots.plot_pit(self.pit, title)
        return out


def _pit_summary(pit: PitResult | None) -> dict:
    if pit is None:
        return {"pit_ks_max": math.nan, "pit_ks_floor": math.nan, "pit_ks_worst": None}
    w = pit.worst()
    return {
        "pit_ks_max": w["ks"],
        "pit_ks_floor": w["floor"],
        "pit_ks_worst": f"{w['column']} ({w['cell']})",
    }


def _roc_summary(rocs: list[RocCheck]) -> dict:
    if not rocs:
        return {
            "max_delta_auc": math.nan,
            "max_delta_auc_floor": math.nan,
            "max_delta_auc_check": None,
        }
    worst = max(rocs, key=lambda r: abs(r.delta_auc) if math.isfinite(r.delta_auc) else -1)
    halves = np.max([r.halves for r in rocs], axis=0)  # per halving: the max over checks
    return {
        "max_delta_auc": abs(worst.delta_auc),
        "max_delta_auc_floor": float(np.mean(halves)),
        "max_delta_auc_check": f"{worst.column} {worst.signal} vs {worst.background}",
    }


def _rho_summary(corr: CorrelationResult | None) -> dict:
    if corr is None:
        return {
            "max_delta_rho": math.nan,
            "max_delta_rho_floor": math.nan,
            "max_delta_rho_pair": None,
        }
    w = corr.worst()
    return {
        "max_delta_rho": corr.max_delta()["all"],
        "max_delta_rho_floor": corr.floors["all"],
        "max_delta_rho_pair": f"{w['target']} x {w['column']}",
    }


def _profile_summary(profs: list[Profile]) -> dict:
    cells = [(p, s, c) for p in profs for s in p.chi2_ndf for c in range(len(p.classes))]
    values = np.array([p.chi2_ndf[s][c] for p, s, c in cells]) if cells else np.array([])
    if not np.isfinite(values).any():
        return {
            "profile_chi2_ndf_max": math.nan,
            "profile_chi2_ndf_floor": math.nan,
            "profile_worst": None,
        }
    p, s, c = cells[int(np.nanargmax(values))]
    # per halving: the largest χ²/ndf over every profile, statistic and class
    halves = np.stack([p.halves[s][:, c] for p, s, c in cells])
    return {
        "profile_chi2_ndf_max": float(np.nanmax(values)),
        "profile_chi2_ndf_floor": _mean_of_finite(
            np.where(np.isfinite(halves), halves, -np.inf).max(axis=0)
        ),
        "profile_worst": f"{p.target} {s} vs gen {p.versus}, {p.classes[c]}",
    }


def check_conditioning(
    flow: flows.Flow,
    preprocessing: Preprocessing,
    rows: CheckRows,
    *,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    pit_rows: int = DEFAULT_PIT_ROWS,
    per_column: bool = True,
    correlations: bool = True,
    progress: bool = False,
) -> ConditioningResult:
    """Run the conditioning checks.

    Args:
        flow: the nflows flow (put in eval mode here; its mode is restored after).
        preprocessing: the store's preprocessing (physical values for PIT ranks).
        rows: the split's rows with one FlashSim draw each.
        seed: seeds every random choice (PIT noise and ties, permutations, halvings).
        samples: flow draws per row of the PIT (0: no PIT).
        pit_rows: the PIT and ΔNLL use the first ``pit_rows`` rows (the other checks
            all rows).
        per_column: also ΔNLL per conditioning column (one pass per column).
        correlations: also the correlation matrices.
        progress: progress bar of the PIT sampling.
    """
    training = flow.training
    flow.eval()
    try:
        head = rows.head(int(pit_rows))
        splits = split_halves(len(rows), stream(seed, "floor-halves"), FLOOR_SPLITS)
        columns = rows.layout.conditioning_columns if per_column else None
        result = ConditioningResult(
            settings={
                "samples": int(samples),
                "pit_rows": len(head),
                "rows": len(rows),
                "floor_splits": FLOOR_SPLITS,
                "classes": dict(rows.roles.classes),
                "class_column": rows.roles.class_column,
            },
            information=delta_nll(flow, head.full, head.conditioning, seed, columns),
            profiles=profiles(rows, splits),
            rocs=roc_checks(rows, splits),
        )
        if samples > 0:
            ranks = draw_ranks(flow, preprocessing, head, int(samples), seed, progress)
            result.pit = pit_check(head, ranks, int(samples), seed)
        if correlations:
            result.correlations = correlation_check(rows, splits)
        return result
    finally:
        flow.train(training)


CHECKS = (
    # (label, value key, floor key, what the label names)
    ("PIT KS, worst cell", "pit_ks_max", "pit_ks_floor", "pit_ks_worst"),
    ("ΔNLL [nats/row] (floor: its error)", "delta_nll", "delta_nll_err", None),
    ("max |ΔAUC|", "max_delta_auc", "max_delta_auc_floor", "max_delta_auc_check"),
    ("max |Δρ|", "max_delta_rho", "max_delta_rho_floor", "max_delta_rho_pair"),
    ("profile χ²/ndf max", "profile_chi2_ndf_max", "profile_chi2_ndf_floor", "profile_worst"),
)


def table_lines(summary: dict) -> list[str]:
    """One line per check: name, value, floor, ratio, and where the worst case is."""
    head = f"{'conditioning check':<36} {'value':>9} {'floor':>9} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for label, key, floor_key, where in CHECKS:
        value, floor = summary.get(key, math.nan), summary.get(floor_key, math.nan)
        ratio = f"{value / floor:.1f}" if _finite(value, floor) and floor > 0 else "-"
        detail = f"  {summary[where]}" if where and summary.get(where) else ""
        lines.append(f"{label:<36} {_num(value):>9} {_num(floor):>9} {ratio:>6}{detail}")
    lines.append(
        "ratio = value/floor: about 1 (or less) is as good as statistics allow; ΔNLL: higher "
        "means the flow uses its conditioning (a blind flow: ratio about 0-2)."
    )
    return lines


def _mean_of_finite(values: np.ndarray) -> float:
    """Mean of the finite ``values``; NaN (no warning) if there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _num(v: float | None) -> str:
    return f"{v:.4g}" if _finite(v) else "-"
