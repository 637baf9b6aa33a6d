"""Feature extraction: matched objects to raw (unpreprocessed) rows, fully vectorized.

Input is one step of events as ``{canonical branch: awkward array}`` (see
:func:`pipelines.branches.materialize`): per-object branches jagged (events x objects),
``Pileup_*`` one value per event. Output is a float32 array ``(n_objects, n_columns)``
in the column order of :mod:`flashsim.layouts`, with the definitions of
``shared/spec/columns.md``:

* jets (every layout of kind ``jets``): every ``Jet`` with ``0 <= Jet_genJetIdx <
  nGenJet``, paired with that GenJet; closest and (true) second-closest gen muon within
  ΔR < 0.4 of the GenJet;
* muons: every ``Muon`` with ``0 <= Muon_genPartIdx < nGenPart``, paired with that
  GenPart; closest GenJet (over all GenJets of the event) within ΔR < 0.4.

The kind fixes the matching, the conditioning and the kinematic residuals (``ptRatio``,
``etaMinusGen``, ...); the layout adds the targets it copies from one branch each
(:attr:`flashsim.layouts.Layout.copied`). :data:`FEATURES` holds the function of every
layout.

Δφ is wrapped to [-π, π). No Python loop runs over events or objects: each jagged
branch becomes (counts, flat values) once, matching is index arithmetic on the flat
arrays, and neighbour search builds every (reference, candidate) pair of each event
at once and ranks them with one stable sort.

Examples
--------
>>> import numpy as np
>>> wrap_phi(np.array([np.pi, -np.pi, 3 * np.pi / 2]))
array([-3.14159265, -3.14159265, -1.57079633])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import awkward as ak
import numpy as np

from flashsim.kinematics import wrap_phi
from flashsim.layouts import DTYPE, JET_KIND, JETS, KINDS, LAYOUTS, MUON_KIND, MUONS, Layout
from flashsim.options import FINAL_STATE, GEN_MUONS, GenMuons
from pipelines.branches import GENJET_VALUE_BRANCHES, PILEUP_BRANCHES

MAX_DR = 0.4
"""A neighbour counts only when ΔR < MAX_DR (strictly)."""
DEFAULT_DR = 0.5
"""dr, deta and dphi of a missing neighbour (the original's default)."""
DEFAULT_VALUE = 0.0
"""pt (and mass) of a missing neighbour."""
N_STATUS_BITS = 15

_LEPTONS = (11, 13, 15)


def _jagged(arr: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """A jagged (events x objects) array as ``(counts per event, flat values)`` numpy arrays."""
    counts = np.asarray(ak.num(arr, axis=1), dtype=np.int64)
    return counts, np.asarray(ak.to_numpy(ak.flatten(arr, axis=1)))


def _flat(arr: ak.Array) -> np.ndarray:
    return _jagged(arr)[1]


def _starts(counts: np.ndarray) -> np.ndarray:
    """Index of each event's first object in the flat arrays."""
    return np.cumsum(counts) - counts


def _event_of(counts: np.ndarray) -> np.ndarray:
    """Event index of each object of the flat arrays."""
    return np.repeat(np.arange(len(counts)), counts)


def nearest(
    ref: tuple[np.ndarray, np.ndarray, np.ndarray],
    cand: tuple[np.ndarray, np.ndarray, np.ndarray],
    extra: Mapping[str, np.ndarray],
    n: int,
    max_dr: float = MAX_DR,
) -> list[dict[str, np.ndarray]]:
    """The ``n`` nearest candidates (ΔR < ``max_dr``) of every reference object.

    Args:
        ref: ``(counts per event, eta, phi)`` of the reference objects (flat arrays).
        cand: ``(counts per event, eta, phi)`` of the candidates, same events.
        extra: more candidate values to report (flat, aligned with ``cand``), e.g. pt.
        n: how many nearest neighbours.

    Returns:
        One dict per rank k (0: closest), arrays over all references: ``found`` (bool),
        ``dr``, ``deta`` (ref − cand), ``dphi`` (ref − cand, wrapped) and the
        ``extra`` fields; 0 where not found. Ties in ΔR keep the candidates' order.
    """
    ref_counts, ref_eta, ref_phi = ref
    cand_counts, cand_eta, cand_phi = cand
    ref_event = _event_of(ref_counts)
    per_ref = cand_counts[ref_event]  # candidates facing each reference
    pair_ref = np.repeat(np.arange(len(ref_event)), per_ref)
    first_pair = _starts(per_ref)
    pair_cand = (
        _starts(cand_counts)[ref_event][pair_ref] + np.arange(len(pair_ref)) - first_pair[pair_ref]
    )
    deta = ref_eta[pair_ref] - cand_eta[pair_cand]
    dphi = wrap_phi(ref_phi[pair_ref] - cand_phi[pair_cand])
    dr = np.sqrt(deta**2 + dphi**2)
    inside = np.flatnonzero(dr < max_dr)
    # group by reference, nearest first; lexsort is stable, so ties keep candidate order
    order = inside[np.lexsort((dr[inside], pair_ref[inside]))]
    grouped = pair_ref[order]
    position = np.arange(len(order))
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = grouped[1:] != grouped[:-1]
    rank = position - np.maximum.accumulate(np.where(new_group, position, 0))
    values = {"dr": dr, "deta": deta, "dphi": dphi}
    ranks = []
    for k in range(n):
        pairs = order[rank == k]
        refs = pair_ref[pairs]
        out = {"found": np.zeros(len(ref_event), dtype=bool)}
        out["found"][refs] = True
        for name, arr in values.items():
            out[name] = np.zeros(len(ref_event))
            out[name][refs] = arr[pairs]
        for name, arr in extra.items():
            out[name] = np.zeros(len(ref_event))
            out[name][refs] = arr[pair_cand[pairs]]
        ranks.append(out)
    return ranks


def _neighbour_columns(rank: dict, prefix: str, fields: Mapping[str, float]) -> dict:
    """Columns ``{prefix}{field}`` from one rank of :func:`nearest`, defaults where not found."""
    return {
        f"{prefix}{field}": np.where(rank["found"], rank[field], default)
        for field, default in fields.items()
    }


def _assemble(names: tuple[str, ...], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    missing = set(names) - set(columns)  # columns a layout does not use are dropped
    if missing:  # a programming error, never a user one
        raise AssertionError(f"features mismatch the layout: {sorted(missing)}")
    n = len(columns[names[0]])
    out = np.empty((n, len(names)), dtype=DTYPE)
    for j, name in enumerate(names):
        out[:, j] = columns[name]
    return out


class _Partners:
    """The generator-level objects that rows are built for, one row each.

    For training rows (:meth:`matched`) they are the partners of the reconstructed
    objects an index branch (e.g. ``Jet_genJetIdx``) points to, in reco order; for
    generation (:meth:`selected`) they are generator-level objects themselves.

    Attributes:
        counts: rows per event.
        gen_index: flat index of each row's object in the generator collection.
        reco_mask: which flat reco objects have a row (``None`` for generation).
    """

    def __init__(
        self,
        ev: Mapping,
        counts: np.ndarray,
        gen_index: np.ndarray,
        reco_mask: np.ndarray | None = None,
    ) -> None:
        self.ev = ev
        self.counts = counts
        self.gen_index = gen_index
        self.reco_mask = reco_mask

    @classmethod
    def matched(cls, ev: Mapping, index_branch: str, gen_counts: np.ndarray) -> _Partners:
        """Reco objects with ``0 <= index_branch < gen_counts`` of their event."""
        counts, index = _jagged(ev[index_branch])
        event = _event_of(counts)
        mask = (index >= 0) & (index < gen_counts[event])
        return cls(
            ev,
            np.bincount(event[mask], minlength=len(counts)),
            _starts(gen_counts)[event[mask]] + index[mask],
            mask,
        )

    @classmethod
    def selected(cls, ev: Mapping, gen_counts: np.ndarray, mask: np.ndarray) -> _Partners:
        """The generator objects where the flat ``mask`` is true, in their own order."""
        event = _event_of(gen_counts)
        return cls(ev, np.bincount(event[mask], minlength=len(gen_counts)), np.flatnonzero(mask))

    def local_index(self, gen_counts: np.ndarray) -> np.ndarray:
        """Each row's object's index within its event's generator collection."""
        return self.gen_index - _starts(gen_counts)[_event_of(self.counts)]

    def reco(self, branch: str) -> np.ndarray:
        """``branch`` (a reco collection's) of each matched object, float64."""
        return _flat(self.ev[branch])[self.reco_mask].astype(np.float64)

    def gen(self, branch: str) -> np.ndarray:
        """``branch`` (the generator collection's) of each row's object."""
        return _flat(self.ev[branch])[self.gen_index]


def gen_muon_mask(ev: Mapping[str, ak.Array], gen_muons: GenMuons = FINAL_STATE) -> ak.Array:
    """Which GenParts are "gen muons": |pdgId| == 13, and status == 1 unless ``gen_muons="all"``."""
    mask = abs(ev["GenPart_pdgId"]) == 13
    if GEN_MUONS.normalize(gen_muons) == FINAL_STATE:
        mask = mask & (ev["GenPart_status"] == 1)
    return mask


def _jet_conditioning(ev: Mapping, jets: _Partners, gen_muons: GenMuons) -> dict[str, np.ndarray]:
    columns = {col: jets.gen(b).astype(np.float64) for col, b in GENJET_VALUE_BRANCHES.items()}
    part_counts, _ = _jagged(ev["GenPart_pdgId"])
    is_muon = np.asarray(ak.to_numpy(ak.flatten(gen_muon_mask(ev, gen_muons), axis=1)))
    muon_counts = np.bincount(_event_of(part_counts)[is_muon], minlength=len(part_counts))
    muon = {v: _flat(ev[f"GenPart_{v}"])[is_muon].astype(np.float64) for v in ("eta", "phi", "pt")}
    closest, second = nearest(
        (jets.counts, columns["MGenJet_eta"], columns["MGenJet_phi"]),
        (muon_counts, muon["eta"], muon["phi"]),
        {"pt": muon["pt"]},
        n=2,
    )
    neighbour_defaults = {
        "dr": DEFAULT_DR,
        "pt": DEFAULT_VALUE,
        "deta": DEFAULT_DR,
        "dphi": DEFAULT_DR,
    }
    columns.update(_neighbour_columns(closest, "MClosestMuon_", neighbour_defaults))
    columns.update(_neighbour_columns(second, "MSecondClosestMuon_", neighbour_defaults))
    return columns


def jet_features(
    ev: Mapping[str, ak.Array], gen_muons: GenMuons = FINAL_STATE, layout: Layout = JETS
) -> np.ndarray:
    """Raw jet rows ``(n_matched_jets, layout.n_columns)`` float32 of one step of events
    (31 columns for the paper's ``jets``)."""
    genjet_counts = np.asarray(ak.num(ev["GenJet_pt"], axis=1), dtype=np.int64)
    jets = _Partners.matched(ev, JET_KIND.index_branch, genjet_counts)
    columns = _jet_conditioning(ev, jets, gen_muons)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 gen mass/pt: inf/NaN, dropped later
        columns["MJet_etaMinusGen"] = jets.reco("Jet_eta") - columns["MGenJet_eta"]
        columns["MJet_phiMinusGen"] = wrap_phi(jets.reco("Jet_phi") - columns["MGenJet_phi"])
        columns["MJet_ptRatio"] = jets.reco("Jet_pt") / columns["MGenJet_pt"]
        columns["MJet_massRatio"] = jets.reco("Jet_mass") / columns["MGenJet_mass"]
    columns.update({col: jets.reco(b) for col, b in layout.copied_branches.items()})
    return _assemble(layout.columns, columns)


def charge_from_pdg_id(pdg_id: np.ndarray) -> np.ndarray:
    """Electric charge from the PDG id, physical sign: +13 (μ⁻) -> -1, -13 (μ⁺) -> +1.

    Charged leptons (11, 13, 15) carry the opposite sign of their id; any other
    particle a muon may be matched to (rare) gets ``sign(pdgId)``, right for charged
    hadrons such as π⁺ (211).
    """
    pdg = np.asarray(pdg_id, dtype=np.int64)
    sign = np.sign(pdg).astype(np.float64)
    return np.where(np.isin(np.abs(pdg), _LEPTONS), -sign, sign)


def status_bits(flags: np.ndarray, n_bits: int = N_STATUS_BITS) -> np.ndarray:
    """Bits ``0..n_bits-1`` of integer ``flags`` as 0/1, shape ``(n, n_bits)``."""
    flags = np.asarray(flags, dtype=np.int64)
    return ((flags[:, None] >> np.arange(n_bits)) & 1).astype(np.float64)


def _muon_conditioning(ev: Mapping, muons: _Partners) -> dict[str, np.ndarray]:
    gen = {v: muons.gen(f"GenPart_{v}").astype(np.float64) for v in ("eta", "phi", "pt")}
    columns = {
        "MGenMuon_eta": gen["eta"],
        "MGenMuon_phi": gen["phi"],
        "MGenMuon_pt": gen["pt"],
        "MGenMuon_charge": charge_from_pdg_id(muons.gen("GenPart_pdgId")),
    }
    bits = status_bits(muons.gen("GenPart_statusFlags"))
    columns.update({f"MGenPart_statusFlags{k}": bits[:, k] for k in range(N_STATUS_BITS)})

    genjet_counts, _ = _jagged(ev["GenJet_pt"])
    genjet = {v: _flat(ev[f"GenJet_{v}"]).astype(np.float64) for v in ("eta", "phi", "pt", "mass")}
    (closest,) = nearest(
        (muons.counts, gen["eta"], gen["phi"]),
        (genjet_counts, genjet["eta"], genjet["phi"]),
        {"pt": genjet["pt"], "mass": genjet["mass"]},
        n=1,
    )
    columns.update(
        _neighbour_columns(
            closest,
            "MClosestJet_",
            {"dr": DEFAULT_DR, "deta": DEFAULT_DR, "dphi": DEFAULT_DR, "pt": 0.0, "mass": 0.0},
        )
    )
    for col, b in PILEUP_BRANCHES.items():  # event-level: repeated for each muon
        columns[col] = np.repeat(np.asarray(ev[b], dtype=np.float64), muons.counts)
    return columns


def muon_features(
    ev: Mapping[str, ak.Array], gen_muons: GenMuons = FINAL_STATE, layout: Layout = MUONS
) -> np.ndarray:
    """Raw muon rows ``(n_matched_muons, 52)`` float32 of one step of events.

    ``gen_muons`` is accepted for symmetry with :func:`jet_features` and unused: a
    muon's partner is ``GenPart[Muon_genPartIdx]`` whatever its status.
    """
    part_counts = np.asarray(ak.num(ev["GenPart_pt"], axis=1), dtype=np.int64)
    muons = _Partners.matched(ev, MUON_KIND.index_branch, part_counts)
    columns = _muon_conditioning(ev, muons)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns["MMuon_etaMinusGen"] = muons.reco("Muon_eta") - columns["MGenMuon_eta"]
        columns["MMuon_phiMinusGen"] = wrap_phi(muons.reco("Muon_phi") - columns["MGenMuon_phi"])
        columns["MMuon_ptRatio"] = muons.reco("Muon_pt") / columns["MGenMuon_pt"]
    columns.update({col: muons.reco(b) for col, b in layout.copied_branches.items()})
    return _assemble(layout.columns, columns)


@dataclass(frozen=True)
class GenConditioning:
    """Conditioning rows of every generator-level object of one step, for generation.

    Attributes:
        rows: ``(n, n_conditioning)`` float32, raw (unpreprocessed), in event order.
        counts: ``(n_events,)`` rows per event.
        index: ``(n,)`` each row's object's index in its event's ``GenJet`` (jets) or
            ``GenPart`` (muons) collection: the ``Jet_genJetIdx`` / ``Muon_genPartIdx``
            that a generated reco object gets.
    """

    rows: np.ndarray
    counts: np.ndarray
    index: np.ndarray


def gen_jet_conditioning(
    ev: Mapping[str, ak.Array], gen_muons: GenMuons = FINAL_STATE
) -> GenConditioning:
    """Jet conditioning ``(n_genjets, 14)`` of every GenJet of one step of events."""
    genjet_counts = np.asarray(ak.num(ev["GenJet_pt"], axis=1), dtype=np.int64)
    jets = _Partners.selected(ev, genjet_counts, np.ones(genjet_counts.sum(), dtype=bool))
    rows = _assemble(JETS.conditioning_columns, _jet_conditioning(ev, jets, gen_muons))
    return GenConditioning(rows, jets.counts, jets.local_index(genjet_counts))


def gen_muon_conditioning(
    ev: Mapping[str, ak.Array], gen_muons: GenMuons = FINAL_STATE
) -> GenConditioning:
    """Muon conditioning ``(n_gen_muons, 30)`` of every gen muon (see
    :func:`gen_muon_mask`) of one step of events."""
    part_counts = np.asarray(ak.num(ev["GenPart_pt"], axis=1), dtype=np.int64)
    is_muon = np.asarray(ak.to_numpy(ak.flatten(gen_muon_mask(ev, gen_muons), axis=1)))
    muons = _Partners.selected(ev, part_counts, is_muon)
    rows = _assemble(MUONS.conditioning_columns, _muon_conditioning(ev, muons))
    return GenConditioning(rows, muons.counts, muons.local_index(part_counts))


Features = Callable[[Mapping[str, ak.Array], GenMuons], np.ndarray]
"""``(events, gen_muons) -> raw rows`` of one layout."""

_KIND_FEATURES = {JET_KIND.name: jet_features, MUON_KIND.name: muon_features}
_KIND_CONDITIONING = {JET_KIND.name: gen_jet_conditioning, MUON_KIND.name: gen_muon_conditioning}

FEATURES: dict[str, Features] = {
    name: partial(_KIND_FEATURES[layout.kind], layout=layout) for name, layout in LAYOUTS.items()
}
"""Layout name -> feature function ``(events, gen_muons) -> rows``."""

GEN_CONDITIONING: dict[str, Callable[..., GenConditioning]] = {
    name: _KIND_CONDITIONING[layout.kind] for name, layout in LAYOUTS.items()
}
"""Layout name -> ``(events, gen_muons) -> GenConditioning`` of every gen-level object."""

GEN_INDEX = {
    name: (KINDS[lay.kind].index_branch, f"{KINDS[lay.kind].gen_collection}_pt")
    for name, lay in LAYOUTS.items()
}
"""Per layout: the reco branch indexing the generator collection, and a branch of it."""

GEN_INDEX_PAST_END = "gen_index_past_end"
"""Drop reason: a reco object whose gen index points past the end of the gen collection
(seen in real NanoAOD: 2 jets of nano_dy.root, 11 of the 2015 Open Data sample)."""


def gen_index_past_end(ev: Mapping[str, ak.Array], obj: str) -> dict[str, int]:
    """``{index branch: n}``: reco objects of one step whose gen index is ``>=`` the size
    of their event's gen collection; they get no row (a negative index means unmatched)."""
    index_branch, gen_branch = GEN_INDEX[obj]
    counts, index = _jagged(ev[index_branch])
    gen_counts = np.asarray(ak.num(ev[gen_branch], axis=1), dtype=np.int64)
    n = int(np.count_nonzero(index >= gen_counts[_event_of(counts)]))
    return {index_branch: n} if n else {}
