"""Vectorized relativistic kinematics for the toy generator.

Every function works on flat float64 arrays (one entry per particle) and never loops in
Python. Momenta and masses are in GeV, angles in radians; a four-vector is a tuple
``(px, py, pz, E)`` of arrays of equal shape.
"""

from __future__ import annotations

import numpy as np

FourVector = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def from_mt_y_phi(mass: np.ndarray, pt: np.ndarray, y: np.ndarray, phi: np.ndarray) -> FourVector:
    """Four-vector of a system of given mass, transverse momentum and rapidity ``y``."""
    mt = np.sqrt(mass * mass + pt * pt)
    return pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y)


def to_pt_eta_phi_m(p: FourVector) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(px, py, pz, E) -> (pt, eta, phi, mass); mass is clipped at 0 against rounding."""
    px, py, pz, e = p
    pt = np.hypot(px, py)
    # arcsinh(pz/pt) is the pseudorapidity; guard pt == 0 (never produced for daughters)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    phi = np.arctan2(py, px)
    m = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    return pt, eta, phi, m


def boost(p: FourVector, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> FourVector:
    """Lorentz-boost four-vectors ``p`` by velocity (bx, by, bz) (|beta| < 1)."""
    px, py, pz, e = p
    b2 = bx * bx + by * by + bz * bz
    gamma = 1.0 / np.sqrt(1.0 - np.minimum(b2, 1.0 - 1e-12))
    bp = bx * px + by * py + bz * pz
    # (gamma - 1) / b2 -> gamma^2 / (gamma + 1), finite at b2 = 0
    g2 = gamma * gamma / (gamma + 1.0)
    k = g2 * bp + gamma * e
    return px + k * bx, py + k * by, pz + k * bz, gamma * (e + bp)


def two_body_decay(
    rng: np.random.Generator,
    parent: FourVector,
    m1: np.ndarray | float,
    m2: np.ndarray | float,
) -> tuple[FourVector, FourVector]:
    """Decay each parent isotropically (in its rest frame) into masses ``m1`` and ``m2``.

    Returns the two daughters' four-vectors in the lab frame. Parents must be heavier
    than ``m1 + m2`` (callers draw masses that guarantee it).
    """
    px, py, pz, e = parent
    n = px.shape[0]
    m = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    m1 = np.broadcast_to(np.asarray(m1, dtype=np.float64), (n,))
    m2 = np.broadcast_to(np.asarray(m2, dtype=np.float64), (n,))
    # momentum of each daughter in the rest frame (Kallen function)
    pstar2 = (m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2)
    pstar = np.sqrt(np.maximum(pstar2, 0.0)) / (2.0 * np.maximum(m, 1e-9))
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    ph = rng.uniform(-np.pi, np.pi, n)
    qx, qy, qz = pstar * sin_t * np.cos(ph), pstar * sin_t * np.sin(ph), pstar * cos_t
    e1 = np.sqrt(pstar * pstar + m1 * m1)
    e2 = np.sqrt(pstar * pstar + m2 * m2)
    bx, by, bz = px / e, py / e, pz / e
    d1 = boost((qx, qy, qz, e1), bx, by, bz)
    d2 = boost((-qx, -qy, -qz, e2), bx, by, bz)
    return d1, d2


def breit_wigner(
    rng: np.random.Generator, n: int, mass: float, width: float, window: float
) -> np.ndarray:
    """Masses from a (non-relativistic) Breit-Wigner, folded into ``mass ± window``."""
    x = mass + 0.5 * width * np.tan(np.pi * (rng.random(n) - 0.5))
    # tails beyond the window are redrawn uniformly inside it: keeps the peak shape and
    # avoids the unphysical far tails of the Cauchy distribution
    outside = np.abs(x - mass) > window
    x[outside] = rng.uniform(mass - window, mass + window, int(outside.sum()))
    return x
