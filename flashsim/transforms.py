"""Preprocessing transforms: the single source of truth for how raw features become
training inputs, and back.

A :class:`Preprocessing` is an ordered list of ``(column, step)`` pairs for one layout.
Each step is a small vectorised transform with its parameters, a forward map and, where
one exists, an inverse. The whole chain is stored in every store's metadata
(:meth:`Preprocessing.to_dict`) and can be rebuilt from it
(:meth:`Preprocessing.from_dict`), so generated samples can be mapped back to physical
values without this module's defaults.

Random steps (dequantisation, smearing of zero spikes) draw from a
:class:`numpy.random.Generator` passed in by the caller: same seed, same bytes.

Examples
--------
>>> import numpy as np
>>> from flashsim.transforms import JET_PREPROCESSING
>>> rows = np.zeros((4, 31), dtype=np.float32)
>>> rows[:, 26] = [0.9, 1.0, 5.0, -1.0]            # MJet_ptRatio
>>> out = JET_PREPROCESSING.forward(rows, np.random.default_rng(0))
>>> np.allclose(out[:, 26], [0.9, 1.0, 3.0, 0.0])   # clipped to [0, 3]
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

from flashsim.layouts import (
    DTYPE,
    JETS,
    JETS_RUN3,
    LAYOUTS,
    MUON_FLAG_TARGETS,
    MUONS,
    RUN3_FRACTIONS,
    RUN3_SCORES,
    Layout,
    layout_for,
)
from flashsim.options import SUM_EOOT, SUM_EOOT_LOG1P, SumEOOT


@dataclass(frozen=True)
class Step:
    """One transform of one column. Subclasses define ``kind``, forward and inverse.

    ``forward`` and ``inverse`` take and return 1-D float64 arrays (a column).
    ``invertible`` is False when information is lost (clipping, replacing failed
    values); the inverse then maps into the forward's range (identity, or clipping
    again), which is what generation wants. ``inverse_note`` describes it in metadata.
    """

    kind: ClassVar[str] = ""
    invertible: ClassVar[bool] = True
    random: ClassVar[bool] = False
    inverse_note: ClassVar[str] = ""

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        """Human-readable formula, e.g. ``'arctan(100*x)'``."""
        raise NotImplementedError

    def _needs(self, rng: np.random.Generator | None) -> np.random.Generator:
        """``rng``, which a ``random`` step's forward cannot do without."""
        if rng is None:
            raise ValueError(f"{type(self).__name__}.forward needs a numpy Generator (rng)")
        return rng

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Clip(Step):
    """``clip(x, lo, hi)``; ``None`` means unbounded.

    Inverse: clip to the same range. The clipped tails cannot be recovered, and a flow
    may sample a little outside the range it was trained on (e.g. a negative pT ratio);
    clipping again keeps generated values where the training data was.
    """

    lo: float | None = None
    hi: float | None = None
    kind: ClassVar[str] = "clip"
    invertible: ClassVar[bool] = False

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        lo = -np.inf if self.lo is None else self.lo
        hi = np.inf if self.hi is None else self.hi
        return np.clip(x, lo, hi)

    inverse_note: ClassVar[str] = "clip to the same range (lossy)"

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return self.forward(y)

    def describe(self) -> str:
        return f"clip(x, {self.lo}, {self.hi})"


@dataclass(frozen=True)
class NegativeTo(Step):
    """Negative values (NanoAOD's "failed" defaults, -1 or -10) set to ``value``.

    Inverse: identity (the failed default cannot be recovered).
    """

    value: float = -0.1
    kind: ClassVar[str] = "negative_to"
    invertible: ClassVar[bool] = False

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.where(x < 0, self.value, x)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return y

    def describe(self) -> str:
        return f"x<0 -> {self.value}"


@dataclass(frozen=True)
class Log(Step):
    """``log(x + offset)``; inverse ``exp(y) - offset``."""

    offset: float = 0.0
    kind: ClassVar[str] = "log"

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x + self.offset)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.exp(y) - self.offset

    def describe(self) -> str:
        return f"log(x + {self.offset})" if self.offset else "log(x)"


@dataclass(frozen=True)
class Log1p(Step):
    """``log1p(x)``; inverse ``expm1(y)``."""

    kind: ClassVar[str] = "log1p"

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log1p(x)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.expm1(y)

    def describe(self) -> str:
        return "log1p(x)"


@dataclass(frozen=True)
class Arctan(Step):
    """``arctan(scale * (x - shift))``; inverse ``tan(y) / scale + shift``.

    The forward's range is (-π/2, π/2); a flow may sample outside it, where ``tan``
    would wrap around to the opposite sign. The inverse first clamps ``y`` just inside
    the range, so it stays monotonic (far tails map to large values of the right sign).
    """

    scale: float = 1.0
    shift: float = 0.0
    kind: ClassVar[str] = "arctan"

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.arctan(self.scale * (x - self.shift))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        edge = np.nextafter(np.pi / 2, 0.0)
        return np.tan(np.clip(y, -edge, edge)) / self.scale + self.shift

    def describe(self) -> str:
        inner = f"(x - {self.shift})" if self.shift else "x"
        return f"arctan({self.scale}*{inner})"


@dataclass(frozen=True)
class SmearSpike(Step):
    """Values ``<= threshold`` (the spike of zeros after a log) replaced by N(mean, std).

    Inverse: values ``<= threshold`` set to ``fill``, the spike's position before
    smearing (e.g. ``log(0 + 0.001)``), so the next inverse maps them back to 0.
    """

    threshold: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    fill: float = 0.0
    kind: ClassVar[str] = "smear_spike"
    random: ClassVar[bool] = True

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self._needs(rng)
        mask = x <= self.threshold
        out = x.copy()
        out[mask] = rng.normal(self.mean, self.std, size=int(mask.sum()))
        return out

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.where(y <= self.threshold, self.fill, y)

    def describe(self) -> str:
        return f"x<={self.threshold} -> N({self.mean}, {self.std})"


@dataclass(frozen=True)
class Dequantize(Step):
    """``x + sigma * N(0, 1)`` for integer-valued columns; inverse ``round(y)``."""

    sigma: float = 0.1
    kind: ClassVar[str] = "dequantize"
    random: ClassVar[bool] = True

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self._needs(rng)
        return x + self.sigma * rng.standard_normal(x.shape[0])

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.round(y)

    def describe(self) -> str:
        return f"x + {self.sigma}*N(0, 1)"


@dataclass(frozen=True)
class UniformDequantize(Step):
    """``x + width * (U[0, 1) - 1/2)`` for a count (consecutive integers); inverse
    ``round(y)``. Unlike :class:`Dequantize`, it fills the gaps between the integers, so
    the flow sees a piecewise-constant density instead of spikes."""

    width: float = 1.0
    kind: ClassVar[str] = "uniform_dequantize"
    random: ClassVar[bool] = True

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self._needs(rng)
        return x + self.width * (rng.random(x.shape[0]) - 0.5)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.round(y)

    def describe(self) -> str:
        return f"x + {self.width}*(U[0, 1) - 0.5)"


@dataclass(frozen=True)
class Logit(Step):
    """A score in [0, 1] -> ``logit(clip(x, eps, 1 - eps))``; a failed score (negative:
    NanoAOD's -1, or -3 and -10 for some networks) -> ``failed_to``, below every valid one.

    Inverse: ``sigmoid(y)``, and ``failed`` (-1, NanoAOD's "not available") below
    :attr:`threshold`, half-way between ``failed_to`` and ``logit(eps)``. Lossy: the
    clipped tails and the different failed defaults are not recovered.
    """

    eps: float = 1e-5
    failed_to: float = -15.0
    failed: float = -1.0
    kind: ClassVar[str] = "logit"
    invertible: ClassVar[bool] = False
    inverse_note: ClassVar[str] = "sigmoid(y); below the threshold -> failed (lossy)"

    @property
    def threshold(self) -> float:
        """Below it, a preprocessed value is a failed score."""
        return 0.5 * (self.failed_to + float(np.log(self.eps / (1.0 - self.eps))))

    def forward(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        p = np.clip(x, self.eps, 1.0 - self.eps)
        return np.where(x < 0, self.failed_to, np.log(p / (1.0 - p)))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp of a far negative sample: sigmoid 0
            score = 1.0 / (1.0 + np.exp(-y))
        return np.where(y < self.threshold, self.failed, score)

    def describe(self) -> str:
        return f"logit(clip(x, {self.eps}, 1 - {self.eps})); x<0 -> {self.failed_to}"


STEP_KINDS: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        Clip,
        NegativeTo,
        Log,
        Log1p,
        Arctan,
        SmearSpike,
        Dequantize,
        UniformDequantize,
        Logit,
    )
}


@dataclass(frozen=True)
class Preprocessing:
    """Ordered ``(column name, step)`` pairs applied to rows of one layout."""

    layout: Layout
    steps: tuple[tuple[str, Step], ...]

    def __post_init__(self) -> None:
        for name, _ in self.steps:
            self.layout.index(name)  # KeyError on a column outside the layout

    def forward(
        self, rows: np.ndarray, rng: np.random.Generator, columns: slice | None = None
    ) -> np.ndarray:
        """Apply every step in order. Returns a new float32 array of the same shape.

        ``rows`` is ``(N, n_columns)``, or ``(N, k)`` holding only the columns
        ``columns`` (e.g. ``layout.conditioning`` when generating from gen-level objects).
        Random steps draw in step order from ``rng``, so the output depends only on
        the input rows and the generator's state.
        """
        offset, stop = self._bounds(columns)
        out = np.array(rows, dtype=DTYPE, copy=True)
        for name, step in self.steps:
            j = self.layout.index(name)
            if offset <= j < stop:
                out[:, j - offset] = step.forward(out[:, j - offset].astype(np.float64), rng)
        return out

    def inverse(self, rows: np.ndarray, columns: slice | None = None) -> np.ndarray:
        """Map preprocessed rows back to physical values (steps inverted in reverse order).

        ``rows`` is ``(N, n_columns)``, or ``(N, k)`` holding only the columns
        ``columns`` (e.g. ``layout.targets`` for generated targets).
        """
        offset, stop = self._bounds(columns)
        out = np.array(rows, dtype=DTYPE, copy=True)
        for name, step in reversed(self.steps):
            j = self.layout.index(name)
            if offset <= j < stop:
                out[:, j - offset] = step.inverse(out[:, j - offset].astype(np.float64))
        return out

    def _bounds(self, columns: slice | None) -> tuple[int, int]:
        if columns is None:
            return 0, self.layout.n_columns
        stop = columns.stop if columns.stop is not None else self.layout.n_columns
        return columns.start or 0, stop

    def to_dict(self) -> list[dict]:
        """JSON-serialisable list, one entry per step, in application order."""
        return [
            {
                "column": name,
                "index": self.layout.index(name),
                **step.to_dict(),
                "formula": step.describe(),
                "inverse": step.inverse_note
                or ("exact" if step.invertible else "identity (lossy)"),
            }
            for name, step in self.steps
        ]

    @classmethod
    def from_dict(cls, obj: str, entries: Iterable[dict]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output (as stored in metadata)."""
        steps = []
        for entry in entries:
            step_cls = STEP_KINDS[entry["kind"]]
            params = {f.name: entry[f.name] for f in fields(step_cls) if f.name in entry}
            steps.append((entry["column"], step_cls(**params)))
        return cls(layout_for(obj), tuple(steps))


def _each(columns: Iterable[str], step: Step) -> list[tuple[str, Step]]:
    return [(c, step) for c in columns]


JET_PREPROCESSING = Preprocessing(
    JETS,
    (
        ("MJet_massRatio", Clip(0.0, 7.0)),
        ("MJet_ptRatio", Clip(0.0, 3.0)),
        # Each b-tag/qgl column with its own mask (the original used DeepB's mask for all four).
        # DeepFlavB/C too (not in the original list): their failed values (-1, or -3000 in
        # 2015 Open Data, where DeepJet was not run) would otherwise be a far-away spike.
        # btagCMVA is a discriminant in [-1, 1] whose negative values are real: untouched.
        *_each(
            (
                "MJet_btagCSVV2",
                "MJet_btagDeepB",
                "MJet_btagDeepC",
                "MJet_btagDeepFlavB",
                "MJet_btagDeepFlavC",
                "MJet_qgl",
            ),
            NegativeTo(-0.1),
        ),
        *_each(("MJet_jetId", "MJet_puId"), Dequantize(0.1)),
    ),
)


def muon_preprocessing(sum_eoot: SumEOOT = SUM_EOOT_LOG1P) -> Preprocessing:
    """The muon preprocessing of the original work.

    Args:
        sum_eoot: ``"log1p"`` (default) keeps muons of events with ``Pileup_sumEOOT == 0``;
            ``"log"`` reproduces the original ``log(x)``, whose ``-inf`` rows are then
            dropped by prep and counted in the store's metadata (the original dropped
            them silently).
    """
    sum_eoot = SUM_EOOT.normalize(sum_eoot)
    log_offset = 0.001
    iso_offset = 1e-5
    return Preprocessing(
        MUONS,
        (
            # conditioning
            ("MGenMuon_pt", Log()),
            *_each(("MClosestJet_pt", "MClosestJet_mass"), Log1p()),
            ("Pileup_sumEOOT", Log1p() if sum_eoot == SUM_EOOT_LOG1P else Log()),
            ("Pileup_sumLOOT", Log1p()),
            # targets: clipping first
            ("MMuon_dxyErr", Clip(None, 1.0)),
            ("MMuon_dz", Clip(-20.0, 20.0)),
            ("MMuon_dzErr", Clip(None, 1.0)),
            ("MMuon_ip3d", Clip(None, 1.0)),
            ("MMuon_jetPtRelv2", Clip(None, 200.0)),
            ("MMuon_jetRelIso", Clip(None, 100.0)),
            ("MMuon_pfRelIso03_all", Clip(None, 100.0)),
            ("MMuon_pfRelIso03_chg", Clip(None, 40.0)),
            ("MMuon_pfRelIso04_all", Clip(None, 70.0)),
            ("MMuon_ptErr", Clip(None, 300.0)),
            ("MMuon_sip3d", Clip(None, 1000.0)),
            # then the maps
            ("MMuon_etaMinusGen", Arctan(100.0)),
            ("MMuon_phiMinusGen", Arctan(80.0)),
            ("MMuon_ptRatio", Arctan(10.0, 1.0)),
            ("MMuon_dxy", Arctan(150.0)),
            ("MMuon_dxyErr", Log1p()),
            ("MMuon_dz", Arctan(50.0)),
            *_each(
                ("MMuon_dzErr", "MMuon_ip3d", "MMuon_jetPtRelv2", "MMuon_ptErr"), Log(log_offset)
            ),
            ("MMuon_jetRelIso", Log(0.08)),
            *_each(
                ("MMuon_pfRelIso03_all", "MMuon_pfRelIso03_chg", "MMuon_pfRelIso04_all"),
                Log(iso_offset),
            ),
            ("MMuon_sip3d", Log1p()),
            # smear the spikes of zeros left by the logs
            (
                "MMuon_jetPtRelv2",
                SmearSpike(-4.0, -6.9, 1.0, fill=float(np.log(log_offset))),
            ),
            *_each(
                ("MMuon_pfRelIso03_all", "MMuon_pfRelIso03_chg", "MMuon_pfRelIso04_all"),
                SmearSpike(-7.5, -11.51, 1.0, fill=float(np.log(iso_offset))),
            ),
            *_each(MUON_FLAG_TARGETS, Dequantize(0.1)),
        ),
    )


MUON_PREPROCESSING = muon_preprocessing()


def _score(column: str, logit: Logit = Logit()) -> list[tuple[str, Step]]:
    """A tagger score: logit, and its failed spike smeared by N(failed_to, 0.3), 5.8
    standard deviations below the threshold the inverse maps back to "failed"."""
    spike = SmearSpike(logit.threshold, logit.failed_to, 0.3, fill=logit.failed_to)
    return [(column, logit), (column, spike)]


def _fraction(column: str) -> list[tuple[str, Step]]:
    """An energy fraction: kept in [0, 1] (inverse: clipped there), its spike of zeros
    (no particle of that type) smeared by N(-0.1, 0.02) and given back exactly as 0."""
    return [(column, Clip(0.0, 1.0)), (column, SmearSpike(0.0, -0.1, 0.02, fill=0.0))]


_NOT_EVALUATED = SmearSpike(0.0, -0.5, 0.05, fill=0.0)
"""The ParticleNet regression's 0 (not evaluated: the softest jets) smeared below its
valid values (> 0.15) and given back exactly."""
_RES_OFFSET = 0.001

JET_RUN3_PREPROCESSING = Preprocessing(
    JETS_RUN3,
    (
        ("MJet_massRatio", Clip(0.0, 7.0)),
        ("MJet_ptRatio", Clip(0.0, 3.0)),
        *(step for column in RUN3_SCORES for step in _score(column)),
        *_each(("MJet_PNetRegPtRawCorr", "MJet_PNetRegPtRawCorrNeutrino"), _NOT_EVALUATED),
        ("MJet_PNetRegPtRawRes", Log(_RES_OFFSET)),  # right-skewed, 0.014 to 0.64
        (
            "MJet_PNetRegPtRawRes",
            SmearSpike(-5.5, -7.5, 0.3, fill=float(np.log(_RES_OFFSET))),
        ),
        *(step for column in RUN3_FRACTIONS for step in _fraction(column)),
        ("MJet_nConstituents", UniformDequantize(1.0)),
        ("MJet_jetId", Dequantize(0.1)),
    ),
)
"""The preprocessing of the ``jets-run3`` layout (docs/prep.md gives the reasons)."""

_CHAINS: dict[str, Callable[[SumEOOT], Preprocessing]] = {
    JETS.name: lambda _sum_eoot: JET_PREPROCESSING,
    MUONS.name: muon_preprocessing,
    JETS_RUN3.name: lambda _sum_eoot: JET_RUN3_PREPROCESSING,
}
"""Each layout's default preprocessing, as a function of the only option a chain has (the
muons' ``Pileup_sumEOOT`` transform)."""
assert set(_CHAINS) == set(LAYOUTS)  # every layout has one


def preprocessing_of(obj: str, sum_eoot: SumEOOT = SUM_EOOT_LOG1P) -> Preprocessing:
    """The default preprocessing of layout ``obj`` (``sum_eoot``: see :func:`muon_preprocessing`)."""
    layout_for(obj)  # a FlashSimError naming the layouts for an unknown name
    return _CHAINS[obj](sum_eoot)


PREPROCESSING: dict[str, Preprocessing] = {name: preprocessing_of(name) for name in _CHAINS}
"""Each layout's default preprocessing (the muons' with ``Pileup_sumEOOT -> log1p``)."""
