"""Validation of a trained flow against full simulation (``flashsim validate``).

The flow samples one set of targets for every conditioning row of a split of the
prepared store (store order, up to ``max_rows`` rows), and each target column of
these FlashSim samples is compared with the stored FullSim values:

* ``w1``: the Wasserstein-1 distance between FlashSim and FullSim in the
  *preprocessed* space (what the flow models), divided by the FullSim standard
  deviation there, so that columns are comparable (dimensionless);
* ``w1_floor``: the same distance between two random halves of the FullSim rows:
  pure statistical noise. The halves have half the rows each, so the floor is about
  :math:`\\sqrt{2}` above the noise of a perfect flow with as many rows as FullSim;
* mean, standard deviation and the 5/50/95 % quantiles of both, in physical units.

Then (unless ``conditioning=False``) the conditioning checks of
:mod:`flashsim.conditioning`, which a flow blind to its inputs fails even when it
reproduces every marginal: PIT ranks by class, ΔNLL under permuted conditioning,
response profiles and ROC curves by true class, correlation matrices; each with a floor
(docs/validation.md).

Outputs (``out``, default ``<run>/validation/``): ``validation.json`` (settings,
per-column metrics, the ``conditioning`` section, summary), ``validation.png`` (a
histogram per target column, FullSim filled, FlashSim as a line, physical units) and
``profiles.png``, ``roc.png``, ``correlations.png``, ``pit.png``. Each file is written
to a temporary name and renamed into place only once everything has been computed, so a
failed run leaves an earlier validation intact.

Examples
--------
>>> from flashsim.validate import validate                         # doctest: +SKIP
>>> report = validate("runs/jets", "shards/", max_rows=50_000)      # doctest: +SKIP
>>> print(report.table())                                           # doctest: +SKIP
>>> report.summary["mean_w1"], report.summary["mean_w1_floor"]      # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from flashsim import __version__
from flashsim.conditioning import CheckRows, check_conditioning, table_lines
from flashsim.conditioning.pit import DEFAULT_SAMPLES
from flashsim.conditioning.report import DEFAULT_PIT_ROWS
from flashsim.errors import FlashSimError, StoreError
from flashsim.layouts import DTYPE
from flashsim.outputs import atomic_output, strict_json
from flashsim.sampling import TrainedFlow, resolve_checkpoint
from flashsim.store import DEFAULT_DATA_DIR, SPLITS, detect_format, find_store, read_metadata

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JSON_NAME = "validation.json"
PNG_NAME = "validation.png"

SAMPLE_CHUNK_ROWS = 16_384
"""Rows sampled per call (and per progress-bar step); chunk ``i`` uses a seed derived
from ``(seed, i)``, so results depend on the seed, not on the device's batch size."""

METRIC_NOTES = {
    "w1": "Wasserstein-1 distance FlashSim vs FullSim, preprocessed space, over the FullSim std there",
    "w1_floor": "the same between two random halves of the FullSim rows",
    "fullsim/flashsim": "mean, std, 5/50/95 % quantiles in physical units",
    "conditioning": "checks of p(targets | conditioning), each with a floor: see docs/validation.md",
}

QUANTILES = (0.05, 0.50, 0.95)
HIST_RANGE_QUANTILES = (0.005, 0.995)
"""Histogram range: these FullSim quantiles (physical units), shared by both curves."""
LOG_Y_RATIO = 100.0
"""Log-scale y axis when the tallest FullSim bin is this many times the lowest non-empty one."""


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Moments:
    """Location and spread of one column, physical units."""

    mean: float
    std: float
    q05: float
    q50: float
    q95: float

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Of the finite ``values`` (1-D); NaN everywhere if there are none."""
        v = values[np.isfinite(values)].astype(np.float64)
        if not len(v):
            return cls(*([math.nan] * 5))
        q = np.quantile(v, QUANTILES)
        return cls(float(v.mean()), float(v.std()), float(q[0]), float(q[1]), float(q[2]))


@dataclass(frozen=True)
class ColumnMetrics:
    """FlashSim vs FullSim for one target column.

    Attributes:
        column: the column name.
        w1: Wasserstein-1 distance in the preprocessed space over the FullSim standard
            deviation there (dimensionless; 0 = identical distributions).
        w1_floor: the same between two random halves of the FullSim rows.
        fullsim_std: FullSim standard deviation in the preprocessed space (the
            normalisation; 1 is used instead for a constant column).
        fullsim, flashsim: moments in physical units.
        nonfinite: FlashSim samples that were NaN or infinite (left out of everything).
    """

    column: str
    w1: float
    w1_floor: float
    fullsim_std: float
    fullsim: Moments
    flashsim: Moments
    nonfinite: int = 0


@dataclass
class ValidationReport:
    """What :func:`validate` wrote and measured.

    Attributes:
        json_path, png_path: the outputs.
        checkpoint: the checkpoint validated.
        store: the store read; ``split`` its split; ``rows`` the rows compared.
        seed: seed of the sampling and of the FullSim halves.
        columns: one :class:`ColumnMetrics` per target column, in layout order.
        summary: ``mean_w1``, ``mean_w1_floor`` (means over columns), ``worst_column``,
            ``worst_w1``, ``nonfinite`` (total non-finite FlashSim samples); with the
            conditioning checks also ``pit_ks_max``, ``pit_ks_floor``, ``delta_nll``,
            ``delta_nll_err``, ``max_delta_auc``, ``max_delta_auc_floor``,
            ``max_delta_rho``, ``max_delta_rho_floor``, ``profile_chi2_ndf_max``,
            ``profile_chi2_ndf_floor`` and where each worst case is (docs/validation.md).
        plots: ``{file name: path}`` of the figures (``validation.png``, and with the
            conditioning checks ``profiles.png``, ``roc.png``, ``correlations.png``,
            ``pit.png``).
    """

    json_path: Path
    png_path: Path
    checkpoint: Path
    store: Path
    split: str
    rows: int
    seed: int
    columns: list[ColumnMetrics]
    summary: dict
    plots: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        """The per-column metrics as a fixed-width text table (for the terminal)."""
        width = max(len("column"), *(len(c.column) for c in self.columns))
        head = (
            f"{'column':<{width}}  {'W1/std':>8} {'floor':>8} {'ratio':>6}  "
            f"{'FullSim mean ± std':>23}  {'FlashSim mean ± std':>23}"
        )
        lines = [head, "-" * len(head)]
        for c in self.columns:
            lines.append(
                f"{c.column:<{width}}  {c.w1:8.4f} {c.w1_floor:8.4f} {_ratio(c.w1, c.w1_floor):>6}  "
                f"{_pm(c.fullsim):>23}  {_pm(c.flashsim):>23}"
                + (f"  ({c.nonfinite} non-finite)" if c.nonfinite else "")
            )
        s = self.summary
        lines += [
            "-" * len(head),
            f"{'mean':<{width}}  {s['mean_w1']:8.4f} {s['mean_w1_floor']:8.4f} "
            f"{_ratio(s['mean_w1'], s['mean_w1_floor']):>6}",
            f"{self.rows} {self.split} rows of {self.store}; W1/std: Wasserstein-1 distance in "
            "the preprocessed space over the FullSim std; floor: the same between two halves "
            "of FullSim; ratio = W1/floor.",
        ]
        if "pit_ks_max" in self.summary:  # the conditioning checks ran
            lines += ["", *table_lines(self.summary)]
        return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}" if b > 0 and math.isfinite(a) else "-"


def _pm(m: Moments) -> str:
    return f"{m.mean:.4g} ± {m.std:.3g}"


# ---------------------------------------------------------------------- the steps


def default_out(run: str | os.PathLike) -> Path:
    """``<run>/validation`` for a run directory, ``<dir>/validation-<stem>`` for a
    checkpoint file (``runs/jets/checkpoints/epoch-0005.pt`` ->
    ``runs/jets/validation-epoch-0005``)."""
    run = Path(run)
    if run.is_dir():
        return run / "validation"
    parent = run.parent.parent if run.parent.name == "checkpoints" else run.parent
    return parent / f"validation-{run.stem}"


def locate_store(model: TrainedFlow, data: str | os.PathLike) -> Path:
    """The store of the flow's object in ``data`` (a store or a prep directory), after
    checking it holds that object's columns prepared with the flow's preprocessing."""
    from flashsim.store import check_store

    store = find_store(data, model.object)
    meta = read_metadata(store)
    check_store(store, meta, model.object)
    trained = model.metadata.get("preprocessing")
    if trained is not None and meta.get("preprocessing") != trained:
        raise StoreError(
            f"{store} was prepared with a different preprocessing than the store the flow "
            f"{model.checkpoint} was trained on, so FlashSim and FullSim would be compared in "
            "different spaces. Validate on a store prepared with the same `flashsim prep` "
            "options (e.g. the training store, recorded in the run's run.json)."
        )
    return store


def read_rows(store: Path, split: str, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_rows`` rows of ``split`` of ``store``, in store order.

    Returns:
        ``(conditioning, targets)``, float32, ``(N, n_conditioning)`` and
        ``(N, n_targets)``, preprocessed (as stored).

    Raises:
        FlashSimError: the split has fewer than 2 rows.
    """
    import loaders

    kind = "webdataset" if detect_format(store) == "webdataset" else "chunked"
    loader = loaders.open(
        store, split, kind=kind, batch_size=65_536, shuffle=False, rank=0, world_size=1
    )
    n = min(int(max_rows), loader.n_rows)
    if n < 2:
        raise StoreError(
            f"The {split!r} split of {store} holds {loader.n_rows} row(s); validation needs "
            "at least 2. Re-create the store with more events (`flashsim prep`), or pass "
            "another --split."
        )
    layout = loader.layout
    conditioning = np.empty((n, layout.n_conditioning), DTYPE)
    targets = np.empty((n, layout.n_targets), DTYPE)
    at = 0
    for x, y in loader:  # x: targets, y: conditioning; whole batches, no per-row work
        take = min(len(x), n - at)
        targets[at : at + take] = x[:take].numpy()
        conditioning[at : at + take] = y[:take].numpy()
        at += take
        if at == n:
            break
    return conditioning, targets


def sample_targets(
    model: TrainedFlow, conditioning: np.ndarray, seed: int, progress: bool = True
) -> np.ndarray:
    """One FlashSim draw per row of preprocessed ``conditioning``: ``(N, n_targets)``
    float32, preprocessed space; reproducible for a given ``seed``."""
    from tqdm.auto import tqdm

    out = np.empty((len(conditioning), model.layout.n_targets), DTYPE)
    starts = range(0, len(conditioning), SAMPLE_CHUNK_ROWS)
    seeds = np.random.SeedSequence(seed).generate_state(len(starts), dtype=np.uint32)
    with tqdm(
        total=len(conditioning), unit="row", desc="sampling", disable=not progress, leave=False
    ) as bar:
        for start, chunk_seed in zip(starts, seeds, strict=True):
            chunk = conditioning[start : start + SAMPLE_CHUNK_ROWS]
            out[start : start + len(chunk)] = model.sample(chunk, seed=int(chunk_seed))
            bar.update(len(chunk))
    return out


def column_metrics(
    name: str,
    flash: np.ndarray,
    full: np.ndarray,
    flash_physical: np.ndarray,
    full_physical: np.ndarray,
    halves: np.ndarray,
) -> ColumnMetrics:
    """Metrics of one column from 1-D arrays (preprocessed and physical).

    ``halves`` is a permutation of ``range(len(full))``; its first and second halves
    give the statistical floor.
    """
    full = full.astype(np.float64)
    finite = np.isfinite(flash)
    std = float(full.std())
    scale = std if std > 0 else 1.0  # a constant column: the raw distance
    half = len(halves) // 2
    floor = wasserstein_distance(full[halves[:half]], full[halves[half:]]) / scale
    w1 = (
        wasserstein_distance(flash[finite].astype(np.float64), full) / scale
        if finite.any()
        else math.nan
    )
    return ColumnMetrics(
        column=name,
        w1=float(w1),
        w1_floor=float(floor),
        fullsim_std=std,
        fullsim=Moments.of(full_physical),
        flashsim=Moments.of(flash_physical[finite]),
        nonfinite=int((~finite).sum()),
    )


def summarize(columns: list[ColumnMetrics]) -> dict:
    """Means over columns (non-finite ones left out) and the worst column."""
    w1 = np.array([c.w1 for c in columns])
    ok = np.isfinite(w1)
    worst = columns[int(np.nanargmax(np.where(ok, w1, -np.inf)))] if ok.any() else None
    return {
        "mean_w1": float(w1[ok].mean()) if ok.any() else math.nan,
        "mean_w1_floor": float(np.mean([c.w1_floor for c in columns])),
        "worst_column": worst.column if worst else None,
        "worst_w1": worst.w1 if worst else math.nan,
        "nonfinite": int(sum(c.nonfinite for c in columns)),
    }


def plot_histograms(
    names: tuple[str, ...],
    full: np.ndarray,
    flash: np.ndarray,
    metrics: list[ColumnMetrics],
    bins: int,
    title: str,
) -> Figure:
    """A grid of per-column histograms (physical units): FullSim filled, FlashSim as a
    line, bins from the FullSim 0.5-99.5 % quantiles. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    ncols = 5
    nrows = -(-len(names) // ncols)
    height = 2.6 * nrows + 0.6
    fig = Figure(figsize=(3.2 * ncols, height), dpi=90)
    # Fixed margins: constrained/tight layout would double the drawing time.
    axes = fig.subplots(
        nrows,
        ncols,
        squeeze=False,
        gridspec_kw=dict(
            left=0.04,
            right=0.99,
            bottom=0.3 / height,
            top=1 - 0.7 / height,
            wspace=0.3,
            hspace=0.45,
        ),
    ).ravel()
    for j, (ax, name, m) in enumerate(zip(axes, names, metrics, strict=False)):
        f_full = full[:, j][np.isfinite(full[:, j])]
        f_flash = flash[:, j][np.isfinite(flash[:, j])]
        lo, hi = np.quantile(f_full, HIST_RANGE_QUANTILES) if len(f_full) else (0.0, 1.0)
        if not hi > lo:  # a (nearly) constant column: a unit-wide window around it
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        h_full, _ = np.histogram(f_full, edges)
        h_flash, _ = np.histogram(f_flash, edges)
        ax.stairs(h_full, edges, fill=True, alpha=0.45, color="tab:blue", label="FullSim")
        ax.stairs(h_flash, edges, color="tab:orange", lw=1.3, label="FlashSim")
        nonzero = h_full[h_full > 0]
        if len(nonzero) and nonzero.max() >= LOG_Y_RATIO * nonzero.min():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.text(
            0.97,
            0.95,
            f"W1/std {m.w1:.3f}\nfloor {m.w1_floor:.3f}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return fig


def write_outputs(out: Path, record: dict, figures: dict) -> dict[str, Path]:
    """Write ``validation.json`` and the figures (``{file name: Figure}``) into ``out``
    atomically.

    Every file goes to a temporary name first; only when all are complete are they
    renamed into place (the figures first, the JSON last: a JSON always comes with its
    figures). Other files in ``out`` are left alone. Returns ``{file name: path}``.
    """
    text = json.dumps(strict_json(record), indent=2, allow_nan=False) + "\n"
    paths = {JSON_NAME: out / JSON_NAME, **{name: out / name for name in figures}}
    # contexts exit in reverse order: the figures are renamed into place first, the JSON last
    with ExitStack() as stack:
        tmp_json = stack.enter_context(atomic_output(paths[JSON_NAME], overwrite=True))
        for name, figure in figures.items():
            tmp = stack.enter_context(atomic_output(paths[name], overwrite=True))
            figure.savefig(tmp, format="png")
        tmp_json.write_text(text)
    return paths


# ---------------------------------------------------------------------- entry point


def validate(
    run: str | os.PathLike,
    data: str | os.PathLike = DEFAULT_DATA_DIR,
    *,
    split: str = "val",
    max_rows: int = 100_000,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    spline: str | None = None,
    bins: int = 50,
    progress: bool = True,
    object: str | None = None,
    conditioning: bool = True,
    samples: int = DEFAULT_SAMPLES,
    pit_rows: int = DEFAULT_PIT_ROWS,
) -> ValidationReport:
    """Compare a trained flow with full simulation on a split of its prepared store.

    Args:
        run: a run directory of ``flashsim train`` (its ``checkpoints/best.pt``, else
            ``last.pt``) or a checkpoint file.
        data: a store (``shards/jets.zarr``) or a directory written by ``flashsim prep``;
            the store of the flow's object is used.
        split: ``"val"`` or ``"train"``.
        max_rows: compare the first ``max_rows`` rows of the split (store order).
        out: output directory (default :func:`default_out` of ``run``).
        seed: seed of the FlashSim samples, of the FullSim halves of the floors and of
            every random choice of the conditioning checks.
        device, spline: where the flow samples (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``)
            and with which engine (``fused``/``nflows``; default: the checkpoint's).
        bins: histogram bins per column.
        progress: show a progress bar while sampling.
        object: if given, the object (``"jets"``/``"muons"``) the flow must model.
        conditioning: also run the conditioning checks (:mod:`flashsim.conditioning`:
            PIT, ΔNLL, profiles, ROC, correlations; ``profiles.png``, ``roc.png``,
            ``correlations.png``, ``pit.png``).
        samples: flow draws per row of the PIT (0: no PIT).
        pit_rows: the PIT and ΔNLL use the first ``pit_rows`` compared rows.

    Returns:
        A :class:`ValidationReport` (paths, per-column metrics, summary, ``table()``).

    Raises:
        FlashSimError: no checkpoint in ``run``; no store of the object in ``data``; a
            store of another object, column order or preprocessing; a split with fewer
            than 2 rows; bad arguments.
    """
    _check_arguments(split, max_rows, bins, seed, samples, pit_rows)
    out = output_dir(run, out)
    model = load_flow(run, device, object, spline)
    store = locate_store(model, data)
    cond, full = read_rows(store, split, max_rows)
    flash = sample_targets(model, cond, seed, progress)
    flash_physical, full_physical = model.to_physical(flash), model.to_physical(full)
    columns = compare_columns(model, flash, full, flash_physical, full_physical, seed)
    summary = summarize(columns)
    title = f"{model.object}: FlashSim ({model.checkpoint}) vs FullSim ({len(full)} {split} rows of {store})"
    names = model.layout.target_columns
    figures = {
        PNG_NAME: plot_histograms(names, full_physical, flash_physical, columns, bins, title)
    }
    record = run_record(model, store, split, len(full), max_rows, seed, columns, summary)
    if conditioning:
        rows = CheckRows.build(
            model.layout, model.preprocessing, cond, full, flash, full_physical, flash_physical
        )
        checks = check_conditioning(
            model.flow, model.preprocessing, rows, seed=seed, samples=samples,
            pit_rows=pit_rows, progress=progress
        )  # fmt: skip
        summary.update(checks.summary())
        record["conditioning"] = checks.section()
        figures.update(checks.figures(title))
    paths = write_outputs(out, record, figures)
    plots = {name: path for name, path in paths.items() if name != JSON_NAME}
    return ValidationReport(
        paths[JSON_NAME], paths[PNG_NAME], model.checkpoint, store, split, len(full), int(seed),
        columns, summary, plots,
    )  # fmt: skip


def output_dir(run: str | os.PathLike, out: str | os.PathLike | None) -> Path:
    """``out``, or :func:`default_out` of ``run``; refused if it is a file."""
    out = Path(out) if out is not None else default_out(run)
    if out.exists() and not out.is_dir():
        raise FlashSimError(
            f"{out} exists and is not a directory; pass an output directory with --out."
        )
    return out


def _check_arguments(
    split: str, max_rows: int, bins: int, seed: int, samples: int, pit_rows: int
) -> None:
    if split not in SPLITS:
        raise FlashSimError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    if int(max_rows) < 2 or int(bins) < 1 or int(seed) < 0:
        raise FlashSimError(
            f"max_rows must be >= 2, bins >= 1 and seed >= 0 (got {max_rows}, {bins}, {seed})."
        )
    if int(samples) < 0 or int(pit_rows) < 2:
        raise FlashSimError(f"samples must be >= 0 and pit_rows >= 2 (got {samples}, {pit_rows}).")


def load_flow(
    run: str | os.PathLike,
    device: str | torch.device,
    object: str | None,
    spline: str | None = None,
) -> TrainedFlow:
    """The flow of ``run`` on ``device``, after checking it models ``object`` (if given);
    ``spline`` rebuilds it with that engine instead of the checkpoint's."""
    from flashsim.devices import resolve_device

    checkpoint = resolve_checkpoint(run)
    model = TrainedFlow.load(checkpoint, device=resolve_device(device), spline=spline)
    if object is not None and model.object != object:
        raise FlashSimError(
            f"{checkpoint} is a {model.object} flow, not {object}; pass the run of a {object} "
            f"flow (e.g. --run runs/{object})."
        )
    return model


def compare_columns(
    model: TrainedFlow,
    flash: np.ndarray,
    full: np.ndarray,
    flash_physical: np.ndarray,
    full_physical: np.ndarray,
    seed: int,
) -> list[ColumnMetrics]:
    """:func:`column_metrics` of every target column (FullSim halves drawn from ``seed``)."""
    halves = np.random.default_rng(seed).permutation(len(full))
    return [
        column_metrics(
            name, flash[:, j], full[:, j], flash_physical[:, j], full_physical[:, j], halves
        )
        for j, name in enumerate(model.layout.target_columns)
    ]


def run_record(
    model: TrainedFlow,
    store: Path,
    split: str,
    rows: int,
    max_rows: int,
    seed: int,
    columns: list[ColumnMetrics],
    summary: dict,
) -> dict:
    """The ``validation.json`` record (the ``conditioning`` section is added by the caller)."""
    return {
        "checkpoint": str(model.checkpoint),
        "store": str(store),
        "object": model.object,
        "split": split,
        "rows": rows,
        "max_rows": int(max_rows),
        "seed": int(seed),
        "device": str(model.device),
        "spline": model.config.spline,
        "metrics": METRIC_NOTES,
        "columns": [asdict(c) for c in columns],
        "summary": summary,  # the caller's dict: conditioning numbers added later show
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
