"""The physics processes of the toy and their parameters."""

from __future__ import annotations

from dataclasses import dataclass

from flashsim.options import TTBAR, WJETS, ToyProcess


@dataclass(frozen=True)
class Process:
    """Parameters of one physics process of the toy."""

    name: str
    description: str
    radiation_mean: float
    """mean number of radiated partons above ``radiation_pt_min`` per event (Poisson)"""
    radiation_pt_scale: float
    radiation_pt_alpha: float
    """radiation pT = pt_min + scale * ((1 - u)^(-1/alpha) - 1): a Lomax power law"""
    radiation_flavours: tuple[float, float, float, float, float, float]
    """probabilities of g, d, u, s, c, b among radiated partons"""
    pileup_mean: float
    """mean number of true interactions (Pileup_nTrueInt)"""
    radiation_pt_min: float = 6.0


PROCESSES: dict[ToyProcess, Process] = {
    TTBAR: Process(
        name=TTBAR,
        description="t tbar -> b W b W, all W decays, ISR/FSR; Run-2-like pileup (mean 28)",
        radiation_mean=3.0,
        radiation_pt_scale=22.0,
        radiation_pt_alpha=2.2,
        radiation_flavours=(0.66, 0.10, 0.12, 0.06, 0.04, 0.02),
        pileup_mean=28.0,
    ),
    WJETS: Process(
        name=WJETS,
        description=(
            "W -> l nu + jets, tuned to the real 2015 CMS Open Data sample in shared/data "
            "(which is W+jets despite its name); 2015-like pileup (mean 12)"
        ),
        radiation_mean=2.8,
        radiation_pt_scale=15.0,
        radiation_pt_alpha=2.1,
        radiation_flavours=(0.58, 0.11, 0.14, 0.06, 0.085, 0.025),
        pileup_mean=12.0,
    ),
}
