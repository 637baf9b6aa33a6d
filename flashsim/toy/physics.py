"""Generator-level event model of the toy: hard process, radiation, hadronization.

Everything is generated for a whole block of events at once as flat arrays with an
event index ``ev`` (no Python loop over events or objects). Energies in GeV.

The model, per event:

* **Hard process.** ``ttbar``: a tt system (mass 2 m_t + Gamma tail, rapidity spread,
  transverse momentum balancing the radiation), decayed t -> b W, W -> l nu (e, mu, tau,
  10.8 % each) or q q' (ud, cs). ``wjets``: a leptonically decaying W recoiling against
  the radiation (the real 2015 CMS Open Data sample shipped in ``shared/data``, although
  named "ttbar", is W+jets: it has no top quark; this mode lets the toy be compared with it).
* **Radiation.** ISR/FSR partons (gluons, light, c and b quarks) with a power-law pT.
* **Taus** decay to mu (17.4 %), e (17.8 %) or hadrons, collinear with visible fractions.
* **Heavy flavour.** Every b/c parton makes a B/D hadron (fragmentation fraction z);
  semileptonic decays (b -> mu direct and via c, c -> mu) give non-prompt muons inside
  the jet with a realistic pT relative to the jet axis.
* **GenJets** (anti-kT 0.4 without neutrinos, pT > 10 GeV as in NanoAOD): one per jet
  parton (out-of-cone losses, neutrino losses of semileptonic decays, mass ~ 0.17 pT),
  and one per prompt electron, muon or hadronic tau (leptons are clustered into NanoAOD
  GenJets, which is why real jets often contain a muon with nearly all of their pT).
  Jets are not merged with each other (a simplification).
* **GenPart**: a pruned history like NanoAOD's (see :mod:`flashsim.toy.genpart`):
  incoming partons, t and W (one status-62 copy each), b quarks, W decay products (half
  of the charged leptons with a status-23 hard-process copy before their status-1 final
  copy), taus, B/D hadrons and their muons, with mother indices and statusFlags bits.
* **Pileup** truth per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashsim.kinematics import MUON_MASS, wrap_phi
from flashsim.options import TTBAR
from flashsim.toy.genpart import (
    FLAGS_HADRON,
    FLAGS_HADRON_DECAY_PRODUCT,
    FLAGS_HARD_FIRST,
    FLAGS_HARD_LEPTON_23,
    FLAGS_HARD_LEPTON_FINAL,
    FLAGS_HARD_LEPTON_ONLY_COPY,
    FLAGS_INCOMING,
    FLAGS_RESONANCE,
    FLAGS_TAU_PRODUCT,
    IS_DECAYED_LEPTON_HADRON,
    GenPartBuilder,
    sort_within_events,
)
from flashsim.toy.kinematics import (
    FourVector,
    breit_wigner,
    from_mt_y_phi,
    to_pt_eta_phi_m,
    two_body_decay,
)
from flashsim.toy.processes import Process

Table = dict[str, np.ndarray]
"""A set of particles or jets: one array per field (``ev``, ``pt``, ``eta``, ...)."""

# --- constants -------------------------------------------------------------------------
M_TOP, W_TOP = 172.5, 1.4
M_W, W_W = 80.4, 2.1
M_B, M_C, M_TAU, M_E = 4.8, 1.5, 1.777, 0.000511
# 5 digits: the precision the toy was tuned (and its outputs fixed) with
M_MU = round(MUON_MASS, 5)
GENJET_PT_MIN = 10.0  # NanoAOD stores GenJets above 10 GeV

# kinds of truth jets (what made the GenJet); reco uses them for flavour-dependent response
KIND_GLUON, KIND_LIGHT, KIND_C, KIND_B, KIND_ELECTRON, KIND_MUON, KIND_TAU_H = range(7)

# origins of gen muons (status 1)
ORIGIN_W, ORIGIN_TAU, ORIGIN_B, ORIGIN_B_TO_C, ORIGIN_C = range(5)


@dataclass
class Truth:
    """Generator-level truth of a block of events (flat arrays, event index ``ev``).

    ``jets``: every truth jet, stored as a GenJet or not (pT below threshold), with
    fields ev, pt, eta, phi, mass, kind, hadron_flavour, parton_flavour, mu_pt (pT of a
    muon inside, 0 if none), semileptonic (bool), genjet_idx (index in the event's
    GenJet collection, -1 if not stored).
    ``genjets``/``genpart``: output collections (flat, sorted) with their ``*_counts``.
    ``muons``: status-1 gen muons with ev, pt, eta, phi, pdg, origin, genpart_idx,
    activity (pT of the rest of the jet around a non-prompt muon), ptrel.
    ``pileup``: per-event Pileup_* arrays.
    """

    n_events: int
    jets: dict[str, np.ndarray]
    genjets: dict[str, np.ndarray]
    genjet_counts: np.ndarray
    genpart: dict[str, np.ndarray]
    genpart_counts: np.ndarray
    muons: dict[str, np.ndarray]
    pileup: dict[str, np.ndarray]


def _folded_eta(rng: np.random.Generator, n: int, sigma: float, limit: float) -> np.ndarray:
    eta = rng.normal(0.0, sigma, n)
    out = np.abs(eta) > limit
    eta[out] = rng.uniform(-limit, limit, int(out.sum()))
    return eta


def _sum_per_event(ev: np.ndarray, values: np.ndarray, n_events: int) -> np.ndarray:
    return np.bincount(ev, weights=values, minlength=n_events)


# --- pileup ----------------------------------------------------------------------------
def pileup(rng: np.random.Generator, n: int, mean: float) -> dict[str, np.ndarray]:
    """Pileup truth: nTrueInt (integer-valued, Gamma-shaped around ``mean``), nPU
    (Poisson around it), in-time densities and out-of-time sums (with a few zeros, as
    in samples without out-of-time information)."""
    n_true = np.maximum(np.rint(rng.gamma(7.0, mean / 7.0, n)), 1.0)
    n_pu = rng.poisson(n_true)
    pudensity = rng.poisson(0.03 * n_pu).astype(np.float64)
    gpudensity = rng.poisson(0.28 * n_pu) / 34.0
    sum_eoot = rng.poisson(12.0 * n_true)
    sum_loot = rng.poisson(3.0 * n_true)
    sum_eoot[rng.random(n) < 0.01] = 0  # ~1 % of events without out-of-time information
    sum_loot[rng.random(n) < 0.02] = 0
    return {
        "Pileup_nTrueInt": n_true,
        "Pileup_nPU": n_pu,
        "Pileup_pudensity": pudensity,
        "Pileup_gpudensity": gpudensity,
        "Pileup_sumEOOT": sum_eoot,
        "Pileup_sumLOOT": sum_loot,
    }


# --- partons ---------------------------------------------------------------------------
def _radiation(rng: np.random.Generator, n: int, proc: Process) -> dict[str, np.ndarray]:
    counts = rng.poisson(proc.radiation_mean, n)
    ev = np.repeat(np.arange(n, dtype=np.int64), counts)
    m = len(ev)
    u = rng.random(m)
    pt = proc.radiation_pt_min + proc.radiation_pt_scale * (
        (1.0 - u) ** (-1.0 / proc.radiation_pt_alpha) - 1.0
    )
    flavour = rng.choice(np.array([21, 1, 2, 3, 4, 5]), size=m, p=proc.radiation_flavours)
    sign = np.where(rng.random(m) < 0.5, 1, -1)
    pdg = np.where(flavour == 21, 21, flavour * sign)
    return {
        "ev": ev,
        "pt": pt,
        "eta": _folded_eta(rng, m, 2.2, 5.0),
        "phi": rng.uniform(-np.pi, np.pi, m),
        "pdg": pdg,
    }


def _recoil(rng: np.random.Generator, rad: Table, n: int, sigma: float):
    """Transverse momentum of the hard system balancing the radiation (plus intrinsic kT)."""
    px = -_sum_per_event(rad["ev"], rad["pt"] * np.cos(rad["phi"]), n) + rng.normal(0, sigma, n)
    py = -_sum_per_event(rad["ev"], rad["pt"] * np.sin(rad["phi"]), n) + rng.normal(0, sigma, n)
    return np.hypot(px, py), np.arctan2(py, px)


_W_MODES = np.array([[-11, 12], [-13, 14], [-15, 16], [2, -1], [4, -3]])  # for W+
_W_MODE_MASSES = np.array([[M_E, 0.0], [M_MU, 0.0], [M_TAU, 0.0], [0.0, 0.0], [M_C, 0.0]])
_W_BR_ALL = np.array([0.108, 0.108, 0.108, 0.338, 0.338])
_W_BR_LEPTONIC = np.array([1.0, 1.0, 1.0, 0.0, 0.0]) / 3.0


def _decay_w(rng: np.random.Generator, w_p4: FourVector, charge: np.ndarray, branching: np.ndarray):
    """W -> f f'; returns per-W daughter (pdg, p4) pairs as arrays of shape (2, n_w)."""
    n = len(charge)
    mode = rng.choice(len(branching), size=n, p=branching)
    pdg = _W_MODES[mode].T * charge  # W- gives the conjugates
    masses = _W_MODE_MASSES[mode].T
    d1, d2 = two_body_decay(rng, w_p4, masses[0], masses[1])
    return pdg, (d1, d2), masses


@dataclass
class _HardProcess:
    builder: GenPartBuilder
    jet_partons: dict[str, np.ndarray]  # b quarks and W quarks: ev, pt, eta, phi, pdg, uid
    leptons: dict[str, np.ndarray]  # W leptons (final copies): ev, pt, eta, phi, pdg, uid


def _incoming(rng: np.random.Generator, builder: GenPartBuilder, n: int):
    ev = np.arange(n, dtype=np.int64)
    choices = np.array([21, 2, 1, -2, -1, 3, -3])
    probs = np.array([0.5, 0.15, 0.1, 0.08, 0.08, 0.05, 0.04])
    uids = []
    for side in (1.0, -1.0):  # two beams: two groups, not a loop over events
        eta = side * (2.2e4 + rng.uniform(0, 1.5e3, n))
        zeros = np.zeros(n)
        uids.append(
            builder.add(
                ev,
                0,
                (zeros, eta, zeros, 0.0),
                rng.choice(choices, n, p=probs),
                21,
                FLAGS_INCOMING,
                -1,
            )
        )
    return uids[0]


def _add_resonance(
    builder: GenPartBuilder,
    ev: np.ndarray,
    slot: int,
    p4: FourVector,
    pdg: np.ndarray | int,
    mother: np.ndarray | int,
) -> np.ndarray:
    """A top or W: one status-62 entry (NanoAOD also keeps the status-22 first copy; the
    toy saves the space, its kinematics would be the same)."""
    pt, eta, phi, m = to_pt_eta_phi_m(p4)
    return builder.add(ev, slot, (pt, eta, phi, m), pdg, 62, FLAGS_RESONANCE, mother)


def _w_daughters(
    rng: np.random.Generator,
    builder: GenPartBuilder,
    ev: np.ndarray,
    w_uid: np.ndarray,
    pdg: np.ndarray,
    p4s: tuple[FourVector, FourVector],
    masses: np.ndarray,
    slot: int,
):
    """GenPart entries of W decay products; returns (jet partons, final leptons)."""
    parts_q, parts_l = [], []
    for k in range(2):  # the two daughters of every W, as two vectorized groups
        pt, eta, phi, _ = to_pt_eta_phi_m(p4s[k])
        kin, pdg_k, mass_k = (pt, eta, phi), pdg[k], masses[k]
        apdg = np.abs(pdg_k)
        is_q = apdg < 6
        is_nu = np.isin(apdg, (12, 14, 16))
        is_l = ~is_q & ~is_nu
        # quarks: status-23 hard-process entries, they become jets
        q = np.nonzero(is_q)[0]
        uq = _status_23(builder, q, ev, slot, kin, mass_k, pdg_k, FLAGS_HARD_FIRST, w_uid)
        parts_q.append(
            {"ev": ev[q], "pt": pt[q], "eta": eta[q], "phi": phi[q], "pdg": pdg_k[q], "uid": uq}
        )
        # neutrinos: a single status-1 copy
        v = np.nonzero(is_nu)[0]
        builder.add(
            ev[v],
            slot,
            (pt[v], eta[v], phi[v], 0.0),
            pdg_k[v],
            1,
            FLAGS_HARD_LEPTON_ONLY_COPY,
            w_uid[v],
        )
        lep = np.nonzero(is_l)[0]
        parts_l.append(
            _w_leptons(rng, builder, ev[lep], w_uid[lep], pdg_k[lep], kin, lep, mass_k, slot)
        )
    return _cat(parts_q), _cat(parts_l)


def _status_23(
    builder: GenPartBuilder,
    i: np.ndarray,
    ev: np.ndarray,
    slot: int,
    kin: tuple[np.ndarray, np.ndarray, np.ndarray],
    mass: np.ndarray,
    pdg: np.ndarray,
    flags: int,
    parent: np.ndarray,
) -> np.ndarray:
    """Status-23 (hard-process) GenPart entries of the particles ``i``; their uids."""
    pt, eta, phi = kin
    return builder.add(ev[i], slot, (pt[i], eta[i], phi[i], mass[i]), pdg[i], 23, flags, parent[i])


def _w_leptons(
    rng: np.random.Generator,
    builder: GenPartBuilder,
    ev: np.ndarray,
    w_uid: np.ndarray,
    pdg: np.ndarray,
    kin: tuple[np.ndarray, np.ndarray, np.ndarray],
    lep: np.ndarray,
    mass: np.ndarray,
    slot: int,
) -> dict[str, np.ndarray]:
    """GenPart entries of the charged leptons ``lep`` of W decays (``kin``: pt, eta, phi of
    all daughters); half of them with a status-23 hard-process copy before FSR. Returns
    the final leptons."""
    pt, eta, phi = (x[lep] for x in kin)
    mass = mass[lep]
    two = rng.random(len(lep)) < 0.5
    l2, l1 = np.nonzero(two)[0], np.nonzero(~two)[0]
    u23 = _status_23(builder, l2, ev, slot, (pt, eta, phi), mass, pdg, FLAGS_HARD_LEPTON_23, w_uid)
    fsr = 1.0 - np.minimum(rng.exponential(0.03, len(l2)), 0.5)  # photon radiation
    is_tau2 = np.abs(pdg[l2]) == 15
    is_tau1 = np.abs(pdg[l1]) == 15
    uf2 = builder.add(
        ev[l2],
        slot + 1,
        (pt[l2] * fsr, eta[l2], phi[l2], mass[l2]),
        pdg[l2],
        np.where(is_tau2, 2, 1),
        FLAGS_HARD_LEPTON_FINAL | np.where(is_tau2, IS_DECAYED_LEPTON_HADRON, 0),
        u23,
    )
    uf1 = builder.add(
        ev[l1],
        slot + 1,
        (pt[l1], eta[l1], phi[l1], mass[l1]),
        pdg[l1],
        np.where(is_tau1, 2, 1),
        FLAGS_HARD_LEPTON_ONLY_COPY | np.where(is_tau1, IS_DECAYED_LEPTON_HADRON, 0),
        w_uid[l1],
    )
    return {
        "ev": np.concatenate([ev[l2], ev[l1]]),
        "pt": np.concatenate([pt[l2] * fsr, pt[l1]]),
        "eta": np.concatenate([eta[l2], eta[l1]]),
        "phi": np.concatenate([phi[l2], phi[l1]]),
        "pdg": np.concatenate([pdg[l2], pdg[l1]]),
        "uid": np.concatenate([uf2, uf1]),
    }


def _cat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def _ttbar(rng: np.random.Generator, n: int, rad: Table) -> _HardProcess:
    b = GenPartBuilder()
    ev = np.arange(n, dtype=np.int64)
    inc = _incoming(rng, b, n)
    pt_tt, phi_tt = _recoil(rng, rad, n, 5.0)
    m_t1 = breit_wigner(rng, n, M_TOP, W_TOP, 8.0)
    m_t2 = breit_wigner(rng, n, M_TOP, W_TOP, 8.0)
    m_tt = m_t1 + m_t2 + 1.0 + rng.gamma(2.0, 70.0, n)
    tt = from_mt_y_phi(m_tt, pt_tt, rng.normal(0.0, 1.0, n), phi_tt)
    top, atop = two_body_decay(rng, tt, m_t1, m_t2)
    jets, leptons = [], []
    for sign, t_p4, slot in ((1, top, 10), (-1, atop, 30)):  # t and tbar: two groups
        t_uid = _add_resonance(b, ev, slot, t_p4, 6 * sign, inc)
        m_w = breit_wigner(rng, n, M_W, W_W, 15.0)
        bq, w = two_body_decay(rng, t_p4, M_B, m_w)
        bpt, beta, bphi, _ = to_pt_eta_phi_m(bq)
        b_uid = b.add(ev, slot + 2, (bpt, beta, bphi, M_B), 5 * sign, 23, FLAGS_HARD_FIRST, t_uid)
        jets.append(
            {
                "ev": ev,
                "pt": bpt,
                "eta": beta,
                "phi": bphi,
                "pdg": np.full(n, 5 * sign),
                "uid": b_uid,
            }
        )
        w_uid = _add_resonance(b, ev, slot + 3, w, 24 * sign, t_uid)
        pdg, p4s, masses = _decay_w(rng, w, np.full(n, sign), _W_BR_ALL)
        q, lep = _w_daughters(rng, b, ev, w_uid, pdg, p4s, masses, slot + 5)
        jets.append(q)
        leptons.append(lep)
    return _HardProcess(b, _cat(jets), _cat(leptons))


def _wjets(rng: np.random.Generator, n: int, rad: Table) -> _HardProcess:
    b = GenPartBuilder()
    ev = np.arange(n, dtype=np.int64)
    inc = _incoming(rng, b, n)
    pt_w, phi_w = _recoil(rng, rad, n, 4.0)
    m_w = breit_wigner(rng, n, M_W, W_W, 15.0)
    w = from_mt_y_phi(m_w, pt_w, rng.normal(0.0, 2.6, n), phi_w)
    charge = np.where(rng.random(n) < 0.58, 1, -1)  # W+ / W- asymmetry of pp collisions
    w_uid = _add_resonance(b, ev, 10, w, 24 * charge, inc)
    pdg, p4s, masses = _decay_w(rng, w, charge, _W_BR_LEPTONIC)
    q, lep = _w_daughters(rng, b, ev, w_uid, pdg, p4s, masses, 15)
    return _HardProcess(b, q, lep)


# --- taus and heavy flavour ---------------------------------------------------------------
def _tau_decays(rng: np.random.Generator, builder: GenPartBuilder, taus: Table):
    """Collinear tau decays: returns (light leptons from taus, visible hadronic taus)."""
    m = len(taus["ev"])
    u = rng.random(m)
    to_mu, to_e = u < 0.174, (u >= 0.174) & (u < 0.352)
    had = ~(to_mu | to_e)
    lep = np.nonzero(to_mu | to_e)[0]
    # lepton energy fraction in tau -> l nu nu (mean 0.35, peaked at 0)
    z = rng.beta(1.0, 1.85, len(lep))
    sgn = np.sign(taus["pdg"][lep])  # tau- (15) -> mu- (13)
    lpdg = np.where(to_mu[lep], 13, 11) * sgn
    ev, pt = taus["ev"][lep], np.maximum(taus["pt"][lep] * z, 0.2)
    eta = taus["eta"][lep] + rng.normal(0, 0.01, len(lep))
    phi = wrap_phi(taus["phi"][lep] + rng.normal(0, 0.01, len(lep)))
    mass = np.where(np.abs(lpdg) == 13, M_MU, M_E)
    uid = builder.add(ev, 50, (pt, eta, phi, mass), lpdg, 1, FLAGS_TAU_PRODUCT, taus["uid"][lep])
    light = {"ev": ev, "pt": pt, "eta": eta, "phi": phi, "pdg": lpdg, "uid": uid}
    h = np.nonzero(had)[0]
    zh = rng.beta(2.5, 1.5, len(h))
    visible = {
        "ev": taus["ev"][h],
        "pt": taus["pt"][h] * zh,
        "eta": taus["eta"][h],
        "phi": taus["phi"][h],
    }
    return light, visible


_B_HADRONS = np.array([511, 521, 531, 5122])
_C_HADRONS = np.array([421, 411, 431, 4122])


def _heavy_flavour(rng: np.random.Generator, builder: GenPartBuilder, jp: Table):
    """B/D hadrons of b/c jet partons and their semileptonic muons.

    Returns the per-parton neutrino loss (GeV), muon pT inside (0 if none), and the
    table of non-prompt muons (with the index of their parent parton in ``jp``).
    """
    n = len(jp["ev"])
    apdg = np.abs(jp["pdg"])
    sq = np.sign(jp["pdg"])
    hf = np.nonzero((apdg == 4) | (apdg == 5))[0]
    is_b = apdg[hf] == 5
    m = len(hf)
    z = np.where(is_b, rng.beta(12.0, 2.5, m), rng.beta(6.0, 3.0, m))
    h_pt = jp["pt"][hf] * z
    h_eta = jp["eta"][hf] + rng.normal(0, 0.01, m)
    h_phi = wrap_phi(jp["phi"][hf] + rng.normal(0, 0.01, m))
    b_code = _B_HADRONS[rng.choice(4, size=m, p=[0.4, 0.4, 0.1, 0.1])]
    c_code = _C_HADRONS[rng.choice(4, size=m, p=[0.55, 0.25, 0.1, 0.1])]
    # a b quark makes anti-B mesons (negative codes) or a Lambda_b (positive); c makes D, Lambda_c
    b_sign = np.where(b_code == 5122, 1, -1)
    h_pdg = np.where(is_b, b_sign * b_code, c_code) * sq[hf]
    h_mass = np.where(is_b, 5.28, 1.87)
    h_uid = builder.add(jp["ev"][hf], 60, (h_pt, h_eta, h_phi, h_mass), h_pdg, 2, FLAGS_HADRON, -1)

    u = rng.random(m)
    direct_b = is_b & (u < 0.105)
    cascade_b = is_b & (u >= 0.105) & (u < 0.185)
    c_to_mu = ~is_b & (u < 0.08)
    has_mu = direct_b | cascade_b | c_to_mu
    k = np.nonzero(has_mu)[0]
    x = np.where(direct_b[k], rng.beta(2.0, 4.0, len(k)), rng.beta(1.5, 5.0, len(k)))
    mu_pt = np.maximum(h_pt[k] * x, 0.1)
    ptrel = np.where(direct_b[k], rng.gamma(2.5, 0.45, len(k)), rng.gamma(2.0, 0.3, len(k)))
    dr = np.minimum(ptrel / mu_pt, 1.0)
    ang = rng.uniform(-np.pi, np.pi, len(k))
    mu_eta = h_eta[k] + dr * np.cos(ang)
    mu_phi = wrap_phi(h_phi[k] + dr * np.sin(ang))
    # b -> c mu- nu (mu- is +13); b -> c -> s mu+; c -> s mu+
    mu_pdg = np.where(direct_b[k], 13, -13) * sq[hf][k]
    ev = jp["ev"][hf][k]
    mu_uid = builder.add(
        ev, 70, (mu_pt, mu_eta, mu_phi, M_MU), mu_pdg, 1, FLAGS_HADRON_DECAY_PRODUCT, h_uid[k]
    )
    origin = np.where(direct_b[k], ORIGIN_B, np.where(cascade_b[k], ORIGIN_B_TO_C, ORIGIN_C))

    nu_loss = np.zeros(n)
    mu_inside = np.zeros(n)
    semilep = np.zeros(n, dtype=bool)
    parton = hf[k]
    nu_loss[parton] = mu_pt * rng.uniform(0.5, 1.2, len(k))
    mu_inside[parton] = mu_pt
    semilep[parton] = True
    muons = {
        "ev": ev,
        "pt": mu_pt,
        "eta": mu_eta,
        "phi": mu_phi,
        "pdg": mu_pdg,
        "uid": mu_uid,
        "origin": origin,
        "parton": parton,
        "ptrel": ptrel,
    }
    return nu_loss, mu_inside, semilep, muons


# --- the block --------------------------------------------------------------------------
def _prompt_leptons(
    rng: np.random.Generator, builder: GenPartBuilder, leptons: Table
) -> tuple[dict, np.ndarray, dict]:
    """Prompt leptons from W: taus decay, electrons and muons are final. Returns the final
    light leptons (from W and tau decays), their origin and the visible hadronic taus."""
    is_tau = np.abs(leptons["pdg"]) == 15
    taus = {k: v[is_tau] for k, v in leptons.items()}
    light_lep = {k: v[~is_tau] for k, v in leptons.items()}
    tau_lep, tau_h = _tau_decays(rng, builder, taus)
    all_lep = _cat([light_lep, tau_lep])
    lep_origin = np.concatenate(
        [np.full(len(light_lep["ev"]), ORIGIN_W), np.full(len(tau_lep["ev"]), ORIGIN_TAU)]
    )
    return all_lep, lep_origin, tau_h


def _hadronize(
    rng: np.random.Generator, jp: dict, nu_loss: np.ndarray, n_hard: int
) -> dict[str, np.ndarray]:
    """Truth jets of the jet partons ``jp`` (the first ``n_hard`` from the hard process)."""
    n_jp = len(jp["ev"])
    apdg = np.abs(jp["pdg"])
    resp = np.clip(rng.normal(0.96, 0.08, n_jp), 0.3, 1.3)
    j_pt = np.maximum(jp["pt"] * resp - nu_loss, 0.3 * jp["pt"])
    j_eta = jp["eta"] + rng.normal(0, 0.02, n_jp)
    j_phi = wrap_phi(jp["phi"] + rng.normal(0, 0.02, n_jp))
    # m/pT ~ 0.18 at 20 GeV falling to ~0.13 at 100 GeV; b jets heavier
    j_mass = j_pt * rng.gamma(np.where(apdg == 5, 4.0, 3.0), 0.04 + 0.4 / np.maximum(j_pt, 1.0))
    j_kind = np.select([apdg == 21, apdg == 5, apdg == 4], [KIND_GLUON, KIND_B, KIND_C], KIND_LIGHT)
    j_hflav = np.select([apdg == 5, apdg == 4], [5, 4], 0)
    # some jets have no parton ghost-matched in NanoAOD's flavour algorithm: flavour 0
    no_parton = rng.random(n_jp) < np.where(np.arange(n_jp) < n_hard, 0.02, 0.12)
    j_pflav = np.where(no_parton & (j_hflav == 0), 0, jp["pdg"])
    return {
        "pt": j_pt,
        "eta": j_eta,
        "phi": j_phi,
        "mass": j_mass,
        "kind": j_kind,
        "hadron_flavour": j_hflav,
        "parton_flavour": j_pflav,
    }


def _truth_jets(
    rng: np.random.Generator,
    jp: Table,
    pj: Table,
    all_lep: Table,
    tau_h: Table,
    mu_inside: np.ndarray,
    semilep: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every truth jet: parton jets ``pj`` (of partons ``jp``), then lepton jets (prompt
    e / mu from W or tau), then visible hadronic taus (see :class:`Truth`)."""
    a_lep = np.abs(all_lep["pdg"])
    m_l = len(a_lep)
    # 40 % of lepton jets are the lepton alone (mass: the lepton mass, never 0, which would
    # make mass(Jet) / mass(GenJet) infinite); the others hold FSR photons and underlying
    # event (energy x at an angle theta: m ~ theta * sqrt(pT * x))
    alone = rng.random(m_l) < 0.4
    extra = np.where(alone, 0.0, rng.exponential(2.0, m_l))
    l_pt = all_lep["pt"] + extra
    theta = rng.uniform(0.05, 0.4, m_l)
    l_mass = np.where(a_lep == 13, M_MU, M_E) + theta * np.sqrt(all_lep["pt"] * extra)
    m_h = len(tau_h["ev"])
    return {
        "ev": np.concatenate([jp["ev"], all_lep["ev"], tau_h["ev"]]),
        "pt": np.concatenate([pj["pt"], l_pt, tau_h["pt"] + rng.exponential(1.2, m_h)]),
        "eta": np.concatenate([pj["eta"], all_lep["eta"] + rng.normal(0, 0.01, m_l), tau_h["eta"]]),
        "phi": np.concatenate(
            [pj["phi"], wrap_phi(all_lep["phi"] + rng.normal(0, 0.01, m_l)), tau_h["phi"]]
        ),
        "mass": np.concatenate([pj["mass"], l_mass, rng.uniform(0.14, 1.6, m_h)]),
        "kind": np.concatenate(
            [pj["kind"], np.where(a_lep == 13, KIND_MUON, KIND_ELECTRON), np.full(m_h, KIND_TAU_H)]
        ),
        "hadron_flavour": np.concatenate([pj["hadron_flavour"], np.zeros(m_l + m_h, np.int64)]),
        "parton_flavour": np.concatenate([pj["parton_flavour"], np.zeros(m_l + m_h, np.int64)]),
        "mu_pt": np.concatenate(
            [mu_inside, np.where(a_lep == 13, all_lep["pt"], 0.0), np.zeros(m_h)]
        ),
        "semileptonic": np.concatenate([semilep, np.zeros(m_l + m_h, bool)]),
    }


def _genjets(jets: dict[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """GenJets: the truth jets above threshold, sorted by decreasing pT inside each event;
    sets ``jets["genjet_idx"]``. Returns the GenJet fields and counts."""
    stored = np.nonzero(jets["pt"] >= GENJET_PT_MIN)[0]
    perm, gj_counts, local = sort_within_events(jets["ev"][stored], -jets["pt"][stored], n)
    order = stored[perm]
    jets["genjet_idx"] = np.full(len(jets["ev"]), -1, dtype=np.int64)
    jets["genjet_idx"][order] = local
    genjets = {
        "pt": jets["pt"][order],
        "eta": jets["eta"][order],
        "phi": jets["phi"][order],
        "mass": jets["mass"][order],
        "partonFlavour": jets["parton_flavour"][order],
        "hadronFlavour": jets["hadron_flavour"][order],
    }
    return genjets, gj_counts


def _gen_muons(
    all_lep: Table,
    lep_origin: np.ndarray,
    hf_muons: Table,
    local_of_uid: np.ndarray,
    j_offset: int,
    jets: Table,
) -> dict:
    """Status-1 gen muons with what reco needs about them (see :class:`Truth`); lepton
    jets start at ``j_offset`` in ``jets``."""
    lep_is_mu = np.abs(all_lep["pdg"]) == 13
    n_lep_mu = int(lep_is_mu.sum())
    muons = {
        "ev": np.concatenate([all_lep["ev"][lep_is_mu], hf_muons["ev"]]),
        "pt": np.concatenate([all_lep["pt"][lep_is_mu], hf_muons["pt"]]),
        "eta": np.concatenate([all_lep["eta"][lep_is_mu], hf_muons["eta"]]),
        "phi": np.concatenate([all_lep["phi"][lep_is_mu], hf_muons["phi"]]),
        "pdg": np.concatenate([all_lep["pdg"][lep_is_mu], hf_muons["pdg"]]),
        "origin": np.concatenate([lep_origin[lep_is_mu], hf_muons["origin"]]),
        "genpart_idx": local_of_uid[np.concatenate([all_lep["uid"][lep_is_mu], hf_muons["uid"]])],
        "jet": np.concatenate([j_offset + np.nonzero(lep_is_mu)[0], hf_muons["parton"]]),
        "ptrel": np.concatenate([np.zeros(n_lep_mu), hf_muons["ptrel"]]),
    }
    # activity around the muon: the rest of its jet (non-prompt); prompt muons are isolated
    muons["activity"] = np.where(
        muons["origin"] >= ORIGIN_B, np.maximum(jets["pt"][muons["jet"]] - muons["pt"], 0.0), 0.0
    )
    return muons


def generate_truth(rng: np.random.Generator, n: int, proc: Process) -> Truth:
    """Generator-level truth of ``n`` events of process ``proc`` (see module docstring)."""
    pu = pileup(rng, n, proc.pileup_mean)
    rad = _radiation(rng, n, proc)
    hard = _ttbar(rng, n, rad) if proc.name == TTBAR else _wjets(rng, n, rad)
    builder = hard.builder
    all_lep, lep_origin, tau_h = _prompt_leptons(rng, builder, hard.leptons)

    # jet partons: hard quarks and radiation
    fields = ("ev", "pt", "eta", "phi", "pdg")
    jp = _cat([{k: hard.jet_partons[k] for k in fields}, {k: rad[k] for k in fields}])
    nu_loss, mu_inside, semilep, hf_muons = _heavy_flavour(rng, builder, jp)
    parton_jets = _hadronize(rng, jp, nu_loss, len(hard.jet_partons["ev"]))
    jets = _truth_jets(rng, jp, parton_jets, all_lep, tau_h, mu_inside, semilep)
    genjets, gj_counts = _genjets(jets, n)
    genpart, gp_counts, local_of_uid = builder.build(n)
    muons = _gen_muons(all_lep, lep_origin, hf_muons, local_of_uid, len(jp["ev"]), jets)
    return Truth(n, jets, genjets, gj_counts, genpart, gp_counts, muons, pu)
