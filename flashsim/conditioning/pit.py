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

The distance is the Kolmogorov-Smirnov distance of the ranks' empirical CDF to the
discrete uniform CDF. Its floor is simulated: multinomial counts of uniform ranks with
the same rows per cell and ``S``. ``floor`` of a cell is the median KS a perfect model
shows there; the worst cell is the one of largest ``KS / floor``, and its floor is
multiplied by ``look_elsewhere``, the median over simulated perfect models of the
largest ``KS / floor`` over all cells and targets, so that the summary's ratio is about
1 for a perfect model however many cells are looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    discrete = np.zeros(layout.n_targets, bool)
    discrete[[rows.target(c) for c in layout.roles.discrete]] = True
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
        draws = _rounded(draws, discrete).reshape(-1, samples, layout.n_targets)
        x = truth[start : start + CHUNK_ROWS, None, :]
        below = (draws < x).sum(axis=1)
        equal = (draws == x).sum(axis=1)
        # uniform among below .. below + equal; NaN samples count as neither
        ranks[start : start + len(below)] = below + np.floor(
            ties.random(below.shape) * (equal + 1)
        ).astype(np.int64)
    return ranks


def _rounded(values: np.ndarray, discrete: np.ndarray) -> np.ndarray:
    values[..., discrete] = np.round(values[..., discrete])
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
