"""Analysing oversampled FlashSim output: histograms with the right statistical errors.

``flashsim generate --oversample K`` writes every generator-level event K times, each copy
with its own flow samples (``FlashSim_eventIndex`` names the original event,
``FlashSim_fold`` the copy, ``0 .. K-1``). The K copies are not independent events: they
share the generator-level event, so they are correlated, and a histogram that treats them
as independent underestimates its errors. The convention:

* each row (each copy) has weight ``w / K``, with ``w`` the analysis' own event weight:
  the histogram estimates the same yield as the original events, with less noise from the
  simulation of the detector;
* the variance of a bin is ``sum over original events e of (sum over the entries of e's
  copies in that bin of w / K) ** 2``: entries are summed per original event first, then
  squared, so copies that land in the same bin count as one event of weight up to ``w``.

:func:`fill_oversampled` fills a `hist <https://hist.readthedocs.io>`_ histogram with a
``Weight`` storage that way: its values are the plain weighted fill, its variances the
sum-then-square above (which for K = 1 is the usual sum of squared weights).

Examples
--------
>>> import hist, numpy as np
>>> h = hist.Hist(hist.axis.Regular(4, 0, 100, name="pt"), storage=hist.storage.Weight())
>>> pt = np.array([10.0, 12.0, 60.0, 30.0])   # event 0: two copies in bin 0, one in bin 2
>>> event = np.array([0, 0, 0, 1])            # event 1: its only copy here (of K = 3)
>>> h = fill_oversampled(h, pt, event_index=event, oversample=3)
>>> float(h.values()[0]), float(h.variances()[0])   # (1/3 + 1/3) ** 2
(0.6666666666666666, 0.4444444444444444)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import hist


def _flat_bins(h: hist.Hist, values: tuple[np.ndarray, ...]) -> np.ndarray:
    """Each entry's bin as one integer (flow bins included)."""
    # -1 underflow, size overflow. boost-histogram annotates the values as floats, but
    # index is vectorised: arrays in, arrays of indices out.
    indices = h.axes.index(*values)  # type: ignore[arg-type]
    extents = [len(axis) + 2 for axis in h.axes]
    return np.ravel_multi_index(tuple(np.asarray(i) + 1 for i in indices), extents)


def fill_oversampled(
    h: hist.Hist,
    *values: np.ndarray,
    event_index: np.ndarray,
    oversample: int,
    weight: np.ndarray | float | None = None,
) -> hist.Hist:
    """Fill ``h`` with the entries of oversampled events, weight ``weight / oversample``,
    with variances summed per original event before squaring (see the module docstring).

    Args:
        h: a ``hist.Hist`` with ``storage=hist.storage.Weight()``; filled in place.
        values: one flat array per axis of ``h``, one entry per row or object (e.g.
            ``ak.flatten(events.Jet_pt)``). Category axes need every value to be one of
            their categories.
        event_index: the original event of each entry (``FlashSim_eventIndex``, broadcast
            to the objects), same length as ``values``.
        oversample: K, the copies per event (``FlashSim_fold`` runs over ``0 .. K-1``).
        weight: the analysis weight of each entry (or one for all; default 1).

    Returns:
        ``h``.

    Raises:
        ValueError: ``h`` has no variance storage, or the arrays differ in length.
    """
    if not hasattr(h.view(), "variance") or h.storage_type.__name__ != "Weight":
        raise ValueError(
            "fill_oversampled needs a histogram with storage=hist.storage.Weight() "
            f"(this one has {h.storage_type.__name__}): it sets values and variances."
        )
    values = tuple(np.asarray(v) for v in values)
    event_index = np.asarray(event_index, dtype=np.int64)
    if any(len(v) != len(event_index) for v in values):
        raise ValueError("every values array and event_index must have one entry per object")
    w = np.broadcast_to(
        np.asarray(1.0 if weight is None else weight, dtype=np.float64), event_index.shape
    )
    # one entry per (original event, bin): the copies' weights summed, then filled once,
    # so that the histogram's sum of squared weights squares the per-event sums
    bins = _flat_bins(h, values)
    pairs = np.stack([event_index, bins.astype(np.int64)], axis=1)
    unique, first, group = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
    summed = np.bincount(group.ravel(), weights=w / oversample, minlength=len(unique))
    h.fill(*(v[first] for v in values), weight=summed)
    return h
