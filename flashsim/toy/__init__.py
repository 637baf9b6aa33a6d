"""Toy NanoAOD generator: ttbar (or W+jets) events at any scale, fully vectorized.

The default input of the demo, the benchmarks and the scale tests. It writes an
``Events`` TTree with real NanoAOD branch names and types (``Jet``, ``GenJet``,
``GenPart``, ``Muon``, ``Pileup_*``), consistent with how ``flashsim prep`` matches
objects. See :mod:`flashsim.toy.physics` (generator level) and :mod:`flashsim.toy.reco`
(detector response) for the model.

>>> from flashsim.toy import generate_toy, coarse_figures
>>> summary = generate_toy("ttbar_toy.root", 100_000, seed=1)  # doctest: +SKIP
>>> round(coarse_figures("ttbar_toy.root")["b_jet_fraction"], 2)  # doctest: +SKIP
0.3

Public names are imported lazily (PEP 562), so ``import flashsim.toy`` and the CLI stay
fast until uproot is actually needed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate_toy": "flashsim.toy.run",
    "coarse_figures": "flashsim.toy.figures",
    "FIGURE_NAMES": "flashsim.toy.figures",
    "REAL_SAMPLE_TOLERANCES": "flashsim.toy.figures",
    "within_tolerance": "flashsim.toy.figures",
    "iter_toy_chunks": "flashsim.toy.generator",
    "generate_block": "flashsim.toy.generator",
    "BLOCK_EVENTS": "flashsim.toy.generator",
    "PROCESSES": "flashsim.toy.processes",
    "EventChunk": "flashsim.events",
    "COLLECTIONS": "flashsim.events",
    "EVENT_BRANCHES": "flashsim.events",
    "branch_types": "flashsim.events",
    "write_events": "flashsim.rootfile",
    "DEFAULT_COMPRESSION": "flashsim.rootfile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: the next access is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
