"""The row layouts: the single source of truth for column names, order and slices.

Every row written by ``flashsim prep`` is one reconstructed object matched to its
generator-level partner, float32, ``conditioning | targets``:

* ``jets``: 31 columns, conditioning ``0:14``, targets ``14:31``;
* ``muons``: 52 columns, conditioning ``0:30``, targets ``30:52``;
* ``jets-run3``: 42 columns, the 14 jet conditioning columns and 28 targets that Run 3
  NanoAOD (v12-v15) stores natively (ParticleNet, ParT and DeepJet scores, the
  ParticleNet pT regression, energy fractions, jet ID).

The first two reproduce the layouts of the original FlashSim training files (see
``shared/spec/columns.md``). :data:`LAYOUTS` is the registry, keyed by
:attr:`Layout.name`: that name is what stores and checkpoints record (``"object"``), what
``flashsim prep --layout``, ``flashsim train NAME`` and ``loaders.open(object=NAME)`` take,
and what names the stores (``NAME.zarr``). A layout's :attr:`Layout.kind` is its physics
object (:data:`KINDS`: the NanoAOD collection, how it is matched and conditioned), which
the code of prep and generate dispatches on; everything else specific to a layout (its
copied NanoAOD branches and their types, its column roles, its preprocessing in
:mod:`flashsim.transforms`, its preset width) hangs off its entry.

Examples
--------
>>> from flashsim.layouts import JETS, layout_for
>>> JETS.n_columns, JETS.conditioning, JETS.targets
(31, slice(0, 14, None), slice(14, 31, None))
>>> layout_for("muons").index("MMuon_ptRatio")
32
>>> layout_for("jets-run3").kind, layout_for("jets-run3").n_columns
('jets', 42)
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
class Kind:
    """A physics object a layout describes: its NanoAOD collection and how a
    reconstructed object is matched to its generator-level partner.

    Attributes:
        name: ``"jets"`` or ``"muons"``; also the ``flashsim generate`` option
            (``--jets``/``--muons``) a model of this kind is given to.
        collection: the reconstructed NanoAOD collection (``Jet``).
        gen_collection: the generator-level collection of the partners (``GenJet``).
        index_branch: the reco branch pointing to the partner (``Jet_genJetIdx``).
    """

    name: str
    collection: str
    gen_collection: str
    index_branch: str


JET_KIND = Kind("jets", "Jet", "GenJet", "Jet_genJetIdx")
MUON_KIND = Kind("muons", "Muon", "GenPart", "Muon_genPartIdx")
KINDS: dict[str, Kind] = {k.name: k for k in (JET_KIND, MUON_KIND)}


@dataclass(frozen=True)
class Layout:
    """Column layout of one kind of stored row.

    Attributes:
        name: the registry key (``"jets"``, ``"muons"``, ``"jets-run3"``): stores are
            ``<name>.zarr``, ``<name>-wds``, ``<name>.h5``; stores and checkpoints record it
            as ``"object"`` (:attr:`object`).
        kind: the physics object (:data:`KINDS`): its collection, matching, conditioning.
        columns: column names, in storage order.
        n_conditioning: the first ``n_conditioning`` columns are the conditioning
            (generator level); the rest are the targets (reconstructed level).
        roles: what the columns mean physically (classes, gen pT/eta, taggers, ...).
        counts: the discrete columns (:attr:`discrete`) that count something (any integer
            of the range is valid; a value missing from a finite training set is no bit
            pattern that full simulation cannot produce): rounded and kept in range, no
            value set recorded (:mod:`flashsim.valid`).
        copied: ``(target column, canonical NanoAOD branch)`` pairs: the targets prep copies
            from one branch of the matched object (the others are computed from the
            kinematics) and ``flashsim generate`` writes back to it.
        branch_types: ``(branch, numpy dtype name)``: the NanoAOD type ``flashsim generate``
            writes a branch of the collection with (a copied one, or ``Jet_genJetIdx``, ...);
            the others take their type in :data:`flashsim.events.COLLECTIONS`.
        stream: the layout's index in prep's random streams (noise and validation split):
            unique and never reused, so adding a layout changes no other layout's rows.
        paper_hidden_features: hidden units of the ``paper`` preset's conditioner nets.
        title: one line for ``--help`` and the docs.
        generations: the NanoAOD generations (:mod:`pipelines.profiles`) whose own branches
            the layout reads; empty: any (the paper layouts, with documented substitutes).
    """

    name: str
    kind: str
    columns: tuple[str, ...]
    n_conditioning: int
    roles: ColumnRoles | None = None
    counts: tuple[str, ...] = ()
    copied: tuple[tuple[str, str], ...] = ()
    branch_types: tuple[tuple[str, str], ...] = ()
    stream: int = 0
    paper_hidden_features: int = 256
    title: str = ""
    generations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.roles is not None:  # every column a role names is in the layout
            r = self.roles
            names = (r.class_column, r.gen_pt, r.gen_eta, *r.responses, *r.discrete)
            for name in (*names, *(d.column for d in r.discriminants)):
                self.index(name)
        if not set(self.counts) <= set(self.discrete):
            raise ValueError("every count column is a discrete column")
        if not {c for c, _ in self.copied} <= set(self.target_columns):
            raise ValueError("every copied column is a target column")

    @property
    def object(self) -> str:
        """The name stores and checkpoints record under ``"object"`` (:attr:`name`)."""
        return self.name

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

    @property
    def copied_branches(self) -> dict[str, str]:
        """Target column -> the canonical NanoAOD branch it is copied from."""
        return dict(self.copied)

    def index(self, name: str) -> int:
        """Position of column ``name``; raises ``KeyError`` naming the layout if absent."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(f"column {name!r} is not in the {self.name} layout") from None

    def to_dict(self) -> dict:
        """JSON-serialisable description, as stored in every store's metadata."""
        return {
            "object": self.name,
            "columns": list(self.columns),
            "conditioning": [self.conditioning.start, self.conditioning.stop],
            "targets": [self.targets.start, self.targets.stop],
        }


def _copied(prefix: str, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``(M{prefix}_{n}, {prefix}_{n})`` for each name: a column copied from its branch."""
    return tuple((f"M{prefix}_{n}", f"{prefix}_{n}") for n in names)


_MUON_VARS = ("dr", "pt", "deta", "dphi")

JET_CONDITIONING = (
    *(f"MClosestMuon_{v}" for v in _MUON_VARS),
    *(f"MSecondClosestMuon_{v}" for v in _MUON_VARS),
    "MGenJet_eta",
    "MGenJet_mass",
    "MGenJet_phi",
    "MGenJet_pt",
    "MGenJet_partonFlavour",
    "MGenJet_hadronFlavour",
)
"""The 14 conditioning columns of every jet layout (gen jet and its nearest gen muons)."""

_B_TAGGERS = ("MJet_btagCMVA", "MJet_btagCSVV2", "MJet_btagDeepB", "MJet_btagDeepFlavB")
_C_TAGGERS = ("MJet_btagDeepC", "MJet_btagDeepFlavC")


def _jet_roles(discriminants: tuple[Discriminant, ...], discrete: tuple[str, ...]) -> ColumnRoles:
    """The roles of a jet layout: classes by hadron flavour, gen pT/eta and the kinematic
    responses (every jet layout's), with its own taggers and integer columns."""
    return ColumnRoles(
        class_column="MGenJet_hadronFlavour",
        classes=(("b", 5.0), ("c", 4.0), ("light", 0.0)),  # hadron flavour (light: udsg)
        gen_pt="MGenJet_pt",
        gen_eta="MGenJet_eta",
        responses=("MJet_ptRatio", "MJet_etaMinusGen", "MJet_phiMinusGen"),
        discriminants=discriminants,
        discrete=discrete,
    )


JET_ROLES = _jet_roles(
    (
        *(Discriminant(t, "b", "light") for t in _B_TAGGERS),
        *(Discriminant(t, "c", "light") for t in _B_TAGGERS),
        *(Discriminant(t, "c", "light") for t in _C_TAGGERS),
    ),
    ("MJet_nConstituents", "MJet_puId", "MJet_jetId"),
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

_JET_COPIED: tuple[str, ...] = (
    *("area", "btagCMVA", "btagCSVV2", "btagDeepB", "btagDeepC", "btagDeepFlavB"),
    *("btagDeepFlavC", "bRegCorr", "nConstituents", "qgl", "muEF", "puId", "jetId"),
)

JETS = Layout(
    name="jets",
    kind="jets",
    columns=(
        *JET_CONDITIONING,
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
    copied=_copied("Jet", _JET_COPIED),
    stream=0,
    paper_hidden_features=298,
    title="the paper's Run 2 jets; later NanoAOD gets documented substitutes",
)

_MUON_COPIED: tuple[str, ...] = (
    "dxy",
    "dxyErr",
    "dz",
    "dzErr",
    "ip3d",
    "isGlobal",
    "isPFcand",
    "isTracker",
)
_MUON_COPIED += ("jetPtRelv2", "jetRelIso", "mediumId", "pfRelIso03_all", "pfRelIso03_chg")
_MUON_COPIED += ("pfRelIso04_all", "ptErr", "sip3d", "softId", "softMva", "softMvaId")

MUONS = Layout(
    name="muons",
    kind="muons",
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
    copied=_copied("Muon", _MUON_COPIED),
    stream=1,
    paper_hidden_features=256,
    title="the paper's muons",
)

# --------------------------------------------------------------------------- jets-run3

_RUN3_TAGGERS = tuple(
    f"btag{net}{score}"
    for net in ("DeepFlav", "PNet", "ParTAK4")
    for score in ("B", "CvB", "CvL", "QG" if net == "DeepFlav" else "QvG")
)
"""DeepJet, ParticleNet and the ParT AK4 tagger of the generation (RobustParT in v12-v13,
UParT in v14-v15: ``Jet_btagParTAK4*`` is generation-neutral, :mod:`pipelines.profiles`)."""
_RUN3_REGRESSION = ("PNetRegPtRawCorr", "PNetRegPtRawCorrNeutrino", "PNetRegPtRawRes")
RUN3_FRACTIONS = tuple(f"MJet_{f}" for f in ("chEmEF", "chHEF", "neEmEF", "neHEF", "muEF"))
"""Energy fractions of the Run 3 jets, in [0, 1]."""
_RUN3_COPIED: tuple[str, ...] = ("area", "rawFactor", *_RUN3_TAGGERS, *_RUN3_REGRESSION)
_RUN3_INTEGERS = ("nConstituents", "jetId")  # NanoAOD's uint8 branches
_RUN3_COPIED += (*(f.removeprefix("MJet_") for f in RUN3_FRACTIONS), *_RUN3_INTEGERS)

RUN3_SCORES = tuple(f"MJet_{t}" for t in _RUN3_TAGGERS)
"""The tagger scores of the Run 3 jets: in [0, 1], negative where the network failed."""

_RUN3_ROCS = (("B", "b", "light"), ("CvL", "c", "light"), ("CvB", "c", "b"))
"""Per tagger: the score, its signal and its background class."""

RUN3_JET_ROLES = _jet_roles(
    tuple(
        Discriminant(f"MJet_btag{net}{score}", signal, background)
        for net in ("DeepFlav", "PNet", "ParTAK4")
        for score, signal, background in _RUN3_ROCS
    ),
    ("MJet_nConstituents", "MJet_jetId"),
)

JETS_RUN3 = Layout(
    name="jets-run3",
    kind="jets",
    columns=(
        *JET_CONDITIONING,
        "MJet_ptRatio",
        "MJet_etaMinusGen",
        "MJet_phiMinusGen",
        "MJet_massRatio",
        *(column for column, _ in _copied("Jet", _RUN3_COPIED)),
    ),
    n_conditioning=14,
    roles=RUN3_JET_ROLES,
    counts=("MJet_nConstituents",),
    copied=_copied("Jet", _RUN3_COPIED),
    # the types of Run 3 NanoAOD (jetsAK4_Puppi_cff.py; checked in nano_tt_v12.root)
    branch_types=(
        *((f"Jet_{n}", "uint8" if n in _RUN3_INTEGERS else "float32") for n in _RUN3_COPIED),
        ("Jet_hadronFlavour", "uint8"),
        ("Jet_partonFlavour", "int16"),
        ("Jet_genJetIdx", "int16"),
    ),
    stream=2,
    paper_hidden_features=298,
    title="Run 3 jets with the taggers Run 3 NanoAOD v12-v15 stores",
    generations=("run3-v12", "run3-v15"),
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (JETS, MUONS, JETS_RUN3)}
"""Every layout, by name (append new ones: the order is that of ``--help`` listings)."""
OBJECTS: tuple[str, ...] = tuple(LAYOUTS)
"""The layout names (what ``"object"`` records in stores and checkpoints)."""
PAPER_LAYOUTS: tuple[str, ...] = (JETS.name, MUONS.name)
"""What ``flashsim prep`` prepares when no layout is chosen."""

assert JETS.n_columns == 31 and MUONS.n_columns == 52  # the contract of columns.md
assert len({layout.stream for layout in LAYOUTS.values()}) == len(LAYOUTS)
# HDF5 rows without metadata (original FlashSim files) are recognised by their width
assert len({layout.n_columns for layout in LAYOUTS.values()}) == len(LAYOUTS)
assert all(layout.conditioning_columns == JET_CONDITIONING for layout in (JETS, JETS_RUN3))


def layout_for(obj: str) -> Layout:
    """The layout named ``obj`` (``"jets"``, ``"muons"``, ``"jets-run3"``).

    Raises:
        FlashSimError: for any other name.
    """
    try:
        return LAYOUTS[obj]
    except KeyError:
        raise FlashSimError(
            f"Unknown object {obj!r}: flashsim knows the layouts {', '.join(OBJECTS)}."
        ) from None


def layouts_of_kind(kind: str) -> tuple[str, ...]:
    """The names of the layouts of ``kind`` (``"jets"`` -> ``("jets", "jets-run3")``)."""
    return tuple(name for name, layout in LAYOUTS.items() if layout.kind == kind)


def describe_layouts() -> str:
    """One phrase per layout, for ``--help``: ``jets (31 columns: ...), ...``."""
    return "; ".join(f"{n} ({lay.n_columns} columns: {lay.title})" for n, lay in LAYOUTS.items())


def layout_for_width(n_columns: int) -> Layout | None:
    """The layout with ``n_columns`` columns (31: jets, 52: muons, 42: jets-run3), or ``None``."""
    for layout in LAYOUTS.values():
        if layout.n_columns == n_columns:
            return layout
    return None
