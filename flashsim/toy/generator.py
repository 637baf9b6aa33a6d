"""Blocks of toy events and their regrouping into chunks of any size.

Randomness is organised in fixed blocks of :data:`BLOCK_EVENTS` events, block ``k`` drawn
from its own stream ``SeedSequence(seed, spawn_key=(k,))``. So the events depend only on
``(seed, process)``: the same for any chunk size, and the first ``n`` events of a long
run equal a run of ``n`` events.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flashsim.errors import FlashSimError
from flashsim.events import COLLECTIONS, EVENT_BRANCHES, Collection, EventChunk
from flashsim.options import TOY_PROCESSES, TTBAR, ToyProcess
from flashsim.toy.physics import generate_truth
from flashsim.toy.processes import PROCESSES, Process
from flashsim.toy.reco import reconstruct_jets, reconstruct_muons

BLOCK_EVENTS = 10_000
"""Events per random-number block (the unit of generation)."""

EVENTS_PER_LUMI = 1_000

# NanoAOD stores many floats with a reduced mantissa (bits kept); it makes files smaller
# and faster to compress. Not listed: full float32 precision.
_PRECISION_BITS = {
    "GenPart": dict.fromkeys(("pt", "eta", "phi", "mass"), 8),
    "GenJet": dict.fromkeys(("pt", "eta", "phi", "mass"), 10),
    "Jet": {
        "eta": 12,
        "phi": 12,
        "mass": 10,
        "area": 10,
        "bRegCorr": 10,
        "qgl": 10,
        "muEF": 6,
        **{k: 10 for k in COLLECTIONS["Jet"] if k.startswith("btag")},
    },
    "Muon": {
        "eta": 12,
        "phi": 12,
        "dxy": 10,
        "dxyErr": 6,
        "dz": 10,
        "dzErr": 6,
        "ip3d": 10,
        "sip3d": 10,
        "jetPtRelv2": 8,
        "jetRelIso": 8,
        "pfRelIso03_all": 6,
        "pfRelIso03_chg": 6,
        "pfRelIso04_all": 6,
        "ptErr": 6,
        "softMva": 10,
    },
}


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 ``x`` to ``bits`` mantissa bits (round half up), like NanoAOD."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    shift = 23 - bits
    mask = np.uint32((0xFFFFFFFF << shift) & 0xFFFFFFFF)
    u = x.view(np.uint32)
    return ((u + np.uint32(1 << (shift - 1))) & mask).view(np.float32)


def get_process(name: str) -> Process:
    """The :class:`Process` called ``name`` (``"ttbar"`` or ``"wjets"``)."""
    return PROCESSES[TOY_PROCESSES.normalize(name)]


def _typed(name: str, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    bits = _PRECISION_BITS.get(name, {})
    for field, dtype in COLLECTIONS[name].items():
        arr = fields[field].astype(dtype, copy=False)
        if field in bits:
            arr = round_mantissa(arr, bits[field])
        out[field] = arr
    return out


def generate_block(seed: int, block: int, process: ToyProcess = TTBAR) -> EventChunk:
    """Events ``[block * BLOCK_EVENTS, (block + 1) * BLOCK_EVENTS)`` of the run ``seed``."""
    proc = get_process(process)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    n = BLOCK_EVENTS
    truth = generate_truth(rng, n, proc)
    jets, jet_counts = reconstruct_jets(rng, truth)
    muons, muon_counts = reconstruct_muons(rng, truth)
    index = np.arange(block * n, (block + 1) * n, dtype=np.uint64)
    scalars = {
        "run": np.ones(n, np.uint32),
        "luminosityBlock": (1 + index // EVENTS_PER_LUMI).astype(np.uint32),
        "event": index + np.uint64(1),
        **truth.pileup,
    }
    scalars = {k: scalars[k].astype(dtype, copy=False) for k, dtype in EVENT_BRANCHES.items()}
    collections = {
        "Jet": Collection(jet_counts, _typed("Jet", jets)),
        "GenJet": Collection(truth.genjet_counts, _typed("GenJet", truth.genjets)),
        "GenPart": Collection(truth.genpart_counts, _typed("GenPart", truth.genpart)),
        "Muon": Collection(muon_counts, _typed("Muon", muons)),
    }
    return EventChunk(scalars, collections)


def default_workers() -> int:
    """Threads generating blocks: one per CPU, at most 4 (numpy releases the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


def _blocks(
    seed: int, n_blocks: int, process: ToyProcess, workers: int
) -> Generator[EventChunk, None, None]:
    """Blocks ``0 .. n_blocks-1`` in order, generated ahead by ``workers`` threads.

    At most ``workers + 1`` blocks are in flight, so memory stays bounded.
    """
    if workers <= 1:
        for block in range(n_blocks):
            yield generate_block(seed, block, process)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flashsim-toy")
    try:
        pending: deque = deque()
        submitted = 0
        for _ in range(n_blocks):
            while submitted < n_blocks and len(pending) <= workers:
                pending.append(pool.submit(generate_block, seed, submitted, process))
                submitted += 1
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_toy_chunks(
    n_events: int,
    *,
    seed: int = 0,
    chunk_events: int = 50_000,
    process: ToyProcess = TTBAR,
    workers: int | None = None,
) -> Generator[EventChunk, None, None]:
    """Yield the ``n_events`` events of run ``seed`` in chunks of ``chunk_events``
    (the last one shorter), generated by ``workers`` threads (default
    :func:`default_workers`). The events do not depend on ``chunk_events`` or ``workers``;
    memory stays bounded by about ``chunk_events + (workers + 2) * BLOCK_EVENTS`` events.

    >>> sum(len(c) for c in iter_toy_chunks(25_000, chunk_events=10_000))
    25000
    """
    if n_events < 0 or chunk_events < 1:
        raise FlashSimError(
            f"Need n_events >= 0 and chunk_events >= 1 (got {n_events} and {chunk_events})."
        )
    get_process(process)
    n_blocks = -(-n_events // BLOCK_EVENTS)
    blocks = _blocks(seed, n_blocks, process, default_workers() if workers is None else workers)
    pending: list[EventChunk] = []
    n_pending = 0
    produced = 0
    try:
        while produced < n_events:
            want = min(chunk_events, n_events - produced)
            while n_pending < want:
                block = next(blocks)
                pending.append(block)
                n_pending += len(block)
            merged = EventChunk.concatenate(pending)
            yield merged.slice(0, want)
            produced += want
            rest = merged.slice(want, len(merged))
            pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)
    finally:
        blocks.close()
