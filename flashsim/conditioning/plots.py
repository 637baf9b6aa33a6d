"""Figures of the conditioning checks, in mplhep's CMS style (no pyplot: no global state).

* :func:`plot_profiles` (``profiles.png``): mean and RMS of each response target versus
  gen pT and gen eta, one colour per class; FullSim as filled markers with error bars,
  FlashSim as open markers joined by a line; χ²/ndf per class in the legend.
* :func:`plot_rocs` (``roc.png``): one panel per signal/background pair; x: signal
  efficiency, y: background efficiency (log); FullSim solid, FlashSim dashed.
* :func:`plot_correlations` (``correlations.png``): ρ of FullSim, of FlashSim and Δρ.
* :func:`plot_pit` (``pit.png``): per target, the rank histogram over the uniform
  expectation (1 = calibrated) for all rows and per class, with the ±1σ band of a
  perfect model on all rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from flashsim.conditioning.correlations import CorrelationResult
from flashsim.conditioning.physics import MIN_BIN_ROWS, STATS, Profile, RocCheck
from flashsim.conditioning.pit import PitResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = ("#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd")
"""The CMS colour cycle (6 colours, colour-blind safe)."""
DPI = 80


@contextmanager
def cms_style(font_size: float = 10.0) -> Iterator[None]:
    """mplhep's CMS style, scaled down for grids of small panels."""
    import matplotlib.style
    import mplhep  # the style only
    from cycler import cycler  # matplotlib's own dependency (matplotlib.cycler is this)

    overrides = {
        "font.size": font_size,
        "axes.labelsize": font_size,
        "xtick.labelsize": font_size - 1,
        "ytick.labelsize": font_size - 1,
        "legend.fontsize": font_size - 2,
        "xtick.major.size": 5,
        "ytick.major.size": 5,
        "xtick.minor.size": 2.5,
        "ytick.minor.size": 2.5,
        "axes.prop_cycle": cycler(color=COLOURS),
    }
    with matplotlib.style.context([mplhep.style.CMS, overrides]):
        yield


def _figure(nrows: int, ncols: int, width: float, height: float, **grid):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows + 0.8), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid)
    return fig, axes


def _label(fig: Figure) -> None:
    """The experiment label of the CMS style at the figure's top left: bold "FlashSim",
    italic "Simulation". (Drawn by hand: mplhep's label renders the whole figure to
    place itself, which would double the drawing time.)"""
    from matplotlib.transforms import offset_copy

    fig.text(0.01, 0.995, "FlashSim", fontweight="bold", va="top", fontsize=12)
    after = offset_copy(fig.transFigure, fig, x=66, units="points")  # 8 bold 12 pt letters
    fig.text(0.01, 0.995, "Simulation", style="italic", va="top", fontsize=12, transform=after)


def short(name: str) -> str:
    """``MJet_ptRatio`` -> ``Jet_ptRatio`` (the leading M of matched columns dropped)."""
    return name[1:] if name.startswith("M") and name[1:2].isupper() else name


def plot_profiles(profs: list[Profile], title: str) -> Figure:
    """Response profiles; rows: targets; columns: mean/RMS versus gen pT, gen eta."""
    targets = list(dict.fromkeys(p.target for p in profs))
    panels = [(v, s) for v in ("pt", "eta") for s in STATS]
    with cms_style():
        fig, axes = _figure(
            len(targets),
            len(panels),
            4.2,
            3.4,
            wspace=0.38,
            hspace=0.45,
            left=0.06,
            right=0.99,
            top=0.9,
            bottom=0.08,
        )
        for p in profs:
            for s in STATS:
                _profile_panel(axes[targets.index(p.target), panels.index((p.versus, s))], p, s)
        fig.text(
            0.99,
            0.995,
            "filled markers: FullSim, open markers and dashed lines: "
            "FlashSim; error bars: statistical",
            ha="right",
            va="top",
            fontsize=9,
        )
        _label(fig)
        fig.suptitle(title, fontsize=9)
    return fig


def _profile_panel(ax: Axes, p: Profile, stat: str) -> None:
    centres = 0.5 * (p.edges[1:] + p.edges[:-1])
    if p.versus == "pt":
        from matplotlib.ticker import NullFormatter

        centres = np.sqrt(p.edges[1:] * np.maximum(p.edges[:-1], 1e-3))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the 2x10^1 ... labels would overlap
    for c, name in enumerate(p.classes):
        colour = COLOURS[c % len(COLOURS)]
        full, flash = p.full, p.flash
        ok = (full["count"][c] >= MIN_BIN_ROWS) & (flash["count"][c] >= MIN_BIN_ROWS)
        if not ok.any():
            continue
        x = centres[ok]
        ax.errorbar(
            x,
            full[stat][c][ok],
            full[f"{stat}_err"][c][ok],
            fmt="o",
            ms=4,
            color=colour,
            label=f"{name} χ²/ndf {p.chi2_ndf[stat][c]:.1f}",
        )
        ax.errorbar(
            x,
            flash[stat][c][ok],
            flash[f"{stat}_err"][c][ok],
            fmt="s--",
            ms=4,
            mfc="none",
            color=colour,
            lw=1,
        )
    ax.set_xlabel(f"gen {'$p_T$ [GeV]' if p.versus == 'pt' else 'η'}")
    ax.set_ylabel(f"{'mean' if stat == 'mean' else 'RMS'} {short(p.target)}")
    ax.legend(loc="best", frameon=False, fontsize=7)


def plot_rocs(rocs: list[RocCheck], title: str) -> Figure:
    """ROC curves per signal/background pair."""
    pairs = list(dict.fromkeys((r.signal, r.background) for r in rocs))
    with cms_style(11):
        fig, axes = _figure(
            1, len(pairs), 5.2, 6.4, wspace=0.3, left=0.1, right=0.98, top=0.88, bottom=0.36
        )
        for ax, (sig, bkg) in zip(axes[0], pairs, strict=True):
            for k, r in enumerate(x for x in rocs if (x.signal, x.background) == (sig, bkg)):
                colour = COLOURS[k % len(COLOURS)]
                ax.plot(
                    *r.curve_fullsim,
                    color=colour,
                    lw=1.6,
                    label=f"{short(r.column)}  AUC {r.auc_fullsim:.3f} / {r.auc_flashsim:.3f}",
                )
                ax.plot(*r.curve_flashsim, color=colour, lw=1.6, ls="--")
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 1.2)
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"{sig} efficiency")
            ax.set_ylabel(f"{bkg} efficiency")
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.17),
                frameon=False,
                title="FullSim (solid) / FlashSim (dashed)",
                title_fontsize=8,
            )
        _label(fig)
        fig.suptitle(title, fontsize=9)
    return fig


def plot_correlations(corr: CorrelationResult, title: str) -> Figure:
    """FullSim ρ, FlashSim ρ and Δρ (targets × [targets | conditioning])."""
    n_rows, n_cols = corr.fullsim.shape
    cell = 0.26
    with cms_style(8):
        fig, axes = _figure(
            3,
            1,
            max(8.0, cell * n_cols + 3),
            cell * n_rows + 1.6,
            hspace=0.55,
            left=0.13,
            right=0.95,
            top=0.95,
            bottom=0.06,
        )
        labels = [short(c) for c in corr.columns]
        panels = (
            ("FullSim ρ", corr.fullsim, 1.0),
            ("FlashSim ρ", corr.flashsim, 1.0),
            ("Δρ = FlashSim − FullSim", corr.delta, None),
        )
        for ax, (name, m, vmax) in zip(axes[:, 0], panels, strict=True):
            vmax = vmax or max(0.05, float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.05)
            im = ax.imshow(
                m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest"
            )
            ax.axvline(corr.n_targets - 0.5, color="k", lw=1)
            ax.set_xticks(range(n_cols), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(n_rows), labels[:n_rows], fontsize=6)
            ax.minorticks_off()
            ax.set_title(f"{name}   (left: targets, right: conditioning)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
        _label(fig)
        fig.suptitle(title, fontsize=9)
    return fig


def plot_pit(pit: PitResult, title: str) -> Figure:
    """Rank histograms over the uniform expectation, per target."""
    ncols = 5
    nrows = -(-len(pit.columns) // ncols)
    shown = [c for c, name in enumerate(pit.cells) if name == "all" or "," not in name]
    edges = np.arange(pit.samples + 2) - 0.5
    with cms_style(9):
        fig, axes = _figure(
            nrows,
            ncols,
            3.3,
            2.7,
            wspace=0.3,
            hspace=0.55,
            left=0.05,
            right=0.99,
            top=1 - 0.9 / (2.7 * nrows + 0.8),
            bottom=0.06,
        )
        for j, (ax, name) in enumerate(zip(axes.ravel(), pit.columns, strict=False)):
            n_all = pit.rows[0]
            band = np.sqrt(pit.samples / n_all)  # ±1σ of a bin's count over expectation
            ax.axhspan(1 - band, 1 + band, color="0.85", lw=0)
            for k, c in enumerate(shown):
                counts = pit.counts[c, j]
                ratio = counts / (counts.sum() / (pit.samples + 1))
                colour = "k" if pit.cells[c] == "all" else COLOURS[(k - 1) % len(COLOURS)]
                ax.stairs(
                    ratio,
                    edges,
                    color=colour,
                    lw=1.2,
                    label=f"{pit.cells[c]} KS {pit.ks[c, j]:.3f}",
                )
            ax.set_title(short(name), fontsize=9)
            ax.set_xlabel("rank of FullSim", fontsize=8)
            ax.legend(fontsize=6, frameon=False, loc="upper center")
            top = max(2.0, ax.get_ylim()[1])
            ax.set_ylim(0, top * 1.35)
        for ax in axes.ravel()[len(pit.columns) :]:
            ax.set_visible(False)
        _label(fig)
        fig.suptitle(
            f"{title}\nPIT: rank among {pit.samples} draws, over uniform "
            f"(grey: ±1σ of a perfect model, all rows)",
            fontsize=9,
        )
    return fig
