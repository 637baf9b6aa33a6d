"""Per-row calibration: the probability integral transform (PIT) as a rank test.

For every row the flow draws ``S`` samples of the targets given that row's conditioning;
the *rank* of the FullSim value among them (how many samples lie below it, 0..S) is
uniform on ``{0, ..., S}`` when the flow's ``p(targets | conditioning)`` is right, row by
row. A flow that ignores its conditioning still reproduces the marginal over all rows,
but not within a class of rows (b jets, non-prompt muons, a gen-pT bin), so the test is
made in *cells*: all rows, each class, and each class × gen-pT bin.

Ranks are computed in physical units, where integer columns (``ColumnRoles.discrete``)
are rounded and clipped columns pile up at their bounds: ties between the FullSim value
and samples are broken at random (the rank is uniform between the ties' ends), which
keeps the ranks exactly uniform under a perfect model.

Point masses: a flow models an atom of a continuous column (``muEF = 0`` for jets
without a muon, the -0.1 of failed taggers, a clip bound) as a narrow peak, and the
ranks of FullSim values sitting exactly on the atom would measure the peak's width, not
the conditioning. Every atom (a FullSim value taken by at least :data:`ATOM_FRACTION`
of the rows) gets a window: the one around it holding the same fraction of the one-draw
FlashSim sample as the atom holds of FullSim. Draws inside it are snapped onto the atom
and tie-broken like integers; whether the flow puts the atom's mass at the right rows is
then what the ranks test (its width shows in the column's W1).

The distance is the Kolmogorov-Smirnov distance of the ranks' empirical CDF to the
discrete uniform CDF. Its floor is simulated: multinomial counts of uniform ranks with
the same rows per cell and ``S``. ``floor`` of a cell is the median KS a perfect model
shows there; the worst cell is the one of largest ``KS / floor``, and its floor is
multiplied by ``look_elsewhere``, the median over simulated perfect models of the
largest ``KS / floor`` over all cells and targets, so that the summary's ratio is about
1 for a perfect model however many cells are looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nflows import flows

from flashsim.conditioning.floors import stream
from flashsim.conditioning.rows import CheckRows
from flashsim.layouts import DTYPE
from flashsim.sampling import sample_with_noise
from flashsim.transforms import Preprocessing

DEFAULT_SAMPLES = 32
"""Flow samples per row (``S``)."""
PIT_PT_BINS = 3
"""Gen-pT bins (quantiles of the rows) of each class in the PIT cells."""
MIN_CELL_ROWS = 50
"""Cells with fewer rows are left out."""
NULL_REPLICAS = 100
"""Simulated perfect models behind the floors."""
ATOM_FRACTION = 0.05
"""A FullSim value taken by this fraction of the rows is a point mass (an atom)."""
CHUNK_ROWS = 1024
"""Rows per sampling call (``CHUNK_ROWS * S`` draws; the noise is seeded per chunk)."""


def draw_ranks(
    flow: flows.Flow,
    preprocessing: Preprocessing,
    rows: CheckRows,
    samples: int,
    seed: int,
    progress: bool = False,
) -> np.ndarray:
    """Rank of each FullSim target value among ``samples`` flow draws for its row.

    Returns:
        ``(N, n_targets)`` int16 in ``0..samples`` (``N = len(rows)``); random tie
        breaking. Same seed: same ranks (the noise does not depend on the device).
    """
    from tqdm.auto import tqdm

    layout = rows.layout
    discrete = discrete_mask(rows)
    atoms = find_atoms(rows, discrete)
    truth = _rounded(rows.full_physical.astype(np.float64), discrete)
    ranks = np.empty(truth.shape, np.int16)
    starts = range(0, len(rows), CHUNK_ROWS)
    noise_seeds = np.random.SeedSequence([int(seed), 0x917]).generate_state(len(starts))
    ties = stream(seed, "pit-ties")
    for start, noise_seed in tqdm(
        list(zip(starts, noise_seeds, strict=True)), desc="PIT", disable=not progress, leave=False
    ):
        cond = np.repeat(rows.conditioning[start : start + CHUNK_ROWS], samples, axis=0)
        noise = np.random.default_rng(int(noise_seed)).standard_normal(
            (len(cond), layout.n_targets), dtype=DTYPE
        )
        draws = sample_with_noise(flow, cond, noise)
        draws = preprocessing.inverse(draws, columns=layout.targets).astype(np.float64)
        draws = _snapped(_rounded(draws, discrete), atoms).reshape(-1, samples, layout.n_targets)
        x = truth[start : start + CHUNK_ROWS, None, :]
        below = (draws < x).sum(axis=1)
        equal = (draws == x).sum(axis=1)
        # uniform among below .. below + equal; NaN samples count as neither
        ranks[start : start + len(below)] = below + np.floor(
            ties.random(below.shape) * (equal + 1)
        ).astype(np.int64)
    return ranks


def discrete_mask(rows: CheckRows) -> np.ndarray:
    """``(n_targets,)`` bool: the layout's integer-valued targets."""
    mask = np.zeros(rows.layout.n_targets, bool)
    mask[[rows.target(c) for c in rows.roles.discrete]] = True
    return mask


def find_atoms(rows: CheckRows, discrete: np.ndarray) -> list[dict]:
    """The point masses of the continuous targets and their windows (module doc):
    ``{"column", "index", "value", "fraction", "window"}`` each, physical units."""
    atoms = []
    n = len(rows)
    for j in np.flatnonzero(~discrete):
        values, counts = np.unique(rows.full_physical[:, j], return_counts=True)
        flash = rows.flash_physical[:, j].astype(np.float64)
        flash = flash[np.isfinite(flash)]
        for v, c in zip(
            values[counts >= ATOM_FRACTION * n], counts[counts >= ATOM_FRACTION * n], strict=True
        ):
            window = float(np.quantile(np.abs(flash - float(v)), c / n)) if len(flash) else 0.0
            atoms.append(
                {
                    "column": rows.layout.target_columns[j],
                    "index": int(j),
                    "value": float(v),
                    "fraction": float(c / n),
                    "window": window,
                }
            )
    return atoms


def _rounded(values: np.ndarray, discrete: np.ndarray) -> np.ndarray:
    values[..., discrete] = np.round(values[..., discrete])
    return values


def _snapped(values: np.ndarray, atoms: list[dict]) -> np.ndarray:
    for atom in atoms:
        column = values[:, atom["index"]]  # a view: snapped in place
        column[np.abs(column - atom["value"]) <= atom["window"]] = atom["value"]
    return values


def ks_of_counts(counts: np.ndarray) -> np.ndarray:
    """KS distance to the discrete uniform of rank histograms ``(..., S + 1)``."""
    n = counts.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(counts, axis=-1) / np.maximum(n, 1)
    uniform = np.arange(1, counts.shape[-1] + 1) / counts.shape[-1]
    return np.abs(cdf - uniform).max(axis=-1)


def rank_counts(ranks: np.ndarray, samples: int) -> np.ndarray:
    """Histograms ``(n_targets, S + 1)`` of ranks ``(n, n_targets)``."""
    n_targets = ranks.shape[1]
    flat = (ranks.astype(np.int64) + (samples + 1) * np.arange(n_targets)).ravel()
    return np.bincount(flat, minlength=n_targets * (samples + 1)).reshape(n_targets, -1)


def pit_cells(rows: CheckRows, pt_bins: int = PIT_PT_BINS) -> list[tuple[str, np.ndarray]]:
    """``(name, boolean mask)`` of the cells: all rows, each class, each class × gen-pT
    bin (edges: quantiles of the rows' gen pT); cells under :data:`MIN_CELL_ROWS` left out."""
    from flashsim.conditioning.physics import quantile_edges

    cells = [("all", np.ones(len(rows), bool))]
    edges = quantile_edges(rows.gen_pt, pt_bins)
    pt_bin = np.clip(np.searchsorted(edges, rows.gen_pt, side="right") - 1, 0, len(edges) - 2)
    for k, name in enumerate(rows.class_names):
        in_class = rows.labels == k
        cells.append((name, in_class))
        for b in range(len(edges) - 1):
            cells.append(
                (f"{name}, pT {edges[b]:.3g}-{edges[b + 1]:.3g}", in_class & (pt_bin == b))
            )
    return [(name, mask) for name, mask in cells if mask.sum() >= MIN_CELL_ROWS]


@dataclass
class PitResult:
    """KS of the ranks per cell and target, with simulated floors (see module doc)."""

    samples: int
    columns: tuple[str, ...]
    cells: list[str]
    rows: list[int]
    ks: np.ndarray  # (n_cells, n_targets)
    floor: np.ndarray  # (n_cells,) median KS of a perfect model
    look_elsewhere: float
    counts: np.ndarray  # (n_cells, n_targets, S + 1) rank histograms
    atoms: list[dict] = field(default_factory=list)

    def worst(self) -> dict:
        """The cell and target of largest ``KS / floor``, with the floor of the maximum."""
        ratio = self.ks / self.floor[:, None]
        c, t = np.unravel_index(int(np.nanargmax(ratio)), ratio.shape)
        return {
            "column": self.columns[t],
            "cell": self.cells[c],
            "ks": float(self.ks[c, t]),
            "cell_floor": float(self.floor[c]),
            "floor": float(self.floor[c] * self.look_elsewhere),
        }

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "null_replicas": NULL_REPLICAS,
            "look_elsewhere": self.look_elsewhere,
            "worst": self.worst(),
            "atoms": [{k: v for k, v in a.items() if k != "index"} for a in self.atoms],
            "cells": [
                {
                    "cell": cell,
                    "rows": n,
                    "floor": float(f),
                    "ks": dict(zip(self.columns, k.tolist(), strict=True)),
                }
                for cell, n, f, k in zip(self.cells, self.rows, self.floor, self.ks, strict=True)
            ],
        }


def pit_check(rows: CheckRows, ranks: np.ndarray, samples: int, seed: int) -> PitResult:
    """KS of ``ranks`` (from :func:`draw_ranks`) in every cell, with their floors."""
    cells = pit_cells(rows)
    counts = np.stack([rank_counts(ranks[mask], samples) for _, mask in cells])
    ks = ks_of_counts(counts)
    sizes = [int(mask.sum()) for _, mask in cells]
    floor, look = null_floors(sizes, ranks.shape[1], samples, seed)
    return PitResult(
        samples=samples,
        columns=rows.layout.target_columns,
        cells=[name for name, _ in cells],
        rows=sizes,
        ks=ks,
        floor=floor,
        look_elsewhere=look,
        counts=counts,
        atoms=find_atoms(rows, discrete_mask(rows)),
    )


def null_floors(
    sizes: list[int], n_targets: int, samples: int, seed: int, replicas: int = NULL_REPLICAS
) -> tuple[np.ndarray, float]:
    """Simulated perfect models: the median KS per cell size, and the median over
    replicas of the largest ``KS / median`` over cells and targets.

    The cells are treated as independent (nested cells are not: the look-elsewhere
    factor is then a little conservative).
    """
    rng = stream(seed, "pit-null")
    p = np.full(samples + 1, 1.0 / (samples + 1))
    ks = np.stack([ks_of_counts(rng.multinomial(n, p, size=(replicas, n_targets))) for n in sizes])
    floor = np.median(ks.reshape(len(sizes), -1), axis=1)  # (n_cells,)
    largest = (ks / floor[:, None, None]).max(axis=(0, 2))  # (replicas,)
    return floor, float(np.median(largest))
