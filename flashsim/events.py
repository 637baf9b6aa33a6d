"""The NanoAOD ``Events`` trees flashsim writes (``flashsim toy``, ``flashsim generate``):
branch names, NanoAOD types, and the in-memory chunk of events.

The names and dtypes match real NanoAOD (checked against the CMS Open Data samples in
``shared/data``): counters ``nX`` are uint32, ``Jet_nConstituents`` and
``GenJet_hadronFlavour`` uint8, muon ids bool, indices int32.

An :class:`EventChunk` is one chunk of events as flat numpy arrays plus per-event counts,
the cheapest form to generate, slice, concatenate and hand to uproot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F4, I4, U1, U4, U8, B1 = (
    np.dtype("float32"),
    np.dtype("int32"),
    np.dtype("uint8"),
    np.dtype("uint32"),
    np.dtype("uint64"),
    np.dtype("bool"),
)

EVENT_BRANCHES: dict[str, np.dtype] = {
    "run": U4,
    "luminosityBlock": U4,
    "event": U8,
    "Pileup_nTrueInt": F4,
    "Pileup_pudensity": F4,
    "Pileup_gpudensity": F4,
    "Pileup_nPU": I4,
    "Pileup_sumEOOT": I4,
    "Pileup_sumLOOT": I4,
}
"""Scalar (one value per event) branches."""

_JET_FLOATS = [
    "pt",
    "eta",
    "phi",
    "mass",
    "area",
    "btagCMVA",
    "btagCSVV2",
    "btagDeepB",
    "btagDeepC",
    "btagDeepCvB",
    "btagDeepCvL",
    "btagDeepFlavB",
    "btagDeepFlavC",
    "btagDeepFlavCvB",
    "btagDeepFlavCvL",
    "bRegCorr",
    "qgl",
    "muEF",
]
_MUON_FLOATS = [
    "pt",
    "eta",
    "phi",
    "mass",
    "dxy",
    "dxyErr",
    "dz",
    "dzErr",
    "ip3d",
    "sip3d",
    "jetPtRelv2",
    "jetRelIso",
    "pfRelIso03_all",
    "pfRelIso03_chg",
    "pfRelIso04_all",
    "ptErr",
    "softMva",
]
_MUON_BOOLS = ["isGlobal", "isPFcand", "isTracker", "mediumId", "softId", "softMvaId"]

COLLECTIONS: dict[str, dict[str, np.dtype]] = {
    "Jet": {
        **dict.fromkeys(_JET_FLOATS, F4),
        "nConstituents": U1,
        **dict.fromkeys(("puId", "jetId", "genJetIdx", "hadronFlavour", "partonFlavour"), I4),
    },
    "GenJet": {
        **dict.fromkeys(("pt", "eta", "phi", "mass"), F4),
        "partonFlavour": I4,
        "hadronFlavour": U1,
    },
    "GenPart": {
        **dict.fromkeys(("pt", "eta", "phi", "mass"), F4),
        **dict.fromkeys(("pdgId", "status", "statusFlags", "genPartIdxMother"), I4),
    },
    "Muon": {
        **dict.fromkeys(_MUON_FLOATS, F4),
        "charge": I4,
        **dict.fromkeys(_MUON_BOOLS, B1),
        "genPartIdx": I4,
    },
}
"""Jagged collections: ``COLLECTIONS["Jet"]["pt"]`` is written as branch ``Jet_pt`` with
counter ``nJet``."""

COUNTER_DTYPE = U4


def branch_types() -> dict[str, np.dtype]:
    """Every branch of a full toy ``Events`` tree and its dtype (counters included)."""
    out = dict(EVENT_BRANCHES)
    for name, fields in COLLECTIONS.items():
        out["n" + name] = COUNTER_DTYPE
        out.update({f"{name}_{field}": dtype for field, dtype in fields.items()})
    return out


@dataclass
class Collection:
    """One jagged collection: ``counts[i]`` objects in event ``i``, fields flat."""

    counts: np.ndarray
    fields: dict[str, np.ndarray]

    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out


@dataclass
class EventChunk:
    """A chunk of events: scalar branches and jagged collections as flat arrays."""

    scalars: dict[str, np.ndarray]
    collections: dict[str, Collection]

    def __len__(self) -> int:
        return len(self.scalars["event"])

    def slice(self, start: int, stop: int) -> EventChunk:
        """Events ``[start, stop)`` (views where possible)."""
        scalars = {k: v[start:stop] for k, v in self.scalars.items()}
        collections = {}
        for name, coll in self.collections.items():
            off = coll.offsets()
            lo, hi = off[start], off[stop]
            collections[name] = Collection(
                coll.counts[start:stop], {k: v[lo:hi] for k, v in coll.fields.items()}
            )
        return EventChunk(scalars, collections)

    @staticmethod
    def concatenate(parts: list[EventChunk]) -> EventChunk:
        """Events of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        scalars = {k: np.concatenate([p.scalars[k] for p in parts]) for k in first.scalars}
        collections = {
            name: Collection(
                np.concatenate([p.collections[name].counts for p in parts]),
                {
                    k: np.concatenate([p.collections[name].fields[k] for p in parts])
                    for k in coll.fields
                },
            )
            for name, coll in first.collections.items()
        }
        return EventChunk(scalars, collections)
