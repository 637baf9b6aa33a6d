"""Shared test plumbing: where the real NanoAOD samples are, a fixture that skips tests
needing them when they are absent, and test-only helpers that cut small ROOT inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from flashsim.layouts import layout_for
from flashsim.options import FINAL_STATE
from flashsim.train.config import TrainConfig
from flashsim.train.metrics import METRICS_FILE
from pipelines.branches import materialize, resolve_branches
from pipelines.features import FEATURES
from pipelines.nanoaod import (
    EVENTS,
    _by_canonical,
    _cached_events,
    _key_map,
    inspect_nanoaod,
    iterate_steps,
)
from pipelines.tasks import DEFAULT_STEP_EVENTS
from pipelines.writers import write_store

SHARED_DATA = Path(
    os.environ.get("FLASHSIM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
"""The real samples (read-only, never copied into the repo): ``../shared/data`` beside the
checkout, or ``$FLASHSIM_SHARED_DATA``."""
TTBAR = SHARED_DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"  # W+jets despite its name
DY = SHARED_DATA / "nano_dy.root"
REAL_SAMPLES = (TTBAR, DY)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The directory of the real samples; skips the test (with the reason) when absent."""
    missing = [p.name for p in REAL_SAMPLES if not p.is_file()]
    if missing:
        pytest.skip(
            f"real NanoAOD samples absent from {SHARED_DATA} ({', '.join(missing)}); "
            "set FLASHSIM_SHARED_DATA to their directory to run this test"
        )
    return SHARED_DATA


def read_events(path: str | os.PathLike, branches: Sequence[str] | None = None) -> ak.Array:
    """All events of ``path`` (optionally only ``branches``) as one awkward record array
    with canonical field names (small files only: prep itself reads in steps)."""
    events = _cached_events(Path(path))
    keys = _key_map(events)
    names = list(branches) if branches is not None else [k for k in keys if k == keys[k]]
    arrays = events.arrays([keys[n] for n in names], library="ak")
    return ak.zip(_by_canonical(arrays, keys, names), depth_limit=1)


def write_events(path: str | os.PathLike, events: ak.Array | dict, rntuple: bool = False) -> Path:
    """Write NanoAOD-style ``Events`` with branches named ``Collection_field`` (test inputs).

    ``events`` maps branch names (``Jet_pt``, ``Pileup_nPU``) to arrays, jagged for
    per-object branches. Branches sharing a ``Collection_`` prefix must share their
    jagged structure; they are written as one collection: a TTree with flat branches
    and an ``nCollection`` counter, as NanoAOD does, or (``rntuple=True``) an RNTuple
    whose collections have subfields (``Jet.pt``), uproot's RNTuple layout.
    """
    import uproot

    fields = events.fields if isinstance(events, ak.Array) else list(events)
    prefixes = {f.split("_", 1)[0] for f in fields if "_" in f}
    flat, collections = {}, {}
    for name in fields:
        arr = ak.Array(events[name])
        if arr.ndim > 1 and "_" in name:
            prefix, sub = name.split("_", 1)
            collections.setdefault(prefix, {})[sub] = arr
        elif not (name.startswith("n") and name[1:] in prefixes):
            flat[name] = arr  # counters (nJet) are rewritten by uproot
    tree = {prefix: ak.zip(subs, depth_limit=2) for prefix, subs in collections.items()}
    tree.update(flat)
    out = Path(path)
    with uproot.recreate(out) as f:
        if rntuple:
            f.mkrntuple(EVENTS, ak.zip(tree, depth_limit=1))
        else:  # since uproot 5.7, `f[name] = data` writes an RNTuple; mktree writes a TTree
            f.mktree(EVENTS, tree)
    return out


def raw_feature_rows(
    path: str | os.PathLike,
    obj: str,
    *,
    gen_muons: str = FINAL_STATE,
    branch_map: Mapping[str, str | float] | None = None,
    entry_stop: int | None = None,
) -> np.ndarray:
    """Raw (unpreprocessed) rows of ``obj`` in one NanoAOD file, ``(n, 31|52)`` float32.

    The rows prep would write before dropping non-finite values and preprocessing,
    in file order; built-in substitutes apply as in prep.
    """
    info = inspect_nanoaod(path)
    stop = info.n_events if entry_stop is None else min(entry_stop, info.n_events)
    plan = resolve_branches(
        info.branches, (obj,), gen_muons=gen_muons, branch_map=branch_map, path=str(path)
    )
    blocks = [
        FEATURES[obj](materialize(arrays, plan, n_events), gen_muons)
        for _, n_events, arrays in iterate_steps(path, plan.reads, 0, stop, DEFAULT_STEP_EVENTS)
    ]
    return np.concatenate(blocks) if blocks else np.empty((0, layout_for(obj).n_columns), "f4")


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    """The records of a run directory's ``metrics.jsonl`` (empty list if absent)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rows_of(path: str | os.PathLike, split: str | None = None) -> np.ndarray:
    """Every row of a store (``split``: only ``"train"`` or ``"val"``), blocks concatenated."""
    from flashsim.store import SPLITS
    from pipelines.store_info import iter_blocks

    splits = (split,) if split else SPLITS
    blocks = [b for s in splits for b in iter_blocks(path, s)]
    return np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)


# A flow small enough for a 2-core CPU; the learning test uses the real `small` preset.
TINY_FLOW = {"num_flow_steps": 3, "hidden_features": 32, "num_blocks": 1, "num_bins": 8}


def synthetic_rows(obj: str, n: int, seed: int) -> np.ndarray:
    """Rows ``conditioning | targets`` where targets = f(conditioning) + noise (learnable)."""
    layout = layout_for(obj)
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, layout.n_conditioning))
    k = np.arange(layout.n_targets)
    x = (
        0.8 * np.tanh(y[:, k % layout.n_conditioning])
        + 0.4 * y[:, (k + 5) % layout.n_conditioning]
        + 0.25 * rng.normal(size=(n, layout.n_targets))
    )
    return np.concatenate([y, x], axis=1).astype(np.float32)


def make_store(
    tmp_path, obj="jets", fmt="zarr", n_train=8192, n_val=2048, name=None, poison=False, seed=0
):
    layout = layout_for(obj)
    train_rows = synthetic_rows(obj, n_train, seed)
    if poison:
        train_rows[n_train // 2, layout.n_conditioning] = 1e30  # one absurd target value
    suffix = {"zarr": ".zarr", "hdf5": ".h5", "webdataset": "-wds"}[fmt]
    path = tmp_path / (name or f"{obj}{suffix}")
    meta = {"object": obj, "layout": layout.to_dict(), "preprocessing": [], "seed": seed}
    rows = {"train": train_rows, "val": synthetic_rows(obj, n_val, seed + 1)}
    return write_store(path, fmt, rows, meta, chunk_rows=1024)


def quick_config(store, out, **kw) -> TrainConfig:
    """Options of a training run of a tiny flow that takes seconds (``kw`` override them)."""
    opts = {
        "data": store,
        "out": out,
        "epochs": 3,
        "batch_size": 512,
        "flow": dict(TINY_FLOW),
        "lr": 2e-3,
        "progress": False,
        "tensorboard": False,
        "threads": 1,  # tiny flows: one thread is faster, and immune to a busy machine
        "monitor_every": 0,  # the conditioning monitor has its own tests (test_monitor)
    }
    opts.update(kw)
    return TrainConfig("jets", **opts)


GEN_FLOW = {"num_flow_steps": 2, "hidden_features": 16, "num_blocks": 1, "num_bins": 4}
"""A flow small enough to train in a second: what generation tests sample from."""


@pytest.fixture(scope="session")
def generation_workflow(tmp_path_factory) -> dict:
    """toy -> prep -> two tiny trained flows: what a user has before `generate` (shared by
    the generation tests: ``base``, ``toy`` and the run directories ``jets``, ``muons``;
    ``small``: 300 other toy events, a cheap input to generate from)."""
    from flashsim.toy import generate_toy
    from flashsim.train import TrainConfig, train
    from pipelines.prep import prep

    base = tmp_path_factory.mktemp("gen")
    toy = base / "toy.root"
    generate_toy(toy, 3000, seed=3, progress=False)
    generate_toy(base / "small.root", 300, seed=4, progress=False)
    prep([toy], base / "shards", seed=0, progress=False)
    runs = {}
    for obj in ("jets", "muons"):
        runs[obj] = base / "runs" / obj
        train(
            TrainConfig(
                obj,
                data=base / "shards",
                out=runs[obj],
                epochs=1,
                batch_size=256,
                max_steps_per_epoch=5,
                flow=dict(GEN_FLOW),
                progress=False,
                tensorboard=False,
                threads=1,
                monitor_every=0,  # the monitor has its own tests (test_monitor)
            )
        )
    return {"base": base, "toy": toy, "small": base / "small.root", **runs}
