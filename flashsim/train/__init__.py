"""Training of the conditional spline flows (``flashsim train``).

>>> from flashsim.train import TrainConfig, train                   # doctest: +SKIP
>>> result = train(TrainConfig("jets", data="shards/", epochs=3))    # doctest: +SKIP

Modules: :mod:`~flashsim.train.config` (options and result), :mod:`~flashsim.train.trainer`
(the loop), :mod:`~flashsim.train.checkpoint` (atomic save/load, RNG state),
:mod:`~flashsim.train.metrics` (JSON lines, TensorBoard, loss plot),
:mod:`~flashsim.train.distributed` (torchrun/DDP, ``--nproc`` launcher),
:mod:`~flashsim.train.interrupt` (Ctrl-C handling).
"""

from __future__ import annotations

from flashsim.train.config import TrainConfig, TrainResult

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    # The loop imports torch, nflows and the loaders: load it only when used, so that
    # `flashsim.model.load_model` (which needs only the checkpoint module) stays light.
    if name in ("train", "NonFiniteLossError"):
        from flashsim.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'flashsim.train' has no attribute {name!r}")
