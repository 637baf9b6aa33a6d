"""Kinematic conventions shared by prep's features, the toy generator and generate.

Angles in radians, masses in GeV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import awkward as ak

MUON_MASS = 0.1056583755
"""The muon mass (PDG 2022), GeV."""

_TWO_PI = 2.0 * np.pi


def wrap_phi(dphi: np.ndarray | ak.Array) -> np.ndarray | ak.Array:
    """Wrap angles (radians, numpy or awkward arrays) to [-π, π) (docs/columns.md)."""
    wrapped = dphi - _TWO_PI * np.floor((dphi + np.pi) / _TWO_PI)
    # floor() can leave exactly +π after rounding; move it to -π
    return wrapped - _TWO_PI * (wrapped >= np.pi)
