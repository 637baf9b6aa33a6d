"""Measurement harness: one timed trial of a loader, the interleaved schedule of trials,
and the statistics over repeats.

A *trial* opens a loader, consumes ``warmup`` batches (or training steps) that are not
timed, then times exactly ``steps`` more. Two modes:

* ``"load"``: batches only; throughput in rows/s delivered as tensors on the device.
  The whole first epoch is the warm-up and the clock starts at an epoch boundary:
  otherwise rows a prefetching loader buffered before the clock started (a shuffle
  window is ~130 k rows) would count as delivered for free.
* ``"train"``: one optimizer step of the real flow per batch. The time blocked in
  ``next(iterator)`` is the data wait; the compute is timed on the device
  (:class:`~flashsim.bench.resources.BusyTimer`).

Examples
--------
>>> list(interleaved(["a", "b"], ["load"], repeats=2))
[(0, 'a', 'load'), (0, 'b', 'load'), (1, 'b', 'load'), (1, 'a', 'load')]
>>> summarize([3.0, 1.0, 2.0])["median"]
2.0
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from flashsim.bench.resources import BusyTimer, NvmlProbe, ResourceSampler
from flashsim.errors import FlashSimError
from loaders.base import BaseLoader

MODES: tuple[str, ...] = ("load", "train")


@dataclass
class Trainer:
    """What a training trial needs: a fresh model and optimizer, and the loss of a batch.

    ``make`` returns ``(model, optimizer)`` already on the device, built the same way
    (same seed) for every loader; ``loss`` maps ``(model, x, y)`` to a scalar tensor.
    ``make_step``, if given, maps ``(model, optimizer)`` to the whole optimiser step
    ``step(x, y) -> loss`` (e.g. compiled or a CUDA graph, :mod:`flashsim.train.step`)
    and replaces the plain one built from ``loss``.
    """

    make: Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]]
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    make_step: Callable | None = None


def batch_stream(
    loader: BaseLoader, start_epoch: int = 0
) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """Batches of ``loader`` without end: epoch after epoch (``set_epoch(start_epoch)``,
    then the next, ...).

    Restarting an epoch is part of a loader's cost, so it happens inside the timed
    ``next`` call. Raises :class:`FlashSimError` if an epoch yields no batch.
    """
    epoch = start_epoch
    while True:
        batches = batch_stream_epoch(loader, epoch)
        try:
            yield from batches
        finally:
            batches.close()
        epoch += 1


def batch_stream_epoch(
    loader: BaseLoader, epoch: int
) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """The batches of epoch ``epoch`` of ``loader``, closing its iterator at the end.

    Raises :class:`FlashSimError` if the epoch yields no batch.
    """
    loader.set_epoch(epoch)
    it = iter(loader)
    n = 0
    try:
        for batch in it:
            n += 1
            yield batch
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    if n == 0:
        raise FlashSimError(
            f"The {getattr(loader, 'kind', '?')} loader yielded no batch in an epoch: its "
            f"split has fewer rows ({getattr(loader, 'n_rows', '?')}) than one batch. "
            "Use a smaller --batch-size or more data."
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trial(
    open_loader: Callable[[], BaseLoader],
    mode: str,
    steps: int | None,
    warmup: int,
    device: torch.device,
    trainer: Trainer | None = None,
    sample_interval_s: float = 0.1,
    nvml: NvmlProbe | None = None,
) -> dict:
    """Open a loader and time ``steps`` batches (``mode="load"``) or training steps
    (``mode="train"``).

    Load mode: epoch 0 is consumed untimed, then ``steps`` batches are timed from the
    start of epoch 1 (``None``: one epoch, ``len(loader)``). Train mode: ``warmup``
    untimed optimiser steps, then ``steps`` timed ones (``steps`` is required).

    Returns a dict of figures (seconds, rows, rates in rows/s and steps/s, fractions in
    0-1, memory in MiB): ``open_s``, ``timed_steps``, ``wall_s``, ``rows``,
    ``rows_per_s``, ``steps_per_s``, ``data_wait_s``, ``data_wait_fraction``,
    ``device_busy_s``, ``device_busy_fraction`` (the last four ``None`` in load mode),
    ``cold_epoch_rows_per_s`` (load: epoch 0's rows over open + epoch 0 time),
    ``loss_first``, ``loss_last`` (train), and the :meth:`ResourceSampler.summary` keys.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    training = None  # train mode: (trainer, steps, model, optimizer)
    if mode == "train":
        if trainer is None or steps is None:
            raise ValueError("a training trial needs a Trainer and a number of steps")
        model, optimizer = trainer.make()
        model.train()
        training = (trainer, steps, model, optimizer)
    gc.collect()
    with ResourceSampler(sample_interval_s, device, nvml) as sampler:
        t_open = time.perf_counter()
        loader = open_loader()
        open_s = time.perf_counter() - t_open
        if training is None:
            figures = _time_loading(loader, steps, device, sampler, open_s)
        else:
            stream = batch_stream(loader)
            try:
                figures = _time_training(stream, warmup, device, sampler, *training)
            finally:
                stream.close()
    figures["open_s"] = open_s
    figures.update(sampler.summary())
    del loader, training
    gc.collect()
    return figures


def _rates(steps: int, rows: int, wall: float) -> dict[str, float]:
    """What every trial reports first: timed steps, wall seconds, rows, and the rates."""
    return {
        "timed_steps": steps,
        "wall_s": wall,
        "rows": rows,
        "rows_per_s": rows / wall,
        "steps_per_s": steps / wall,
    }


def _time_loading(
    loader: BaseLoader,
    steps: int | None,
    device: torch.device,
    sampler: ResourceSampler,
    open_s: float,
) -> dict:
    # Warm-up: the whole of epoch 0, which also gives the cold-start rate.
    t0 = time.perf_counter()
    warm_rows = 0
    for x, _y in batch_stream_epoch(loader, 0):
        warm_rows += x.shape[0]
    _sync(device)
    warm_s = time.perf_counter() - t0
    steps = len(loader) if steps is None else steps
    stream = batch_stream(loader, start_epoch=1)
    sampler.start_window()
    rows = 0
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            x, _y = next(stream)
            rows += x.shape[0]
        _sync(device)  # rows count only once they are on the device
        wall = time.perf_counter() - t0
    finally:
        stream.close()
    return {
        **_rates(steps, rows, wall),
        "data_wait_s": None,
        "data_wait_fraction": None,
        "device_busy_s": None,
        "device_busy_fraction": None,
        "cold_epoch_rows_per_s": warm_rows / (open_s + warm_s),
        "loss_first": None,
        "loss_last": None,
    }


def _time_training(
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
    warmup: int,
    device: torch.device,
    sampler: ResourceSampler,
    trainer: Trainer,
    steps: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict:
    def plain_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = trainer.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step = trainer.make_step(model, optimizer) if trainer.make_step else plain_step
    for _ in range(warmup):
        step(*next(stream))
    _sync(device)
    timer = BusyTimer(device)
    sampler.start_window()
    rows = 0
    wait = 0.0
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        t_wait = time.perf_counter()
        x, y = next(stream)
        wait += time.perf_counter() - t_wait
        rows += x.shape[0]
        with timer.span():
            losses.append(step(x, y))
    _sync(device)
    wall = time.perf_counter() - t0
    busy = timer.total_s()
    return {
        **_rates(steps, rows, wall),
        "data_wait_s": wait,
        "data_wait_fraction": min(1.0, wait / wall),
        "device_busy_s": busy,
        "device_busy_fraction": min(1.0, busy / wall),
        "cold_epoch_rows_per_s": None,
        # Read back after the loop: a .item() per step would synchronise a GPU.
        "loss_first": float(losses[0]) if losses else None,
        "loss_last": float(losses[-1]) if losses else None,
    }


def interleaved(
    loaders: Sequence[str], modes: Iterable[str], repeats: int
) -> Iterator[tuple[int, str, str]]:
    """The trial order ``(repeat, loader, mode)``: round-robin over loaders within each
    repeat, the starting loader rotated from one repeat to the next, so slow drift of a
    shared machine (and being first or last) hits every loader alike."""
    modes = tuple(modes)
    n = len(loaders)
    for r in range(repeats):
        k = r % n if n else 0
        for name in (*loaders[k:], *loaders[:k]):
            for mode in modes:
                yield r, name, mode


def summarize(values: Sequence[float | None]) -> dict | None:
    """Median, min, max and relative half-range of repeated values (``None`` if no value).

    ``spread`` is ``(max - min) / 2 / median``: the +/- fraction shown in the table.
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread": (hi - lo) / 2 / med if med else 0.0,
        "values": vals,
    }
