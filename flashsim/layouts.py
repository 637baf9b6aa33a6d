"""The two row layouts: the single source of truth for column names, order and slices.

Every row written by ``flashsim prep`` is one reconstructed object matched to its
generator-level partner, float32, ``conditioning | targets``:

* jets: 31 columns, conditioning ``0:14``, targets ``14:31``;
* muons: 52 columns, conditioning ``0:30``, targets ``30:52``.

They reproduce the layouts of the original FlashSim training files (see
``shared/spec/columns.md``).

Examples
--------
>>> from flashsim.layouts import JETS, layout_for
>>> JETS.n_columns, JETS.conditioning, JETS.targets
(31, slice(0, 14, None), slice(14, 31, None))
>>> layout_for("muons").index("MMuon_ptRatio")
32
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashsim.errors import FlashSimError

DTYPE = np.dtype("float32")
"""dtype of every stored row."""


@dataclass(frozen=True)
class Discriminant:
    """A target column that separates two classes of objects (one ROC curve).

    Attributes:
        column: the target column (physical values; higher = more signal-like).
        signal, background: names of classes of :class:`ColumnRoles`.
    """

    column: str
    signal: str
    background: str


@dataclass(frozen=True)
class ColumnRoles:
    """What the columns of a layout mean physically (used by the conditioning checks of
    ``flashsim validate``, :mod:`flashsim.conditioning`).

    Attributes:
        class_column: conditioning column whose physical value gives an object's class.
        classes: ``(name, value)`` pairs: rows with ``class_column == value`` belong to
            class ``name`` (rows with other values to none).
        gen_pt, gen_eta: conditioning columns of the generator-level pT (GeV) and eta.
        responses: target columns whose mean and RMS are profiled versus gen pT and eta.
        discriminants: ROC checks by true class.
        discrete: integer-valued target columns (compared after rounding, with
            randomised ranks for ties).
    """

    class_column: str
    classes: tuple[tuple[str, float], ...]
    gen_pt: str
    gen_eta: str
    responses: tuple[str, ...]
    discriminants: tuple[Discriminant, ...]
    discrete: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """Column layout of one object kind.

    Attributes:
        object: ``"jets"`` or ``"muons"``.
        columns: column names, in storage order.
        n_conditioning: the first ``n_conditioning`` columns are the conditioning
            (generator level); the rest are the targets (reconstructed level).
        roles: what the columns mean physically (classes, gen pT/eta, taggers, ...).
        counts: the discrete columns (:attr:`discrete`) that count something (any integer
            of the range is valid; a value missing from a finite training set is no bit
            pattern that full simulation cannot produce): rounded and kept in range, no
            value set recorded (:mod:`flashsim.valid`).
    """

    object: str
    columns: tuple[str, ...]
    n_conditioning: int
    roles: ColumnRoles | None = None
    counts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.roles is not None:  # every column a role names is in the layout
            r = self.roles
            names = (r.class_column, r.gen_pt, r.gen_eta, *r.responses, *r.discrete)
            for name in (*names, *(d.column for d in r.discriminants)):
                self.index(name)
        if not set(self.counts) <= set(self.discrete):
            raise ValueError("every count column is a discrete column")

    @property
    def discrete(self) -> tuple[str, ...]:
        """The integer-valued target columns (ids, bit fields, counts, flags); prep records
        the value set of each one but the counts, and generation keeps to it."""
        return self.roles.discrete if self.roles is not None else ()

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @property
    def n_targets(self) -> int:
        return self.n_columns - self.n_conditioning

    @property
    def conditioning(self) -> slice:
        """Slice of the conditioning columns (``y`` in the trainer)."""
        return slice(0, self.n_conditioning)

    @property
    def targets(self) -> slice:
        """Slice of the target columns (``x`` in the trainer)."""
        return slice(self.n_conditioning, self.n_columns)

    @property
    def conditioning_columns(self) -> tuple[str, ...]:
        return self.columns[self.conditioning]

    @property
    def target_columns(self) -> tuple[str, ...]:
        return self.columns[self.targets]

    def index(self, name: str) -> int:
        """Position of column ``name``; raises ``KeyError`` naming the layout if absent."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(f"column {name!r} is not in the {self.object} layout") from None

    def to_dict(self) -> dict:
        """JSON-serialisable description, as stored in every store's metadata."""
        return {
            "object": self.object,
            "columns": list(self.columns),
            "conditioning": [self.conditioning.start, self.conditioning.stop],
            "targets": [self.targets.start, self.targets.stop],
        }


_MUON_VARS = ("dr", "pt", "deta", "dphi")

_B_TAGGERS = ("MJet_btagCMVA", "MJet_btagCSVV2", "MJet_btagDeepB", "MJet_btagDeepFlavB")
_C_TAGGERS = ("MJet_btagDeepC", "MJet_btagDeepFlavC")

JET_ROLES = ColumnRoles(
    # hadron flavour: 5 b, 4 c, 0 light (u, d, s, g)
    class_column="MGenJet_hadronFlavour",
    classes=(("b", 5.0), ("c", 4.0), ("light", 0.0)),
    gen_pt="MGenJet_pt",
    gen_eta="MGenJet_eta",
    responses=("MJet_ptRatio", "MJet_etaMinusGen", "MJet_phiMinusGen"),
    discriminants=(
        *(Discriminant(t, "b", "light") for t in _B_TAGGERS),
        *(Discriminant(t, "c", "light") for t in _B_TAGGERS),
        *(Discriminant(t, "c", "light") for t in _C_TAGGERS),
    ),
    discrete=("MJet_nConstituents", "MJet_puId", "MJet_jetId"),
)

MUON_FLAG_TARGETS = (
    "MMuon_isGlobal",
    "MMuon_isPFcand",
    "MMuon_isTracker",
    "MMuon_mediumId",
    "MMuon_softId",
    "MMuon_softMvaId",
)
"""The muons' boolean targets (0/1; dequantized by the preprocessing)."""

MUON_ROLES = ColumnRoles(
    # statusFlags bit 0: isPrompt (from the hard process or a prompt tau)
    class_column="MGenPart_statusFlags0",
    classes=(("prompt", 1.0), ("non-prompt", 0.0)),
    gen_pt="MGenMuon_pt",
    gen_eta="MGenMuon_eta",
    responses=("MMuon_ptRatio", "MMuon_etaMinusGen", "MMuon_phiMinusGen"),
    # non-prompt muons (b/c decays in jets) are less isolated and displaced
    discriminants=(
        Discriminant("MMuon_pfRelIso03_all", "non-prompt", "prompt"),
        Discriminant("MMuon_ip3d", "non-prompt", "prompt"),
    ),
    discrete=MUON_FLAG_TARGETS,
)

JETS = Layout(
    object="jets",
    columns=(
        *(f"MClosestMuon_{v}" for v in _MUON_VARS),
        *(f"MSecondClosestMuon_{v}" for v in _MUON_VARS),
        "MGenJet_eta",
        "MGenJet_mass",
        "MGenJet_phi",
        "MGenJet_pt",
        "MGenJet_partonFlavour",
        "MGenJet_hadronFlavour",
        "MJet_area",
        "MJet_btagCMVA",
        "MJet_btagCSVV2",
        "MJet_btagDeepB",
        "MJet_btagDeepC",
        "MJet_btagDeepFlavB",
        "MJet_btagDeepFlavC",
        "MJet_etaMinusGen",
        "MJet_bRegCorr",
        "MJet_massRatio",
        "MJet_nConstituents",
        "MJet_phiMinusGen",
        "MJet_ptRatio",
        "MJet_qgl",
        "MJet_muEF",
        "MJet_puId",
        "MJet_jetId",
    ),
    n_conditioning=14,
    roles=JET_ROLES,
    counts=("MJet_nConstituents",),
)

MUONS = Layout(
    object="muons",
    columns=(
        "MGenMuon_eta",
        "MGenMuon_phi",
        "MGenMuon_pt",
        "MGenMuon_charge",
        *(f"MGenPart_statusFlags{k}" for k in range(15)),
        "MClosestJet_dr",
        "MClosestJet_deta",
        "MClosestJet_dphi",
        "MClosestJet_pt",
        "MClosestJet_mass",
        "Pileup_gpudensity",
        "Pileup_nPU",
        "Pileup_nTrueInt",
        "Pileup_pudensity",
        "Pileup_sumEOOT",
        "Pileup_sumLOOT",
        "MMuon_etaMinusGen",
        "MMuon_phiMinusGen",
        "MMuon_ptRatio",
        "MMuon_dxy",
        "MMuon_dxyErr",
        "MMuon_dz",
        "MMuon_dzErr",
        "MMuon_ip3d",
        "MMuon_isGlobal",
        "MMuon_isPFcand",
        "MMuon_isTracker",
        "MMuon_jetPtRelv2",
        "MMuon_jetRelIso",
        "MMuon_mediumId",
        "MMuon_pfRelIso03_all",
        "MMuon_pfRelIso03_chg",
        "MMuon_pfRelIso04_all",
        "MMuon_ptErr",
        "MMuon_sip3d",
        "MMuon_softId",
        "MMuon_softMva",
        "MMuon_softMvaId",
    ),
    n_conditioning=30,
    roles=MUON_ROLES,
)

LAYOUTS: dict[str, Layout] = {JETS.object: JETS, MUONS.object: MUONS}
OBJECTS: tuple[str, ...] = tuple(LAYOUTS)

assert JETS.n_columns == 31 and MUONS.n_columns == 52  # the contract of columns.md


def layout_for(obj: str) -> Layout:
    """The layout of object ``"jets"`` or ``"muons"``.

    Raises:
        FlashSimError: for any other name.
    """
    try:
        return LAYOUTS[obj]
    except KeyError:
        raise FlashSimError(
            f"Unknown object {obj!r}: flashsim knows {', '.join(OBJECTS)}."
        ) from None


def layout_for_width(n_columns: int) -> Layout | None:
    """The layout with ``n_columns`` columns (31: jets, 52: muons), or ``None``."""
    for layout in LAYOUTS.values():
        if layout.n_columns == n_columns:
            return layout
    return None
