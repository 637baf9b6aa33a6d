"""Detector response of the toy: reconstructed ``Jet`` and ``Muon`` from the truth.

Vectorized over all objects of a block. Units: GeV, cm, radians.

Jets: every truth jet (stored GenJet or not) within |eta| < 4.7 is reconstructed with
efficiency ~97 %, pT response around 1 with a pT- and eta-dependent Gaussian resolution
plus non-Gaussian tails and a pileup offset; pileup jets (no generator partner) are added
per event in proportion to nPU; NanoAOD keeps jets above 15 GeV. Truth jets below the
GenJet threshold that pass 15 GeV after smearing give ``Jet_genJetIdx == -1`` as in real
files. Taggers depend on the hadron flavour (b/c/light), fail outside the tracker
(|eta| > 2.5: CSVV2 = -10, DeepCSV = -1, qgl = -1), and DeepC/DeepFlavC equal
CvB*B/(1-CvB) exactly.

Muons: status-1 gen muons with |eta| < 2.4 and pT above ~3 GeV, efficiency rising with
pT; prompt muons (from W) are isolated with small impact parameters, muons from b/c
decays are displaced and sit inside jets; fakes (decays in flight, punch-through) have
``Muon_genPartIdx == -1``.
"""

from __future__ import annotations

import numpy as np

from flashsim.kinematics import wrap_phi
from flashsim.toy.genpart import sort_within_events
from flashsim.toy.physics import (
    KIND_B,
    KIND_ELECTRON,
    KIND_GLUON,
    KIND_MUON,
    KIND_TAU_H,
    M_MU,
    ORIGIN_B,
    ORIGIN_B_TO_C,
    ORIGIN_C,
    ORIGIN_TAU,
    ORIGIN_W,
    Truth,
)

JET_PT_MIN = 15.0  # NanoAOD Jet threshold
JET_ETA_MAX = 4.7
TRACKER_ETA = 2.5
MUON_PT_MIN = 3.0
MUON_ETA_MAX = 2.4
KIND_PILEUP = 7


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --- jets --------------------------------------------------------------------------------
# DeepJet-like scores per hadron flavour: logit(B) ~ N(mean, sd) and the c share of the
# rest, logit(C / (1 - B)) ~ N(mean, sd) (logit-normal: the peaked shapes of NN outputs).
# Rows are indexed by hadron flavour 0..5 (1-3 unused: light).
_LIGHT_TAG = (-3.6, 1.1, -2.5, 0.6)  # (B mean, B sd, C-share mean, C-share sd)
_DEEPFLAV = np.array([_LIGHT_TAG] * 4 + [(-2.0, 1.3, -0.6, 1.2), (2.2, 1.6, -0.5, 1.2)])


def _normal_by_class(
    rng: np.random.Generator, classes: np.ndarray, mean: np.ndarray, sd: np.ndarray
) -> np.ndarray:
    """One N(mean[c], sd[c]) draw per object of class ``c`` (table lookups, no masks)."""
    return np.take(mean, classes) + np.take(sd, classes) * rng.standard_normal(len(classes))


def _taggers(
    rng: np.random.Generator, hflav: np.ndarray, no_tracks: np.ndarray
) -> dict[str, np.ndarray]:
    """b/c-tag scores of a set of jets (dict of float arrays)."""
    n = len(hflav)
    cls = np.where(no_tracks, 0, hflav)  # no tracks: no flavour information
    lb = _normal_by_class(rng, cls, _DEEPFLAV[:, 0], _DEEPFLAV[:, 1])
    lc = _normal_by_class(rng, cls, _DEEPFLAV[:, 2], _DEEPFLAV[:, 3])
    # DeepCSV: a noisier tagger correlated with DeepJet
    lb_csv = 0.85 * lb - 0.2 + rng.normal(0, 0.7, n)
    lc_csv = 0.85 * lc + rng.normal(0, 0.6, n)

    def scores(logit_b: np.ndarray, logit_share: np.ndarray) -> tuple[np.ndarray, ...]:
        b = _sigmoid(logit_b)
        c = (1.0 - b) * _sigmoid(logit_share)
        cvb = c / (c + b)
        # C written back from the ratio, so C == CvB * B / (1 - CvB) holds in the file
        c = cvb * b / np.maximum(1.0 - cvb, 1e-12)
        return b, c, cvb, c / np.maximum(1.0 - b, 1e-12)  # B, C, CvB, CvL = C / (C + L)

    fb, fc, fcvb, fcvl = scores(lb, lc)
    db, dc, dcvb, dcvl = scores(lb_csv, lc_csv)
    csv = _sigmoid(0.8 * lb_csv + 0.9 + rng.normal(0, 0.7, n))
    cmva = 2.0 * _sigmoid(1.1 * lb_csv + 1.2 + rng.normal(0, 0.6, n)) - 1.0
    # no usable tracks: the defaults real NanoAOD writes
    csv[no_tracks] = -10.0
    for arr in (db, dc, dcvb, dcvl):
        arr[no_tracks] = -1.0
    cmva[no_tracks] = -0.855 + rng.normal(0, 0.003, int(no_tracks.sum()))
    return {
        "btagCMVA": cmva,
        "btagCSVV2": csv,
        "btagDeepB": db,
        "btagDeepC": dc,
        "btagDeepCvB": dcvb,
        "btagDeepCvL": dcvl,
        "btagDeepFlavB": fb,
        "btagDeepFlavC": fc,
        "btagDeepFlavCvB": fcvb,
        "btagDeepFlavCvL": fcvl,
    }


def _pileup_jets(rng: np.random.Generator, truth: Truth) -> dict[str, np.ndarray]:
    n_pu = truth.pileup["Pileup_nPU"]
    counts = rng.poisson(0.1 * n_pu)
    ev = np.repeat(np.arange(truth.n_events, dtype=np.int64), counts)
    m = len(ev)
    pt = 8.0 + rng.exponential(6.0, m)
    eta = rng.normal(0, 2.6, m)
    return {
        "ev": ev,
        "pt": pt,
        "eta": eta,
        "phi": rng.uniform(-np.pi, np.pi, m),
        "mass": pt * rng.gamma(3.0, 0.06, m),
        "kind": np.full(m, KIND_PILEUP),
        "hadron_flavour": np.zeros(m, np.int64),
        "parton_flavour": np.zeros(m, np.int64),
        "mu_pt": np.zeros(m),
        "semileptonic": np.zeros(m, bool),
        "genjet_idx": np.full(m, -1, np.int64),
    }


# jet classes for the id and qgl tables below
_HARD, _FORWARD, _PILEUP, _MUON, _ELECTRON, _TAU, _GLUON, _LEPTON = range(8)
_PU_ID_VALUES = np.array([0, 4, 6, 7])  # pileup id: loose 4, medium 6, tight 7
_PU_ID_PROBS = np.zeros((8, 4))
_PU_ID_PROBS[_HARD] = (0.06, 0.10, 0.10, 0.74)
_PU_ID_PROBS[_FORWARD] = (0.25, 0.30, 0.15, 0.30)
_PU_ID_PROBS[_PILEUP] = (0.55, 0.30, 0.10, 0.05)
_JET_ID_VALUES = np.array([0, 2, 6])  # jet id: tight 2, tightLepVeto 4 (-> 6)
_JET_ID_PROBS = np.zeros((8, 3))
_JET_ID_PROBS[_HARD] = (0.02, 0.03, 0.95)
_JET_ID_PROBS[_FORWARD] = (0.10, 0.10, 0.80)
_JET_ID_PROBS[_PILEUP] = (0.10, 0.05, 0.85)
_JET_ID_PROBS[_MUON] = (0.30, 0.70, 0.00)  # lepton jets fail the lepton veto
_JET_ID_PROBS[_ELECTRON] = (0.50, 0.50, 0.00)
_JET_ID_PROBS[_TAU] = (0.02, 0.20, 0.78)
# logit(qgl) ~ N(mean, sd) per class: quark-like jets high, gluon-like low
_QGL_MEAN = np.zeros(8)
_QGL_SD = np.ones(8)
_QGL_MEAN[[_LEPTON, _GLUON, _PILEUP, _HARD]] = (3.0, -0.6, -0.3, 1.5)
_QGL_SD[[_LEPTON, _GLUON, _PILEUP, _HARD]] = (1.2, 1.3, 1.5, 1.5)


def _categorical(
    rng: np.random.Generator, classes: np.ndarray, values: np.ndarray, probs: np.ndarray
) -> np.ndarray:
    """One draw per object among ``values`` with probabilities ``probs[class]`` (inverse
    CDF on a per-class table, no masks)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(classes))
    return values[(u[:, None] >= cdf[classes, :-1]).sum(axis=1)]


def _measured_jets(rng: np.random.Generator, truth: Truth):
    """Truth and pileup jets measured (pT, eta, phi) and selected: ``(src, take, counts,
    pt, eta, phi)``, ``take`` the kept entries of ``src`` in output order."""
    pu = _pileup_jets(rng, truth)
    src = {k: np.concatenate([truth.jets[k], pu[k]]) for k in pu}
    n_all = len(src["ev"])
    gpt, geta, kind = src["pt"], src["eta"], src["kind"]
    is_lep = (kind == KIND_MUON) | (kind == KIND_ELECTRON)
    npu = truth.pileup["Pileup_nPU"][src["ev"]]

    # pT response: stochastic/noise/constant resolution, worse forward; 4 % tails; a
    # pileup offset (not for leptons, measured precisely)
    sigma = np.sqrt((2.0 / gpt) ** 2 + 0.64 / gpt + 0.045**2) * np.where(
        np.abs(geta) > 2.5, 1.3, 1.0
    )
    sigma[is_lep] *= 0.3
    u = rng.random(n_all)
    xi = rng.normal(0, 1, n_all) * np.where(u < 0.04, 3.0, 1.0)
    offset = np.where(is_lep, 0.0, 0.5 + (0.5 + 0.03 * npu) * rng.normal(0, 1, n_all))
    # mean response above 1 at low pT, as in real samples (the jet energy corrections are
    # derived in bins of reconstructed pT, which biases <reco/gen> at fixed gen pT)
    pt_all = np.maximum(gpt * (1.0 + 3.0 / gpt + sigma * xi) + offset, 0.1)
    ang = 0.02 + 0.5 / gpt  # eta/phi resolution
    eta_all = geta + rng.normal(0, 1, n_all) * ang
    # reconstructed with efficiency ~97 % (lepton-only jets: 80 %); NanoAOD keeps jets
    # above 15 GeV
    eff = np.where(is_lep, 0.80, 0.97)
    ok = (rng.random(n_all) < eff) & (pt_all > JET_PT_MIN) & (np.abs(eta_all) < JET_ETA_MAX)
    idx = np.nonzero(ok)[0]
    perm, counts, _ = sort_within_events(src["ev"][idx], -pt_all[idx], truth.n_events)
    take = idx[perm]  # the kept jets, in output order
    phi = wrap_phi(src["phi"][take] + rng.normal(0, 1, len(take)) * ang[take])
    return src, take, counts, pt_all[take], eta_all[take], phi


def _constituents_and_ids(
    rng: np.random.Generator,
    kind: np.ndarray,
    pt: np.ndarray,
    aeta: np.ndarray,
    no_tracks: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """nConstituents, qgl, puId and jetId of jets of truth ``kind``: ``(n_const, qgl,
    pu_id, jet_id)``."""
    n = len(pt)
    is_lep = (kind == KIND_MUON) | (kind == KIND_ELECTRON)
    is_pu, is_tau = kind == KIND_PILEUP, kind == KIND_TAU_H
    # constituents: more for gluon and b jets, few for lepton jets (Gaussian approximation
    # of a Poisson, 4x cheaper to draw)
    log_pt = np.log(pt)
    lam = np.select(
        [kind == KIND_GLUON, kind == KIND_B, is_pu, is_lep, is_tau],
        [1.45 * (2 + 2.8 * log_pt), 1.3 * (2 + 2.8 * log_pt), 1 + 2.2 * log_pt, 1.5, 3.0],
        2 + 2.8 * log_pt,
    )
    n_const = np.clip(np.rint(lam + np.sqrt(lam) * rng.normal(0, 1, n)), 1, 254) + (is_lep | is_tau)

    qg_class = np.select(
        [is_lep | is_tau, kind == KIND_GLUON, is_pu], [_LEPTON, _GLUON, _PILEUP], _HARD
    )
    qgl = _sigmoid(_normal_by_class(rng, qg_class, _QGL_MEAN, _QGL_SD))
    qgl[no_tracks | (n_const < 2)] = -1.0

    forward = aeta > TRACKER_ETA
    pu_class = np.select([is_pu, forward], [_PILEUP, _FORWARD], _HARD)
    pu_id = _categorical(rng, pu_class, _PU_ID_VALUES, _PU_ID_PROBS)
    pu_id[(pt > 50.0) & (rng.random(n) < 0.97)] = 7  # the pileup id is computed below 50 GeV
    id_class = np.select(
        [kind == KIND_MUON, kind == KIND_ELECTRON, is_tau, is_pu, aeta > 2.7],
        [_MUON, _ELECTRON, _TAU, _PILEUP, _FORWARD],
        _HARD,
    )
    jet_id = _categorical(rng, id_class, _JET_ID_VALUES, _JET_ID_PROBS)
    return n_const, qgl, pu_id, jet_id


def reconstruct_jets(
    rng: np.random.Generator, truth: Truth
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``Jet`` collection: (fields dict sorted by decreasing pT per event, counts)."""
    src, take, counts, pt, eta, phi = _measured_jets(rng, truth)
    kind, gpt, hflav, n = src["kind"][take], src["pt"][take], src["hadron_flavour"][take], len(take)
    is_lep = (kind == KIND_MUON) | (kind == KIND_ELECTRON)
    is_pu, is_tau = kind == KIND_PILEUP, kind == KIND_TAU_H
    aeta = np.abs(eta)
    no_tracks = (aeta > TRACKER_ETA) | (rng.random(n) < 0.01)
    z = rng.normal(0, 1, (2, n))
    mass = np.abs(
        src["mass"][take] * (1.0 + 0.15 * z[0]) + np.where(is_lep, 0.3 * z[1], 0.6 + 0.8 * z[1])
    )
    n_const, qgl, pu_id, jet_id = _constituents_and_ids(rng, kind, pt, aeta, no_tracks)

    # muon energy fraction: the muon inside (a prompt muon jet, or a semileptonic b/c decay)
    mu_pt = src["mu_pt"][take]
    mu_ef = np.where(mu_pt > MUON_PT_MIN, np.clip(mu_pt * (1.0 + 0.03 * z[0]) / pt, 0.0, 1.0), 0.0)
    stray = (mu_ef == 0) & (rng.random(n) < 0.02)  # muons from decays in flight
    mu_ef[stray] = np.minimum(rng.exponential(0.03, int(stray.sum())), 1.0)

    semilep = src["semileptonic"][take]
    breg = (
        np.exp(rng.normal(np.log(1.2), 0.09, n)) * np.sqrt(gpt / pt) * np.where(semilep, 1.06, 1.0)
    )
    area_tail = np.where(rng.random(n) < 0.05, 3.0, 1.0)
    quarkish = ~(is_pu | is_lep | is_tau)
    fields = {
        "pt": pt,
        "eta": eta,
        "phi": phi,
        "mass": mass,
        "area": np.clip(0.503 + 0.02 * area_tail * rng.normal(0, 1, n), 0.2, 0.9),
        **_taggers(rng, hflav, no_tracks),
        "bRegCorr": np.clip(breg, 0.5, 2.5),
        "qgl": qgl,
        "muEF": mu_ef,
        "nConstituents": n_const,
        "puId": pu_id,
        "jetId": jet_id,
        # ~1 % of real jets miss the dR < 0.4 geometric match to their GenJet
        "genJetIdx": np.where(rng.random(n) < 0.01, -1, src["genjet_idx"][take]),
        "hadronFlavour": hflav,
        "partonFlavour": np.where(quarkish, src["parton_flavour"][take], 0),
    }
    return fields, counts


# --- muons -------------------------------------------------------------------------------
_DISPLACEMENT_CM = {ORIGIN_TAU: 0.004, ORIGIN_B: 0.02, ORIGIN_B_TO_C: 0.025, ORIGIN_C: 0.012}


def _fake_muons(rng: np.random.Generator, truth: Truth) -> dict[str, np.ndarray]:
    n_pu = truth.pileup["Pileup_nPU"]
    counts = rng.poisson(0.012 + 0.0005 * n_pu)
    ev = np.repeat(np.arange(truth.n_events, dtype=np.int64), counts)
    m = len(ev)
    pt = MUON_PT_MIN + rng.exponential(4.0, m)
    return {
        "ev": ev,
        "pt": pt,
        "eta": rng.uniform(-MUON_ETA_MAX, MUON_ETA_MAX, m),
        "phi": rng.uniform(-np.pi, np.pi, m),
        "pdg": np.where(rng.random(m) < 0.5, 13, -13),
        "origin": np.full(m, -1),
        "genpart_idx": np.full(m, -1, np.int64),
        "ptrel": rng.gamma(2.0, 0.5, m),
        "activity": pt * rng.gamma(2.0, 1.0, m),
    }


def _muon_candidates(rng: np.random.Generator, truth: Truth) -> dict[str, np.ndarray]:
    """Reconstructed gen muons (efficiency, acceptance) and fakes, with measured pT, eta,
    phi above threshold: one entry per muon, the source fields plus ``pt_reco``, ..."""
    gm = {k: v for k, v in truth.muons.items() if k != "jet"}
    eff = (
        0.93
        * (1.0 - np.exp(-(gm["pt"] - 2.5) / 4.0))
        * np.where(gm["origin"] >= ORIGIN_B, 0.95, 1.0)
    )
    keep = (np.abs(gm["eta"]) < MUON_ETA_MAX) & (rng.random(len(gm["pt"])) < eff)
    src = {k: v[keep] for k, v in gm.items()}
    fake = _fake_muons(rng, truth)
    src = {k: np.concatenate([src[k], fake[k]]) for k in fake}
    n = len(src["ev"])
    src["is_fake"] = src["origin"] < 0
    src["prompt"] = (src["origin"] == ORIGIN_W) | (src["origin"] == ORIGIN_TAU)
    gpt, geta = src["pt"], src["eta"]
    src["aeta"] = np.abs(geta)
    src["npu"] = truth.pileup["Pileup_nPU"][src["ev"]]

    # momentum: 1-2 % resolution (worse in the endcaps, at high pT), 3 % tails
    sigma = (0.011 + 0.00015 * gpt) * np.where(src["aeta"] > 1.2, 1.7, 1.0)
    xi = rng.normal(0, 1, n) * np.where(rng.random(n) < 0.03, 4.0, 1.0)
    src["pt_reco"] = np.maximum(gpt * (1.0 + sigma * xi), 0.5)
    src["eta_reco"] = geta + rng.normal(0, 0.0008, n)
    src["phi_reco"] = wrap_phi(src["phi"] + rng.normal(0, 0.0008, n))
    src["sigma"] = sigma
    sel = src["pt_reco"] > MUON_PT_MIN
    return {k: v[sel] for k, v in src.items()}


def _impact_parameters(rng: np.random.Generator, mu: dict[str, np.ndarray]) -> dict:
    """dxy, dz (cm) with their errors, ip3d and sip3d of the muon candidates ``mu``."""
    pt, eta, aeta, n = mu["pt_reco"], mu["eta_reco"], mu["aeta"], len(mu["pt_reco"])
    # true displacement by origin, measured with pT-dependent errors
    scale = np.zeros(n)
    for o, s in _DISPLACEMENT_CM.items():  # a few origin classes, not a loop over muons
        scale[mu["origin"] == o] = s
    scale[mu["is_fake"]] = 0.05
    dxy_err = (0.0008 + 0.012 / pt) * (1.0 + 0.4 * aeta) * rng.lognormal(0, 0.2, n)
    dz_err = 2.5 * dxy_err * rng.lognormal(0, 0.2, n)
    # (transverse pulls of prompt tracks are narrower than the quoted error, as in data)
    dxy = rng.laplace(0, 1, n) * scale + rng.normal(0, 0.6, n) * dxy_err
    dz = rng.laplace(0, 1, n) * 1.3 * scale + rng.normal(0, 1, n) * dz_err
    wrong_pv = rng.random(n) < 0.01  # muon assigned to a pileup vertex
    dz[wrong_pv] += rng.normal(0, 4.0, int(wrong_pv.sum()))
    # 3D impact parameter: the longitudinal distance counts with sin(theta) = 1/cosh(eta)
    sin_theta = 1.0 / np.cosh(eta)
    ip3d = np.hypot(dxy, dz * sin_theta)
    sip3d = ip3d / np.hypot(dxy_err, dz_err * sin_theta)
    return {"dxy": dxy, "dxyErr": dxy_err, "dz": dz, "dzErr": dz_err, "ip3d": ip3d, "sip3d": sip3d}


def _isolation(rng: np.random.Generator, mu: dict[str, np.ndarray]) -> dict:
    """Isolation (relative to muon pT), jetRelIso and jetPtRelv2 of the candidates ``mu``:
    prompt muons isolated, pileup adds neutral energy."""
    pt, prompt, npu, n = mu["pt_reco"], mu["prompt"], mu["npu"], len(mu["pt_reco"])
    act = mu["activity"] / pt
    chg = np.where(
        prompt & (rng.random(n) < 0.6), 0.0, rng.exponential(0.03, n)
    ) + act * rng.uniform(0.4, 0.7, n)
    neu = np.where(
        rng.random(n) < 0.6, 0.0, rng.exponential(0.0015 * npu + 0.01, n)
    ) + act * rng.uniform(0.2, 0.4, n)
    iso03 = chg + neu
    iso04 = iso03 * (1.0 + rng.exponential(0.3, n)) + rng.exponential(0.01, n)
    # jetRelIso = 1/ptRatio - 1 of the jet holding the muon: small for prompt muons; real
    # files never go below -0.08 (which the preprocessing's log(x + 0.08) relies on)
    jet_rel_iso = np.where(
        prompt,
        rng.gamma(6.0, 0.017, n) - 0.08,
        act * rng.normal(1.0, 0.15, n) + rng.normal(0, 0.03, n),
    )
    jet_rel_iso = np.maximum(jet_rel_iso, -0.079)
    ptrel = np.where(
        prompt,
        np.where(rng.random(n) < 0.15, 0.0, rng.gamma(1.5, 8.0, n)),
        mu["ptrel"] * rng.normal(1.0, 0.2, n).clip(0.2),
    )
    return {
        "jetPtRelv2": np.maximum(ptrel, 0.0),
        "jetRelIso": jet_rel_iso,
        "pfRelIso03_all": iso03,
        "pfRelIso03_chg": chg,
        "pfRelIso04_all": iso04,
    }


def _muon_ids(rng: np.random.Generator, mu: dict[str, np.ndarray], ip: dict) -> dict:
    """softMva, the id flags and the charge (rarely flipped) of the candidates ``mu``."""
    pt, is_fake, prompt, n = mu["pt_reco"], mu["is_fake"], mu["prompt"], len(mu["pt_reco"])
    quality = np.select(
        [is_fake, ~prompt],
        [rng.normal(-0.5, 0.6, n), rng.normal(0.6, 0.6, n)],
        rng.normal(1.1, 0.5, n),
    )
    soft_mva = np.tanh(quality)
    is_tracker = rng.random(n) < np.where(pt < 5, 0.99, 0.97)
    is_global = rng.random(n) < np.where(pt > 10, 0.97, 0.75)
    is_tracker |= ~is_global  # a loose muon is global or tracker
    is_pf = (rng.random(n) < 0.97) & (is_global | is_tracker)
    p_medium = np.select([is_fake, ~prompt], [0.3, 0.9], 0.97)
    medium = is_pf & (rng.random(n) < p_medium)
    dxy, dz = ip["dxy"], ip["dz"]
    soft = is_tracker & (np.abs(dxy) < 0.3) & (np.abs(dz) < 20.0) & (rng.random(n) < 0.97)
    charge = -np.sign(mu["pdg"]).astype(np.int64)  # pdgId +13 is mu-
    flip = rng.random(n) < 0.0005
    charge[flip] = -charge[flip]
    return {
        "softMva": soft_mva,
        "charge": charge,
        "isGlobal": is_global,
        "isPFcand": is_pf,
        "isTracker": is_tracker,
        "mediumId": medium,
        "softId": soft,
        "softMvaId": soft & (soft_mva > 0.58),
    }


def reconstruct_muons(
    rng: np.random.Generator, truth: Truth
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``Muon`` collection: (fields dict sorted by decreasing pT per event, counts)."""
    mu = _muon_candidates(rng, truth)
    pt, n = mu["pt_reco"], len(mu["pt_reco"])
    ip = _impact_parameters(rng, mu)
    iso = _isolation(rng, mu)
    ids = _muon_ids(rng, mu, ip)
    fields = {
        "pt": pt,
        "eta": mu["eta_reco"],
        "phi": mu["phi_reco"],
        "mass": np.full(n, M_MU),
        **ip,
        **iso,
        "ptErr": pt * mu["sigma"] * rng.lognormal(0, 0.25, n),
        **ids,
        "genPartIdx": mu["genpart_idx"],
    }
    perm, counts, _ = sort_within_events(mu["ev"], -pt, truth.n_events)
    return {k: v[perm] for k, v in fields.items()}, counts
