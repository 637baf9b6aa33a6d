"""Training of the conditional spline flows (``flashsim train``).

>>> from flashsim.train import TrainConfig, train                   # doctest: +SKIP
>>> result = train(TrainConfig("jets", data="shards/", epochs=3))    # doctest: +SKIP

Modules: :mod:`~flashsim.train.config` (options and result), :mod:`~flashsim.train.trainer`
(one run, start to end), :mod:`~flashsim.train.setup` (checks, hyperparameters, loaders),
:mod:`~flashsim.train.loop` (the passes of an epoch), :mod:`~flashsim.train.checkpointing`
(a run's checkpoints; the file format is :mod:`flashsim.checkpoint`),
:mod:`~flashsim.train.resume` (what a resumed run restores and refuses),
:mod:`~flashsim.train.schedule` (cosine cycles, warm restarts of an extended run),
:mod:`~flashsim.train.about` (the run's summary, run.json, resume command),
:mod:`~flashsim.train.runlog` (train.log, run.json), :mod:`~flashsim.train.metrics`
(JSON lines, TensorBoard, loss plot),
:mod:`~flashsim.train.distributed` (torchrun/DDP, ``--nproc`` launcher),
:mod:`~flashsim.train.interrupt` (Ctrl-C handling).
"""

from __future__ import annotations

from flashsim.train.config import TrainConfig, TrainResult

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    # The loop imports torch, nflows and the loaders: load it only when used, so that
    # importing the options (TrainConfig) stays light.
    if name in ("train", "NonFiniteLossError"):
        from flashsim.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'flashsim.train' has no attribute {name!r}")
