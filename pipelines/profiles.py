"""NanoAOD generations and their built-in substitutes for the branches the paper layouts read.

The paper layouts (``flashsim/layouts.py``) were defined on Run 2 NanoAOD. Later
generations dropped or renamed some of their branches; each generation has a
:class:`Profile` saying, for every such branch, how to obtain it from what that
generation does store, or which "not available" value NanoAOD itself uses for it.
:func:`detect_profile` recognises the generation from the branches present (NanoAOD
files carry no version field of their own). The rationale and references of every
substitute are in ``docs/prep.md`` ("Missing branches and substitutes").

A profile also names the generation's own branch for each *generation-neutral* branch a
layout reads (:attr:`Profile.names`): the ``jets-run3`` layout's ``Jet_btagParTAK4B`` is
RobustParT's ``Jet_btagRobustParTAK4B`` in v12-v13 and UParT's ``Jet_btagUParTAK4B`` in
v14-v15. Those are the layout's definition, not substitutes: they are recorded in the store
(``generation_branches``) but neither warned about nor refused by ``--strict``, and
``flashsim generate`` writes the column back under the generation's name.

A :class:`Source` says how one canonical branch is obtained in one file; the
derivations it may name are in :data:`DERIVATIONS`, plain vectorized functions of
awkward arrays (events x jets).

Examples
--------
>>> detect_profile({"Jet_pt", "Jet_btagPNetB", "Jet_btagRobustParTAK4B"}).name
'run3-v12'
>>> detect_profile({"Jet_pt", "Jet_btagDeepB"}).name
'run2'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import awkward as ak
import numpy as np


@dataclass(frozen=True)
class Source:
    """How canonical ``branch`` is obtained: read ``reads`` and combine them.

    ``constant`` set: every object gets this value. ``derive`` set: the name of a
    function in :data:`DERIVATIONS` applied to the ``reads`` arrays. Otherwise the
    single branch in ``reads`` is used as is (a rename when it differs from ``branch``).
    ``origin`` is ``"file"``, ``"generation"`` (the generation's own branch for a
    generation-neutral one, :attr:`Profile.names`), ``"builtin"`` (a documented
    substitute) or ``"user"``; ``profile`` names the :class:`Profile` a built-in
    substitute or generation branch comes from.
    """

    branch: str
    reads: tuple[str, ...] = ()
    constant: float | None = None
    derive: str | None = None
    origin: str = "file"  # one of the origins below
    description: str = ""
    profile: str | None = None

    @property
    def is_substitution(self) -> bool:
        return self.origin not in (FILE, GENERATION)


FILE, GENERATION, BUILTIN, USER = "file", "generation", "builtin", "user"
"""The origins of a :class:`Source`."""


# ---------------------------------------------------------------------------
# Derivations (docs/prep.md gives the physics and the references)
# ---------------------------------------------------------------------------

FAILED = -1.0
"""NanoAOD's value for a discriminant that could not be computed."""


def c_from_cvb(b: ak.Array, cvb: ak.Array) -> ak.Array:
    """Charm score from the b score and the C-vs-B ratio: ``C = CvB * B / (1 - CvB)``.

    ``CvB = C / (C + B)``, so ``C = CvB * B / (1 - CvB)``. Failed inputs (negative
    NanoAOD defaults such as -1) and ``CvB >= 1`` (C undetermined) give -1, the
    NanoAOD "failed" value, which preprocessing then treats like any failed score.
    """
    b64 = ak.values_astype(b, np.float64)
    cvb64 = ak.values_astype(cvb, np.float64)
    ok = (b64 >= 0) & (cvb64 >= 0) & (cvb64 < 1)
    denom = ak.where(ok, 1.0 - cvb64, 1.0)
    return ak.where(ok, cvb64 * b64 / denom, FAILED)


def breg_from_raw_regression(raw_factor: ak.Array, pt_corr: ak.Array, pt_nu: ak.Array) -> ak.Array:
    """Run 2's ``bRegCorr`` (factor on the corrected pT) from a Run 3 raw-pT regression.

    The Run 3 regressions (ParticleNet, UParT) give ``pt_corr`` (visible pT / raw pT)
    and ``pt_nu`` (neutrino correction, relative to visible); the raw pT is
    ``pt * (1 - rawFactor)``. Run 2's b regression targeted the GenJet pT with
    neutrinos, as a factor on the corrected pT: ``(1 - rawFactor) * pt_corr * pt_nu``.
    Where the regression was not evaluated (``pt_corr`` or ``pt_nu`` <= 0: jets with
    too low a raw pT), 1: no correction.
    """
    f = ak.values_astype(1.0 - raw_factor, np.float64)
    corr = ak.values_astype(pt_corr, np.float64)
    nu = ak.values_astype(pt_nu, np.float64)
    return ak.where((corr > 0) & (nu > 0), f * corr * nu, 1.0)


def qgl_from_qvg(qvg: ak.Array) -> ak.Array:
    """``qgl`` (quark-likeness in [0, 1], -1 failed) from a network's q-vs-g output.

    NanoAOD writes -1 (UParT) or leaves the tagger's own default (ParticleNet: -10)
    where the network was not evaluated; both become -1, ``qgl``'s failed value.
    """
    q = ak.values_astype(qvg, np.float64)
    return ak.where(q >= 0, q, FAILED)


# JME tight jet ID for Run 3 AK4 PUPPI jets (JetID13p6TeV, "Summer24"), per |eta| region;
# the lepton veto adds muEF < 0.8 and chEmEF < 0.8 up to |eta| 2.7. Bit 1 (2) is tight,
# bit 2 (4) tightLepVeto: NanoAOD's own encoding of Jet_jetId in Run 3 (0, 2 or 6).
TIGHT_BIT, LEPVETO_BIT = 2, 4


def jet_id_run3(
    eta: ak.Array,
    ch_hef: ak.Array,
    ne_hef: ak.Array,
    ch_em_ef: ak.Array,
    ne_em_ef: ak.Array,
    mu_ef: ak.Array,
    ch_mult: ak.Array,
    ne_mult: ak.Array,
) -> ak.Array:
    """``Jet_jetId`` recomputed from energy fractions and multiplicities (NanoAOD v15)."""
    a = abs(eta)
    central = (
        (a <= 2.6)
        & (ne_hef < 0.99)
        & (ne_em_ef < 0.9)
        & (ch_mult + ne_mult > 1)
        & (ch_hef > 0.01)
        & (ch_mult > 0)
    )
    transition = (a > 2.6) & (a <= 2.7) & (ne_hef < 0.90) & (ne_em_ef < 0.99)
    endcap = (a > 2.7) & (a <= 3.0) & (ne_hef < 0.99)
    forward = (a > 3.0) & (ne_mult >= 2) & (ne_em_ef < 0.4)
    tight = central | transition | endcap | forward
    lepveto = tight & ((a > 2.7) | ((mu_ef < 0.8) & (ch_em_ef < 0.8)))
    return ak.values_astype(
        ak.where(tight, TIGHT_BIT, 0) + ak.where(lepveto, LEPVETO_BIT, 0), np.uint8
    )


def flip_score(score: ak.Array) -> ak.Array:
    """``1 - score`` of a two-class score (g-vs-uds <-> uds-vs-g); failed (negative)
    values stay as they are. Its own inverse, so generate writes it back with it."""
    s = ak.values_astype(score, np.float64)
    return ak.where(s >= 0, 1.0 - s, s)


DERIVATIONS: dict[str, Callable[..., ak.Array]] = {
    "c_from_cvb": c_from_cvb,
    "breg_from_raw_regression": breg_from_raw_regression,
    "qgl_from_qvg": qgl_from_qvg,
    "jet_id_run3": jet_id_run3,
    "flip_score": flip_score,
}

INVOLUTIONS = frozenset({"flip_score"})
"""Derivations that are their own inverse: the only ones a generation branch may use, so
that ``flashsim generate`` maps a column back to the generation's branch with them."""

JET_ID_INPUTS = (
    "Jet_eta",
    "Jet_chHEF",
    "Jet_neHEF",
    "Jet_chEmEF",
    "Jet_neEmEF",
    "Jet_muEF",
    "Jet_chMultiplicity",
    "Jet_neMultiplicity",
)


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One NanoAOD generation: how to recognise it and its substitutes.

    ``markers``: the generation is recognised when the file has any of these branches.
    ``substitutes``: per canonical branch, candidate :class:`Source` s in order of
    preference; the first whose ``reads`` the file has is used.
    ``names``: per generation-neutral canonical branch, the generation's own branch
    (a rename, or an involution of :data:`INVOLUTIONS`), likewise.
    """

    name: str
    title: str
    markers: tuple[str, ...]
    substitutes: dict[str, tuple[Source, ...]]
    names: dict[str, tuple[Source, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cands in self.names.values():
            assert all(s.derive is None or s.derive in INVOLUTIONS for s in cands)

    def reads(self) -> set[str]:
        """Every branch some substitute or generation branch of this profile may read."""
        tables = (*self.substitutes.values(), *self.names.values())
        return {r for cands in tables for s in cands for r in s.reads}


def _derived(branch: str, reads: tuple[str, ...], derive: str, what: str) -> Source:
    return Source(branch, reads=reads, derive=derive, origin="builtin", description=what)


def _constant(branch: str, value: float, what: str) -> Source:
    return Source(branch, constant=value, origin="builtin", description=what)


def _c_from(b: str, cvb: str, branch: str) -> Source:
    return _derived(
        branch,
        (b, cvb),
        "c_from_cvb",
        f"derived: CvB*B/(1-CvB) from {b} and {cvb} (-1 where an input failed or CvB >= 1)",
    )


def _breg(corr: str, nu: str) -> Source:
    return _derived(
        "Jet_bRegCorr",
        ("Jet_rawFactor", corr, nu),
        "breg_from_raw_regression",
        f"derived: (1 - Jet_rawFactor) * {corr} * {nu} (pT regression relative to the "
        "corrected pT, with neutrinos; 1 where the regression was not evaluated)",
    )


def _qgl(qvg: str, what: str) -> Source:
    return _derived(
        "Jet_qgl",
        (qvg,),
        "qgl_from_qvg",
        f"derived: {qvg} ({what} q-vs-g score, quark-like near 1), -1 where negative (failed)",
    )


_CMVA = _constant(
    "Jet_btagCMVA",
    -1.0,
    "constant -1 (cMVAv2 is not in this NanoAOD; -1 is NanoAOD's 'not available' value), "
    "dequantized with +0.1*N(0,1) like jetId",
)
_DEEPFLAV_C = (_c_from("Jet_btagDeepFlavB", "Jet_btagDeepFlavCvB", "Jet_btagDeepFlavC"),)


def _retired(branch: str, tagger: str) -> Source:
    return _constant(
        branch,
        -1.0,
        f"constant -1 ({tagger} is not run in Run 3; -1 is NanoAOD's 'not available' value), "
        "smeared at its preprocessed value -0.1",
    )


_PU_ID = _constant(
    "Jet_puId",
    0.0,
    "constant 0 (no pileup-ID flag: Run 3 PUPPI jets have no PU jet ID working points in "
    "NanoAOD), dequantized with +0.1*N(0,1) like any puId",
)

RUN2 = Profile(
    "run2",
    "Run 2 NanoAOD (v5-v9, 2015 Open Data): DeepCSV, DeepJet",
    ("Jet_btagDeepB", "Jet_btagCSVV2"),
    {
        "Jet_btagDeepC": (_c_from("Jet_btagDeepB", "Jet_btagDeepCvB", "Jet_btagDeepC"),),
        "Jet_btagDeepFlavC": _DEEPFLAV_C,
        "Jet_btagCMVA": (_CMVA,),
    },
)

_RUN3_COMMON = {
    "Jet_btagCMVA": (_CMVA,),
    "Jet_btagCSVV2": (_retired("Jet_btagCSVV2", "CSVv2"),),
    "Jet_btagDeepB": (_retired("Jet_btagDeepB", "DeepCSV"),),
    "Jet_btagDeepC": (_retired("Jet_btagDeepC", "DeepCSV"),),
    "Jet_btagDeepFlavC": _DEEPFLAV_C,
    "Jet_bRegCorr": (
        _breg("Jet_PNetRegPtRawCorr", "Jet_PNetRegPtRawCorrNeutrino"),
        _breg("Jet_UParTAK4RegPtRawCorr", "Jet_UParTAK4RegPtRawCorrNeutrino"),
    ),
    "Jet_puId": (_PU_ID,),
}


def _named(branch: str, reads: str, network: str, derive: str | None = None) -> Source:
    how = f"1 - {reads} (its g-vs-uds score turned uds-vs-g)" if derive else reads
    return Source(
        branch, reads=(reads,), derive=derive, origin=GENERATION, description=f"{how}, {network}"
    )


def _part_names(prefix: str, network: str, qvg: Source) -> dict[str, tuple[Source, ...]]:
    """The generation's ParT AK4 tagger under the generation-neutral ``Jet_btagParTAK4*``."""
    names = {
        f"Jet_btagParTAK4{s}": (_named(f"Jet_btagParTAK4{s}", f"{prefix}{s}", network),)
        for s in ("B", "CvB", "CvL")
    }
    return {**names, "Jet_btagParTAK4QvG": (qvg,)}


RUN3_V15 = Profile(
    "run3-v15",
    "Run 3 NanoAOD v14-v15 (2024+): UParT AK4, Jet_jetId dropped in v15",
    ("Jet_btagUParTAK4B",),
    {
        **_RUN3_COMMON,
        "Jet_qgl": (
            _qgl("Jet_btagUParTAK4QvG", "UParT uds"),
            _qgl("Jet_btagPNetQvG", "ParticleNet udsbc"),
        ),
        "Jet_jetId": (
            _derived(
                "Jet_jetId",
                JET_ID_INPUTS,
                "jet_id_run3",
                "derived: JME Run 3 PUPPI tight (2) and tightLepVeto (4) jet ID from the energy "
                "fractions and multiplicities",
            ),
        ),
    },
    _part_names(
        "Jet_btagUParTAK4",
        "UParT AK4",
        _named("Jet_btagParTAK4QvG", "Jet_btagUParTAK4QvG", "UParT AK4"),
    ),
)

RUN3_V12 = Profile(
    "run3-v12",
    "Run 3 NanoAOD v12-v13 (2022-2023): ParticleNet, RobustParT AK4",
    ("Jet_btagPNetB", "Jet_btagRobustParTAK4B"),
    {**_RUN3_COMMON, "Jet_qgl": (_qgl("Jet_btagPNetQvG", "ParticleNet udsbc"),)},
    _part_names(
        "Jet_btagRobustParTAK4",
        "RobustParT AK4",
        _named("Jet_btagParTAK4QvG", "Jet_btagRobustParTAK4QG", "RobustParT AK4", "flip_score"),
    ),
)

PROFILES: tuple[Profile, ...] = (RUN3_V15, RUN3_V12, RUN2)
"""Most recent first: the first profile with a marker in the file is the file's."""


def detect_profile(branches: Iterable[str]) -> Profile:
    """The generation of a file with ``branches`` (Run 2 when no marker is present)."""
    have = set(branches)
    for profile in PROFILES:
        if have.intersection(profile.markers):
            return profile
    return RUN2


def profile_named(name: str) -> Profile:
    """The profile called ``name`` (``"run3-v12"``)."""
    return next(p for p in PROFILES if p.name == name)
