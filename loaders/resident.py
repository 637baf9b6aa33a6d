"""DeviceResidentLoader: the whole split on the device, batches drawn by index.

The split is read once (any store format) into two contiguous device tensors,
targets ``(N, n_targets)`` and conditioning ``(N, n_conditioning)``
(5 M jets: 5e6 x 31 x 4 B = 620 MB). Each epoch draws one permutation with
``torch.randperm`` from a generator seeded by ``(seed, epoch)`` (on the CPU, so the
order is the same whatever the device), moves it to the device, and every batch is
two ``index_select`` calls there: no host work, no transfers in the loop.

Ranks take contiguous parts of the permutation with the padding rule of
:mod:`loaders.plan` (each rank holds the whole split; only its indices differ).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from flashsim.layouts import DTYPE
from loaders.base import BaseLoader, Batch, LoaderOptions
from loaders.plan import epoch_rng, rows_yielded, segment
from loaders.sources import StoreInfo, open_units


def split_bytes(n_rows: int, n_columns: int) -> int:
    """Device bytes the resident loader needs for a split."""
    return n_rows * n_columns * DTYPE.itemsize


class DeviceResidentLoader(BaseLoader):
    """Shuffled batches of a split held entirely in device (or host) memory.

    Args:
        store: the located store (:func:`loaders.sources.locate`).
        num_workers: threads decoding zarr chunks while loading (0: 4).

    ``options`` (or keywords): :class:`~loaders.base.LoaderOptions`, as in
    :func:`loaders.open`.
    """

    kind = "resident"

    def _open(self, store: StoreInfo, split: str, options: LoaderOptions) -> int:
        self._units = open_units(store, split)
        return self._units.n_rows

    def _ready(self) -> None:
        units = self._units
        del self._units  # only needed to load the rows
        rows = np.empty((units.n_rows, self.layout.n_columns), DTYPE)
        units.read_all(rows, threads=self.num_workers or 4)
        host = torch.from_numpy(rows)
        # Two contiguous tensors, so each batch is two plain index_select gathers.
        self.x = host[:, self.layout.targets].contiguous().to(self.device)
        self.y = host[:, self.layout.conditioning].contiguous().to(self.device)
        del rows, host

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's row indices for ``epoch``, in order, on the device (int64)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(int(epoch_rng(self.seed, epoch, 2).integers(2**62)))
            order = torch.randperm(self.n_rows, generator=gen)
        else:
            order = torch.arange(self.n_rows)
        parts = [
            order[a:b] for a, b in segment(self.n_rows, self.world_size, self.rank, self.drop_last)
        ]
        mine = torch.cat(parts) if parts else order[:0]
        used = rows_yielded(self.n_rows, self.world_size, self.batch_size, self.drop_last)
        return mine[:used].to(self.device)

    def _batches(self, epoch: int, start_batch: int) -> Generator[Batch, None, None]:
        idx = self.epoch_indices(epoch)
        b = self.batch_size
        for start in range(start_batch * b, len(idx), b):
            i = idx[start : start + b]
            yield self.x.index_select(0, i), self.y.index_select(0, i)
