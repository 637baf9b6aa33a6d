"""FlashSim generation: NanoAOD-like reconstructed jets and muons from generator-level
events, sampled from trained flows.

For every ``GenJet`` (a jets model: any layout of kind ``jets``, given as ``jets=``) and
every final-state gen muon (muons model:
``GenPart`` with ``|pdgId| == 13`` and ``status == 1``) of each input event, the conditioning is computed exactly as ``flashsim prep`` computes it
(:mod:`pipelines.features`), preprocessed with the chain stored in the checkpoint, and
one reconstructed object is sampled (``oversample`` K: one per copy of the event). The
samples are checked against the values the training store held
(:mod:`flashsim.safe_sampling`: non-finite or out-of-range ones redrawn, then clipped,
discrete ones mapped to their nearest valid value, all counted). Targets are mapped back
to physical units and to NanoAOD branches:

* ``Jet_pt = MJet_ptRatio * GenJet_pt``, ``Jet_eta = GenJet_eta + MJet_etaMinusGen``,
  ``Jet_phi`` likewise (wrapped to [-π, π)), ``Jet_mass = MJet_massRatio * GenJet_mass``
  (ratios below 0 set to 0: a badly trained flow can sample them);
  the other targets are copied to the branch the layout copied them from
  (:attr:`flashsim.layouts.Layout.copied`, integers rounded), with its NanoAOD type; a
  generation-neutral branch (``jets-run3``'s ``Jet_btagParTAK4B``) is written under the
  name of the generation the model was trained on (``Jet_btagRobustParTAK4B`` for v12,
  ``Jet_btagUParTAK4B`` for v15, as the store's ``generation_branches`` record);
  ``Jet_genJetIdx`` points to the GenJet, ``Jet_hadronFlavour``/``Jet_partonFlavour`` are
  the GenJet's;
* ``Muon_pt``, ``Muon_eta``, ``Muon_phi`` the same way from the gen muon,
  ``Muon_charge`` from its pdgId, ``Muon_mass`` the muon mass, ids as booleans,
  ``Muon_genPartIdx`` pointing to the ``GenPart``.

Objects are sorted by decreasing pT within each event, as in NanoAOD. The output file
also holds the generator-level collections read (``GenJet_*``, ``GenPart_*``),
``run``/``luminosityBlock``/``event`` and, with a muons model, ``Pileup_*``, so it can be
compared with full simulation object by object, and ``FlashSim_eventIndex`` /
``FlashSim_fold`` (the original event and the copy, see ``docs/generate.md``). A
``flashsim`` string in the file records the models, seed, oversampling, inputs and the
counts of redrawn and clipped samples. Every generator-level object gets a reconstructed
one (the flows model the response, not the efficiency). Many inputs can be simulated in
worker processes or on Dask (:mod:`flashsim.generate_files`), with the serial output.

Examples
--------
>>> from flashsim.generate import generate
>>> summary = generate(["ttbar_toy.root"], "flash.root", jets="runs/jets")  # doctest: +SKIP
>>> summary.counts["Jet"]                                                   # doctest: +SKIP
7158351
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import awkward as ak
import numpy as np
from tqdm.auto import tqdm

from flashsim import __version__
from flashsim.devices import resolve_device
from flashsim.errors import FlashSimError, InputError
from flashsim.events import COLLECTIONS, EVENT_BRANCHES, Collection, EventChunk
from flashsim.kinematics import MUON_MASS, wrap_phi
from flashsim.layouts import JET_KIND, KINDS, MUON_KIND, Layout
from flashsim.noise import noise_block
from flashsim.options import FINAL_STATE, GEN_MUONS, GenMuons
from flashsim.rootfile import DEFAULT_COMPRESSION, check_output, parse_compression, write_events
from flashsim.safe_sampling import DEFAULT_MAX_REDRAWS, SampleCounts, draw_targets
from flashsim.sampling import TrainedFlow
from pipelines.branches import GENJET_VALUE_BRANCHES, BranchPlan, materialize, resolve_branches
from pipelines.features import GEN_CONDITIONING, charge_from_pdg_id
from pipelines.inputs import expand_inputs
from pipelines.nanoaod import close_cached, inspect_nanoaod, iterate_steps
from pipelines.profiles import DERIVATIONS
from pipelines.tasks import DEFAULT_STEP_EVENTS

OBJECTS: tuple[str, ...] = tuple(KINDS)
"""The models generate takes, one per kind (``jets=``, ``muons=``): a model of any layout
of that kind; a kind's position keys its noise streams."""
ID_BRANCHES = ("run", "luminosityBlock", "event")
EVENT_INDEX_BRANCH = "FlashSim_eventIndex"
"""uint64: position of the original generator-level event among all events of the inputs
of the output file, in input order (0-based; for one input, its entry number). The K
copies of an event (``--oversample K``) share it."""
FOLD_BRANCH = "FlashSim_fold"
"""int32: which of the K copies of its event a row is, ``0 .. K-1`` (always 0 for K = 1)."""
_GENPART_FIELDS = ("pt", "eta", "phi", "pdgId", "status", "statusFlags")


@dataclass
class GenerateSummary:
    """What :func:`generate` wrote.

    Attributes:
        out: the ROOT file.
        events: events written.
        counts: objects written per collection (``{"Jet": n, "Muon": n, "GenJet": n, ...}``).
        skipped: generator-level objects without a reconstructed one because their
            conditioning was not finite (e.g. a GenJet of zero pT), per object.
        seconds: wall time.
        models: checkpoint used per object.
        oversample: copies written per input event (K); ``events`` is K times the input's.
        samples: per object, the objects redrawn or clipped per target column
            (:class:`flashsim.safe_sampling.SampleCounts`).
    """

    out: Path
    events: int
    counts: dict[str, int]
    skipped: dict[str, int]
    seconds: float
    models: dict[str, str] = field(default_factory=dict)
    oversample: int = 1
    samples: dict[str, SampleCounts] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def _step_seed(seed: int, file_index: int, step: int, obj: str) -> int:
    """An independent 63-bit seed per (seed, file, step, object): reproducible, order-free."""
    sequence = np.random.SeedSequence([seed, file_index, step, OBJECTS.index(obj)])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _sort_by_pt(counts: np.ndarray, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Objects of each event by decreasing ``pt`` (one stable sort on all events at once)."""
    event = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((-fields["pt"], event))
    return {k: v[order] for k, v in fields.items()}


def _typed(
    collection: str, fields: Mapping[str, np.ndarray], types: Mapping[str, np.dtype] | None = None
) -> dict[str, np.ndarray]:
    """``fields`` with their NanoAOD types: ``types`` (a layout's), else the collection's."""
    dtypes = {**COLLECTIONS[collection], **(types or {})}
    out = {}
    for name, values in fields.items():
        dtype = dtypes[name]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.clip(np.round(values), info.min, info.max)
        elif dtype.kind == "b":
            values = values >= 0.5
        out[name] = np.asarray(values).astype(dtype, copy=False)
    return out


def _columns(layout: Layout, conditioning: np.ndarray, targets: np.ndarray):
    """Two lookups by column name, float64: ``gen(name)`` into the conditioning rows and
    ``reco(name)`` into the target rows."""

    def gen(name: str) -> np.ndarray:
        return conditioning[:, layout.index(name)].astype(np.float64)

    def reco(name: str) -> np.ndarray:
        return targets[:, layout.index(name) - layout.n_conditioning].astype(np.float64)

    return gen, reco


def written_branches(layout: Layout, metadata: Mapping) -> dict[str, tuple[str, str | None]]:
    """Target column -> ``(field of the collection, involution or None)`` that generate
    writes for each copied target: the layout's branch, or for a generation-neutral one the
    generation's own that the store recorded (``generation_branches``, :mod:`pipelines.profiles`)."""
    prefix = f"{KINDS[layout.kind].collection}_"
    own = {
        g["branch"]: (g["reads"][0], g["derive"]) for g in metadata.get("generation_branches", [])
    }
    return {
        column: (name.removeprefix(prefix), derive)
        for column, (name, derive) in (
            (column, own.get(branch, (branch, None)))
            for column, branch in layout.copied_branches.items()
        )
    }


def _copied(model: TrainedFlow, reco: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """The copied targets as the fields generate writes (:func:`written_branches`)."""
    fields = {}
    for column, (name, derive) in written_branches(model.layout, model.metadata).items():
        values = reco(column)
        fields[name] = values if derive is None else np.asarray(DERIVATIONS[derive](values))
    return fields


def field_types(model: TrainedFlow) -> dict[str, np.dtype]:
    """The NanoAOD type of each written field whose layout declares one (others: the
    collection's in :data:`flashsim.events.COLLECTIONS`); a copied target's under the name
    it is written with."""
    declared = {b: np.dtype(t) for b, t in model.layout.branch_types}
    branches = model.layout.copied_branches
    prefix = f"{KINDS[model.layout.kind].collection}_"
    types = {b.removeprefix(prefix): t for b, t in declared.items() if b not in branches.values()}
    for column, (name, _) in written_branches(model.layout, model.metadata).items():
        if branches[column] in declared:
            types[name] = declared[branches[column]]
    return types


def reco_jets(
    model: TrainedFlow, conditioning: np.ndarray, targets: np.ndarray
) -> dict[str, np.ndarray]:
    """``Jet_*`` fields from raw conditioning ``(n, 14)`` and physical targets ``(n, n_targets)``."""
    gen, reco = _columns(model.layout, conditioning, targets)
    # a pT or mass is never negative, whatever a (badly trained) flow samples
    fields = {
        "pt": np.maximum(reco("MJet_ptRatio"), 0.0) * gen("MGenJet_pt"),
        "eta": gen("MGenJet_eta") + reco("MJet_etaMinusGen"),
        "phi": wrap_phi(gen("MGenJet_phi") + reco("MJet_phiMinusGen")),
        "mass": np.maximum(reco("MJet_massRatio"), 0.0) * gen("MGenJet_mass"),
    }
    fields.update(_copied(model, reco))
    fields["hadronFlavour"] = gen("MGenJet_hadronFlavour")
    fields["partonFlavour"] = gen("MGenJet_partonFlavour")
    return fields


def reco_muons(
    model: TrainedFlow, conditioning: np.ndarray, targets: np.ndarray, pdg_id: np.ndarray
) -> dict[str, np.ndarray]:
    """``Muon_*`` fields from raw conditioning ``(n, 30)``, physical targets ``(n, 22)``
    and the gen muons' pdgId ``(n,)``."""
    gen, reco = _columns(model.layout, conditioning, targets)
    fields = {
        "pt": np.maximum(reco("MMuon_ptRatio"), 0.0) * gen("MGenMuon_pt"),
        "eta": gen("MGenMuon_eta") + reco("MMuon_etaMinusGen"),
        "phi": wrap_phi(gen("MGenMuon_phi") + reco("MMuon_phiMinusGen")),
        "mass": np.full(len(conditioning), MUON_MASS),
        "charge": charge_from_pdg_id(pdg_id),
    }
    fields.update(_copied(model, reco))
    return fields


def _flat(array: ak.Array) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(array, axis=1)))


def _counts(array: ak.Array) -> np.ndarray:
    return np.asarray(ak.num(array, axis=1), dtype=np.int64)


def repeat_events(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each event ``k`` times in a row (event 0 ``k`` times, then event 1, ...): the
    repeated events' object counts and, per repeated object, its index in the original
    flat arrays."""
    out_counts = np.repeat(counts, k)
    starts = np.repeat(np.cumsum(counts) - counts, k)
    out_starts = np.cumsum(out_counts) - out_counts
    take = np.repeat(starts - out_starts, out_counts) + np.arange(int(out_counts.sum()))
    return out_counts, take


@dataclass(frozen=True)
class _Stream:
    """Where one step's objects sit in their file's noise stream (:mod:`flashsim.noise`):
    the key ``(seed, file, object)`` and the position of the step's first gen object."""

    seed: int
    file_index: int
    first_object: int
    oversample: int
    step_seed: int  # of the conditioning's preprocessing (its chains draw nothing today)


def _noise(model: TrainedFlow, stream: _Stream, n_gen: int, source: np.ndarray, fold: np.ndarray):
    """``noise(attempt)``: the base noise of each repeated object, from its gen object's
    position in the file (``source``: relative to the step's first gen object) in the
    stream of its ``fold``: fold 0 of any K is the K = 1 sample."""
    key = (stream.seed, stream.file_index, OBJECTS.index(model.layout.kind))
    width = model.layout.n_targets

    def draw(attempt: int) -> np.ndarray:
        out = np.empty((len(source), width), dtype=np.float32)
        for k in range(stream.oversample):
            rows = fold == k
            block = noise_block((*key, attempt, k), stream.first_object, n_gen, width)
            out[rows] = block[source[rows]]
        return out

    return draw


@dataclass
class _Simulated:
    """One object's collection of one step and what happened on the way."""

    collection: Collection
    n_gen: int  # gen-level objects of the step (the next step's first position)
    skipped: int
    samples: SampleCounts


def _simulate(
    model: TrainedFlow,
    ev: Mapping[str, ak.Array],
    gen_muons: GenMuons,
    stream: _Stream,
    max_redraws: int,
) -> _Simulated:
    """Sample ``stream.oversample`` reconstructed objects per gen-level object of one step,
    one per copy of its event (copies of an event consecutive)."""
    kind, k = KINDS[model.layout.kind], stream.oversample
    gen = GEN_CONDITIONING[model.layout.name](ev, gen_muons)
    finite = np.isfinite(gen.rows).all(axis=1)
    event = np.repeat(np.arange(len(gen.counts)), gen.counts)[finite]
    counts, take = repeat_events(np.bincount(event, minlength=len(gen.counts)), k)
    fold = np.repeat(np.tile(np.arange(k), len(gen.counts)), counts)
    source = np.flatnonzero(finite)[take]
    rows, index = gen.rows[finite][take], gen.index[finite][take]
    conditioning = model.preprocess_conditioning(rows, seed=stream.step_seed)
    noise = _noise(model, stream, len(gen.rows), source, fold)
    targets, samples = draw_targets(model, conditioning, noise, max_redraws)
    fields = _RECO_FIELDS[kind.name](model, ev, rows, targets, event[take], index)
    fields[kind.index_branch.removeprefix(f"{kind.collection}_")] = index  # genJetIdx, ...
    fields = _typed(kind.collection, _sort_by_pt(counts, fields), field_types(model))
    return _Simulated(Collection(counts, fields), len(gen.rows), int((~finite).sum()), samples)


def _muon_fields(
    model: TrainedFlow,
    ev: Mapping[str, ak.Array],
    rows: np.ndarray,
    targets: np.ndarray,
    events: np.ndarray,
    index: np.ndarray,
) -> dict[str, np.ndarray]:
    n_parts = _counts(ev["GenPart_pt"])
    starts = np.cumsum(n_parts) - n_parts
    pdg_id = _flat(ev["GenPart_pdgId"])[starts[events] + index]
    return reco_muons(model, rows, targets, pdg_id)


_RECO_FIELDS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    JET_KIND.name: lambda model, ev, rows, targets, events, index: reco_jets(model, rows, targets),
    MUON_KIND.name: _muon_fields,
}
"""Per kind: ``(model, events, raw conditioning, physical targets, event and gen index
of each object) -> fields`` of the reconstructed collection."""


def _gen_collections(ev: Mapping[str, ak.Array], k: int) -> dict[str, Collection]:
    """The generator-level collections read, copied with their NanoAOD types (each event
    ``k`` times)."""
    out = {}
    for name, fields in (
        ("GenJet", [b.removeprefix("GenJet_") for b in GENJET_VALUE_BRANCHES.values()]),
        ("GenPart", _GENPART_FIELDS),
    ):
        present = [f for f in fields if f"{name}_{f}" in ev]
        if present:
            counts, take = repeat_events(_counts(ev[f"{name}_{present[0]}"]), k)
            values = {f: _flat(ev[f"{name}_{f}"])[take] for f in present}
            out[name] = Collection(counts, _typed(name, values))
    return out


def _scalars(
    ev: Mapping[str, ak.Array], raw: Mapping[str, ak.Array], n_events: int, first_event: int, k: int
) -> dict[str, np.ndarray]:
    """The event-level branches, each event ``k`` times, with the oversampling branches."""
    out = {}
    for name in ID_BRANCHES:
        if name in raw:
            out[name] = np.asarray(raw[name]).astype(EVENT_BRANCHES[name], copy=False)
    if "event" not in out:  # EventChunk counts events by this branch
        out["event"] = np.arange(first_event, first_event + n_events, dtype=EVENT_BRANCHES["event"])
    for name, dtype in EVENT_BRANCHES.items():
        if name.startswith("Pileup_") and name in ev:
            out[name] = np.asarray(ev[name]).astype(dtype, copy=False)
    out = {name: np.repeat(values, k) for name, values in out.items()}
    index = np.arange(first_event, first_event + n_events, dtype=np.uint64)
    out[EVENT_INDEX_BRANCH] = np.repeat(index, k)
    out[FOLD_BRANCH] = np.tile(np.arange(k, dtype=np.int32), n_events)
    return out


@dataclass(frozen=True)
class _Input:
    index: int
    path: Path | str  # a str: a remote (XRootD) input
    n_events: int
    plan: BranchPlan
    ids: tuple[str, ...]


def _plan_inputs(
    inputs: Iterable[str | os.PathLike],
    objects: tuple[str, ...],
    gen_muons: GenMuons,
    branch_map: Mapping[str, str | float] | None,
) -> list[_Input]:
    files = expand_inputs(inputs)
    hdf5 = [str(f.path) for f in files if f.kind != "root"]
    if hdf5:
        raise InputError(
            f"{', '.join(hdf5)}: generation reads generator-level events from NanoAOD ROOT "
            "files; FlashSim HDF5 files hold training rows, not events. Pass the NanoAOD "
            "files the rows came from."
        )
    planned = []
    for i, f in enumerate(files):
        info = inspect_nanoaod(f.path)
        plan = resolve_branches(
            info.branches,
            objects,
            gen_muons=gen_muons,
            branch_map=branch_map,
            path=str(f.path),
            generation=True,
        )
        ids = tuple(b for b in ID_BRANCHES if b in info.branches and b not in plan.reads)
        planned.append(_Input(i, f.path, info.n_events, plan, ids))
    return planned


def _jet_gen_muons(models: Mapping[str, TrainedFlow]) -> GenMuons:
    """The gen-muon definition of the jets' closest-muon features: the jets model's store's
    (prep --gen-muons). The muons simulated are always the final-state ones."""
    jets = models.get("jets")
    if jets is None:
        return FINAL_STATE
    return GEN_MUONS.normalize(jets.metadata.get("options", {}).get("gen_muons", FINAL_STATE))


@dataclass
class _Tally:
    """What the steps did so far, per object: gen objects skipped, bad samples."""

    skipped: dict[str, int]
    samples: dict[str, SampleCounts]

    @classmethod
    def of(cls, objects: Iterable[str]) -> _Tally:
        return cls({o: 0 for o in objects}, {o: SampleCounts() for o in objects})

    def add(self, other: _Tally) -> None:
        for obj, n in other.skipped.items():
            self.skipped[obj] += n
            self.samples[obj].add(other.samples[obj])


def _chunks(
    planned: list[_Input],
    models: Mapping[str, TrainedFlow],
    gen_muons: GenMuons,
    run: _Run,
    tally: _Tally,
    first_event: int = 0,
) -> Iterator[EventChunk]:
    """The simulated events of ``planned`` inputs, step by step; ``first_event``: how
    many events precede the first input (``FlashSim_eventIndex`` continues from there)."""
    for inp in planned:
        reads = [*inp.plan.reads, *inp.ids]
        first_object = dict.fromkeys(models, 0)
        steps = iterate_steps(inp.path, reads, 0, inp.n_events, run.step_events)
        for step, n_events, arrays in steps:
            ev = materialize(arrays, inp.plan, n_events)
            collections = _gen_collections(ev, run.oversample)
            for obj, model in models.items():
                # the jets' nearest gen muons as their store had them; muons: final-state
                definition = gen_muons if obj == JET_KIND.name else FINAL_STATE
                stream = _Stream(
                    run.seed,
                    inp.index,
                    first_object[obj],
                    run.oversample,
                    _step_seed(run.seed, inp.index, step, obj),
                )
                sim = _simulate(model, ev, definition, stream, run.max_redraws)
                collections[KINDS[obj].collection] = sim.collection
                first_object[obj] += sim.n_gen
                tally.skipped[obj] += sim.skipped
                tally.samples[obj].add(sim.samples)
            scalars = _scalars(ev, arrays, n_events, first_event, run.oversample)
            yield EventChunk(scalars, collections)
            first_event += n_events
        close_cached()


@dataclass(frozen=True)
class _Run:
    """The options that fix what is sampled."""

    seed: int
    step_events: int
    oversample: int
    max_redraws: int


class _WriteOptions(TypedDict):
    """The keyword arguments of :func:`write_events` that every way of writing shares."""

    overwrite: bool
    compression: str
    expected_chunks: int
    extra: Callable[[], dict[str, str]]


@dataclass(frozen=True)
class _Simulation:
    """What every stage of one ``generate`` call shares: the planned inputs, the loaded
    models, the jets' gen-muon definition, the run's options and the running tally."""

    planned: list[_Input]
    models: Mapping[str, TrainedFlow]
    gen_muons: GenMuons
    run: _Run
    tally: _Tally

    def chunks(self) -> Iterator[EventChunk]:
        """The simulated events of every input, step by step (:func:`_chunks`)."""
        return _chunks(self.planned, self.models, self.gen_muons, self.run, self.tally)


def _check_request(
    paths: Mapping[str, str | os.PathLike | None],
    run: _Run,
    workers: int,
    out: Path,
    overwrite: bool,
    compression: str,
) -> None:
    """Fail before any work: no model, a bad option, an existing ``out``, a bad codec."""
    if all(p is None for p in paths.values()):
        raise FlashSimError(
            "Nothing to generate: give a trained jets model, a muons model or both "
            "(--jets runs/jets --muons runs/muons; `flashsim train jets` writes runs/jets)."
        )
    for name, value, least in (
        ("step_events", run.step_events, 1),
        ("workers", workers, 1),
        ("oversample", run.oversample, 1),
        ("max_redraws", run.max_redraws, 0),
    ):
        if value < least:
            raise FlashSimError(f"{name} must be at least {least}, not {value}.")
    check_output(out, overwrite)
    parse_compression(compression)


def _load_models(
    paths: Mapping[str, str | os.PathLike | None], device: str, spline: str | None = None
) -> dict[str, TrainedFlow]:
    """The trained flow of each kind given a path (``{"jets": path}``), each checked to
    model a layout of that kind; ``spline`` rebuilds them with that engine instead of their
    own."""
    dev = resolve_device(device)
    models = {
        o: TrainedFlow.load(p, device=dev, spline=spline) for o, p in paths.items() if p is not None
    }
    for obj, model in models.items():
        if model.layout.kind != obj:
            name = (
                model.object
                if model.object == model.layout.kind
                else (f"{model.object} ({model.layout.kind})")
            )
            raise FlashSimError(
                f"{model.checkpoint} models {name}, but it was given as the {obj} "
                f"model; pass it as --{model.layout.kind}."
            )
    return models


def generate(
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    jets: str | os.PathLike | None = None,
    muons: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    spline: str | None = None,
    step_events: int = DEFAULT_STEP_EVENTS,
    oversample: int = 1,
    max_redraws: int = DEFAULT_MAX_REDRAWS,
    workers: int = 1,
    dask_scheduler: str | None = None,
    branch_map: Mapping[str, str | float] | None = None,
    compression: str = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerateSummary:
    """Simulate the reconstructed jets and/or muons of NanoAOD events with trained flows.

    Args:
        inputs: NanoAOD ROOT files, globs, directories or ``.txt`` lists (as ``prep``).
        out: the ROOT file to write (``Events`` tree), atomically.
        jets: a jets run directory (``runs/jets``) or checkpoint; ``None``: no jets.
        muons: the same for muons. At least one of the two.
        seed: same inputs, models, seed, oversample and device: same output, whatever
            ``step_events`` (every object's noise has its own place in its file's stream).
        device: where the flows run: ``auto`` (CUDA if available), ``cpu``, ``cuda``.
        spline: sample with this spline engine (``fused``/``nflows``) instead of each
            checkpoint's own; the weights are the same.
        step_events: events read, simulated and written per step (bounds memory).
        oversample: K, copies written per input event, each with its own flow samples
            (see ``docs/generate.md``: weight 1/K, ``FlashSim_eventIndex``, ``FlashSim_fold``).
        max_redraws: redraws of an object with a non-finite or out-of-range sample before
            its bad targets are clipped (:mod:`flashsim.safe_sampling`).
        workers: worker processes, one input file each (or Dask workers with
            ``dask_scheduler="local"``); the output is the same for any number.
        dask_scheduler: a Dask scheduler address, or ``"local"``, to simulate the files
            there (the output's directory must be shared with the workers).
        branch_map: input branch substitutions, as ``prep --branch``.
        compression: ``lz4`` (default), ``zstd``, ``zlib``, ``lzma``, ``none``, or ``NAME:LEVEL``.
        overwrite: replace ``out`` if it exists.
        progress: show a progress bar.

    Raises:
        FlashSimError: no model, unreadable checkpoint, bad input (collision data,
            missing generator-level branches, HDF5), existing ``out`` without ``overwrite``.
    """
    start = time.perf_counter()
    paths = {"jets": jets, "muons": muons}
    out = Path(out)
    run = _Run(seed, step_events, oversample, max_redraws)
    _check_request(paths, run, workers, out, overwrite, compression)
    models = _load_models(paths, device, spline)
    gen_muons = _jet_gen_muons(models)
    planned = _plan_inputs(inputs, tuple(models), gen_muons, branch_map)
    sim = _Simulation(planned, models, gen_muons, run, _Tally.of(models))
    write: _WriteOptions = {
        "overwrite": overwrite,
        "compression": compression,
        "expected_chunks": -(-_total_events(planned) // step_events),
        "extra": lambda: {"flashsim": json.dumps(_provenance(sim))},
    }
    engine = (workers, dask_scheduler, progress)
    counts = _write(out, sim, engine, write)
    return GenerateSummary(
        out=out,
        events=counts.pop("events"),
        counts=counts,
        skipped=sim.tally.skipped,
        seconds=time.perf_counter() - start,
        models={o: str(m.checkpoint) for o, m in models.items()},
        oversample=oversample,
        samples=sim.tally.samples,
    )


def _total_events(planned: list[_Input]) -> int:
    """Events in all inputs; refuses inputs without any."""
    total = sum(inp.n_events for inp in planned)
    if total == 0:
        raise InputError(
            f"{', '.join(str(i.path) for i in planned)}: no events to simulate (empty Events)."
        )
    return total


def _write(
    out: Path, sim: _Simulation, engine: tuple[int, str | None, bool], write: _WriteOptions
) -> dict[str, int]:
    """Simulate every input into ``out``, in this process or (``workers > 1``, Dask) in
    tasks, with a progress bar of input events; the written counts."""
    workers, dask_scheduler, progress = engine
    total = _total_events(sim.planned)
    with tqdm(
        total=total, unit="ev", unit_scale=True, desc="generate", disable=not progress
    ) as bar:
        if workers > 1 or dask_scheduler:
            tasks = (workers, dask_scheduler, bar.update)
            return _write_parallel(out, sim, tasks, write)
        on_chunk = lambda n: bar.update(n // sim.run.oversample)  # noqa: E731 (rows -> events)
        return write_events(out, sim.chunks(), on_chunk=on_chunk, **write)


def _write_parallel(
    out: Path,
    sim: _Simulation,
    engine: tuple[int, str | None, Callable[[int], object]],
    write: _WriteOptions,
) -> dict[str, int]:
    """Simulate each input in its own task (processes or Dask), then merge the parts into
    ``out`` in input order (:mod:`flashsim.generate_files`); the written counts."""
    from flashsim.generate_files import FileTask, part_chunks, simulate_file, spool_next_to
    from pipelines.prep import execute

    workers, dask_scheduler, on_events = engine
    models, run = sim.models, sim.run
    checkpoints = {o: str(m.checkpoint) for o, m in models.items()}
    splines = {o: m.config.spline for o, m in models.items()}  # the engine each one runs
    device = str(next(iter(models.values())).device)
    with spool_next_to(out) as spool:
        tasks, first_event = [], 0
        for inp in sim.planned:
            if inp.n_events:
                part = str(spool / f"part-{inp.index:06d}.root")
                args = (inp.index, inp, first_event, checkpoints, device, sim.gen_muons, run, part)
                tasks.append(FileTask(*args, splines=splines))
            first_event += inp.n_events
        results = execute(tasks, workers, dask_scheduler, on_events, fn=simulate_file)
        for result in results:
            sim.tally.add(result.tally)
        parts = [r.part for r in results]
        return write_events(out, part_chunks(parts, run.step_events * run.oversample), **write)


def _provenance(sim: _Simulation) -> dict[str, object]:
    """The ``flashsim`` string of the output file: models, options, inputs, counts."""
    models, run, tally = sim.models, sim.run, sim.tally
    return {
        "tool": f"flashsim {__version__}",
        "models": {o: str(m.checkpoint) for o, m in models.items()},
        "seed": run.seed,
        "spline": {o: m.config.spline for o, m in models.items()},
        "oversample": run.oversample,
        "weight": f"1/{run.oversample} per row (each input event is written oversample times)",
        "max_redraws": run.max_redraws,
        "jets_gen_muons": sim.gen_muons,
        "inputs": [str(i.path) for i in sim.planned],
        "skipped": dict(tally.skipped),
        "samples": {o: c.to_dict() for o, c in tally.samples.items()},
        "target_values": {o: m.target_values is not None for o, m in models.items()},
    }
