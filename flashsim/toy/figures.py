"""Coarse figures of a NanoAOD file, computed the same way for real and toy files.

They summarise what ``flashsim prep`` will extract (see ``shared/spec/columns.md``):
jets are ``Jet`` with ``0 <= Jet_genJetIdx < nGenJet``, muons are ``Muon`` with
``0 <= Muon_genPartIdx < nGenPart``, gen muons are ``GenPart`` with ``|pdgId| == 13`` and
``status == 1``.
"""

from __future__ import annotations

import os

import awkward as ak
import numpy as np
import uproot

from flashsim.errors import InputError

FIGURE_BRANCHES = (
    "nGenJet",
    "Jet_genJetIdx",
    "GenJet_pt",
    "GenJet_eta",
    "GenJet_phi",
    "GenJet_hadronFlavour",
    "nGenPart",
    "GenPart_pdgId",
    "GenPart_status",
    "GenPart_eta",
    "GenPart_phi",
    "Muon_genPartIdx",
)

FIGURE_NAMES = {
    "matched_jets_per_event": "matched jets per event",
    "matched_muons_per_event": "matched muons per event",
    "median_genjet_pt": "median GenJet pT of matched jets [GeV]",
    "b_jet_fraction": "fraction of matched jets with hadronFlavour 5",
    "muon_in_jet_fraction": "fraction of matched jets with a gen muon within dR 0.4",
}
"""Figure keys of :func:`coarse_figures` and their human-readable names."""

REAL_SAMPLE_TOLERANCES: dict[str, tuple[str, float]] = {
    # How far the ``wjets`` toy may be from the real 2015 CMS Open Data sample
    # (shared/data/nanoAOD_2015_CMS_Open_Data_ttbar.root: 200 W+jets events despite its
    # name, 362 matched jets, 38 matched muons). The real figures are small-sample
    # estimates, so each tolerance is 3 standard errors of the real figure (bootstrap over
    # its events), rounded up. "rel": relative to the real value, "abs": absolute.
    "matched_jets_per_event": ("rel", 0.20),  # 1.81 +- 0.11
    "matched_muons_per_event": ("abs", 0.09),  # 0.19 +- 0.027
    "median_genjet_pt": ("rel", 0.20),  # 25.9 +- 1.7 GeV
    "b_jet_fraction": ("abs", 0.025),  # 0.017 +- 0.0074 (6 of 362)
    "muon_in_jet_fraction": ("abs", 0.055),  # 0.119 +- 0.018 (43 of 362)
}
"""Tolerances of the toy-versus-real comparison: figure -> (kind, tolerance)."""


def within_tolerance(figure: str, toy: float, real: float) -> bool:
    """Whether ``toy`` is within :data:`REAL_SAMPLE_TOLERANCES` of ``real``."""
    kind, tol = REAL_SAMPLE_TOLERANCES[figure]
    allowed = tol * abs(real) if kind == "rel" else tol
    return abs(toy - real) <= allowed


def _chunk_figures(a: ak.Array) -> tuple[int, int, np.ndarray, int, int]:
    idx = a["Jet_genJetIdx"]
    matched = (idx >= 0) & (idx < a["nGenJet"])
    gidx = idx[matched]
    gj_pt = a["GenJet_pt"][gidx]
    gj_eta = a["GenJet_eta"][gidx]
    gj_phi = a["GenJet_phi"][gidx]
    is_b = a["GenJet_hadronFlavour"][gidx] == 5
    gen_mu = (abs(a["GenPart_pdgId"]) == 13) & (a["GenPart_status"] == 1)
    mu_eta, mu_phi = a["GenPart_eta"][gen_mu], a["GenPart_phi"][gen_mu]
    # every (matched jet, gen muon) pair of an event
    jet_eta, m_eta = ak.unzip(ak.cartesian([gj_eta, mu_eta], nested=True))
    jet_phi, m_phi = ak.unzip(ak.cartesian([gj_phi, mu_phi], nested=True))
    dphi = (jet_phi - m_phi + np.pi) % (2 * np.pi) - np.pi
    near = ak.any((jet_eta - m_eta) ** 2 + dphi**2 < 0.4**2, axis=2)
    midx = a["Muon_genPartIdx"]
    muon_matched = (midx >= 0) & (midx < a["nGenPart"])
    return (
        int(ak.sum(matched)),
        int(ak.sum(muon_matched)),
        ak.to_numpy(ak.flatten(gj_pt)),
        int(ak.sum(is_b)),
        int(ak.sum(near)),
    )


def coarse_figures(path: str | os.PathLike, *, step_size: int = 200_000) -> dict[str, float]:
    """Coarse figures of the ``Events`` tree of ``path`` (read in steps of ``step_size``
    events): ``events`` plus the keys of :data:`FIGURE_NAMES`.

    >>> coarse_figures("nanoAOD_2015_CMS_Open_Data_ttbar.root")["matched_jets_per_event"]  # doctest: +SKIP
    1.81
    """
    try:
        tree = uproot.open(path)["Events"]
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"Cannot read an 'Events' tree from {path}: {err}.") from err
    missing = [b for b in FIGURE_BRANCHES if b not in tree]
    if missing:
        raise InputError(f"{path} lacks the branches {', '.join(missing)} needed for the figures.")
    events = n_jets = n_muons = n_b = n_near = 0
    pts = []
    for a in tree.iterate(FIGURE_BRANCHES, step_size=step_size):
        nj, nm, pt, nb, nn = _chunk_figures(a)
        events += len(a)
        n_jets, n_muons, n_b, n_near = n_jets + nj, n_muons + nm, n_b + nb, n_near + nn
        pts.append(pt)
    pt_all = np.concatenate(pts) if pts else np.empty(0)
    return {
        "events": events,
        "matched_jets_per_event": n_jets / max(events, 1),
        "matched_muons_per_event": n_muons / max(events, 1),
        "median_genjet_pt": float(np.median(pt_all)) if len(pt_all) else float("nan"),
        "b_jet_fraction": n_b / max(n_jets, 1),
        "muon_in_jet_fraction": n_near / max(n_jets, 1),
    }
