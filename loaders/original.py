"""The original FlashSim training datasets, re-created faithfully as baselines.

The original trainings (``jets_trainings.py``, ``muons_trainings.py``) fed the flow
through ``torch.utils.data.DataLoader(ds, batch_size=2048, shuffle=True,
pin_memory=True, num_workers=9)`` over per-row ``Dataset.__getitem__``:

* jets (:class:`OriginalJetsDataset`): the HDF5 ``data`` rows loaded once into two
  torch tensors, ``__getitem__`` returning ``(x[idx], y[idx])``;
* muons (:class:`OriginalMuonsDataset`): several HDF5 files, the file of a row found
  with ``np.searchsorted`` over the cumulative file sizes, files opened lazily (so
  once per worker), and two ``h5py`` reads per row (conditioning, then targets).

Both then go through the default collate (2048 tuples stacked per batch) and
``x.to(device, non_blocking=True)``. We keep that access pattern and its costs.

What we changed, and why:

* Bug fix (muons): the original computed
  ``idx_in_file = index - strides[max(0, file_idx - 1)]``, which is negative for rows
  of the first file; it only read the right row because h5py wraps negative indices
  (an earlier form, ``strides[file_idx - 1]``, subtracted the total size). Rows of
  the first file now use offset 0.
* Bug fix (jets): the original read only the first of its ``h5_paths``; all given
  files are read.
* The split is the store's ``data`` (train) or ``val`` dataset, and the column
  slices come from :mod:`flashsim.layouts` rather than literals (same values).
* Reproducibility and DDP: ``shuffle=True`` drew an unseeded order. The same uniform
  per-row shuffle now comes from a ``DistributedSampler`` seeded by ``seed`` and the
  epoch (also with one process), so the order is a function of ``(seed, epoch)`` and
  ranks get disjoint parts with equal batch counts (the sampler pads by repeating the
  first ``< world_size`` indices of the epoch, or drops them with ``drop_last``).
  Resuming mid-epoch skips the consumed indices of that same order.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flashsim.errors import FlashSimError
from flashsim.layouts import JETS, MUONS
from flashsim.store import HDF5_SPLIT_DATASETS
from loaders.base import BaseLoader, Batch, LoaderOptions
from loaders.sources import StoreInfo

Paths = Sequence[str | os.PathLike]


class OriginalJetsDataset(Dataset):
    """The original jets dataset: all rows in memory, one row per ``__getitem__``.

    Args:
        h5_paths: HDF5 files with a ``dataset`` of ``(N, 31)`` jet rows.
        limit: keep the first ``limit`` rows (``None``: all).
        dataset: ``"data"`` (train) or ``"val"``.
    """

    def __init__(self, h5_paths: Paths, limit: int | None = None, dataset: str = "data") -> None:
        self.h5_paths = [str(p) for p in h5_paths]
        blocks = []
        for path in self.h5_paths:
            with h5py.File(path, "r") as f:
                blocks.append(f[dataset][:limit])
        data = np.concatenate(blocks)[:limit]
        self.x_train = torch.tensor(data[:, JETS.targets], dtype=torch.float32)
        self.y_train = torch.tensor(data[:, JETS.conditioning], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.y_train)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train[idx], self.y_train[idx]


class OriginalMuonsDataset(Dataset):
    """The original muons dataset: per-row h5py reads across several files.

    Args:
        h5_paths: HDF5 files with a ``dataset`` of ``(N, 52)`` muon rows.
        limit: at most this many rows (``-1``: all).
        dataset: ``"data"`` (train) or ``"val"``.
    """

    def __init__(self, h5_paths: Paths, limit: int = -1, dataset: str = "data") -> None:
        self.limit = int(5e9) if limit == -1 else int(limit)
        self.h5_paths = [str(p) for p in h5_paths]
        self.dataset = dataset
        sizes = []
        for path in self.h5_paths:
            with h5py.File(path, "r") as f:
                sizes.append(len(f[dataset]))
        self.strides = np.cumsum(sizes)
        self._archives: list[h5py.File] | None = None

    @property
    def archives(self) -> list[h5py.File]:
        if self._archives is None:  # lazy: opened in each worker process on first use
            self._archives = [h5py.File(p, "r") for p in self.h5_paths]
        return self._archives

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        file_idx = int(np.searchsorted(self.strides, index, side="right"))
        idx_in_file = index - (self.strides[file_idx - 1] if file_idx > 0 else 0)  # fixed
        # As the original: the dataset looked up by name for each of the two reads.
        y = self.archives[file_idx][self.dataset][idx_in_file, MUONS.conditioning]
        x = self.archives[file_idx][self.dataset][idx_in_file, MUONS.targets]
        return torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        return int(min(self.limit, self.strides[-1])) if len(self.strides) else 0

    def __getstate__(self) -> dict:  # open h5py handles must not travel to workers
        return {**self.__dict__, "_archives": None}


def _fresh_archives(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a forked worker opens its own HDF5 handles."""
    info = torch.utils.data.get_worker_info()  # never None in a worker
    if info is not None and isinstance(info.dataset, OriginalMuonsDataset):
        info.dataset._archives = None


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` that can skip the first ``skip`` indices of its epoch."""

    def __init__(self, *args, skip: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


class OriginalLoader(BaseLoader):
    """An original dataset behind the standard DataLoader (default collate).

    Args:
        store: the located HDF5 store(s) (:func:`loaders.sources.locate`).
        num_workers: DataLoader worker processes (the original used 9).
        prefetch: DataLoader ``prefetch_factor`` (with workers).
        limit: rows to use, as the original's ``limit`` argument (``None``: all).

    ``options`` (or keywords): :class:`~loaders.base.LoaderOptions`, as in
    :func:`loaders.open`.
    """

    def __init__(
        self,
        store: StoreInfo,
        split: str = "train",
        options: LoaderOptions | None = None,
        *,
        kind: str,
        limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.kind = kind
        self.limit = limit
        super().__init__(store, split, options, **kwargs)

    def _open(self, store: StoreInfo, split: str, options: LoaderOptions) -> int:
        if split not in HDF5_SPLIT_DATASETS:
            raise FlashSimError(f"Unknown split {split!r}; choose one of train, val.")
        name = HDF5_SPLIT_DATASETS[split]
        paths = [str(p) for p in store.paths]
        try:
            if self.kind == "original-jets":
                self.dataset: Dataset = OriginalJetsDataset(paths, limit=self.limit, dataset=name)
            else:
                self.dataset = OriginalMuonsDataset(
                    paths, limit=-1 if self.limit is None else self.limit, dataset=name
                )
        except (OSError, KeyError) as err:
            raise FlashSimError(
                f"Cannot read the {name!r} dataset of {', '.join(paths)} ({err}); the original "
                "datasets need HDF5 stores written by `flashsim prep --format hdf5`."
            ) from None
        return len(self.dataset)

    def sampler(self, epoch: int, skip: int = 0) -> ResumableDistributedSampler:
        """The epoch's index sampler for this rank, skipping ``skip`` indices."""
        sampler = ResumableDistributedSampler(
            self.dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            skip=skip,
        )
        sampler.set_epoch(epoch)
        return sampler

    def _batches(self, epoch: int, start_batch: int) -> Generator[Batch, None, None]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler(epoch, skip=start_batch * self.batch_size),
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch if self.num_workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
            worker_init_fn=_fresh_archives if self.num_workers > 0 else None,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
