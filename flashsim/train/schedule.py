"""The learning-rate schedule: cosine annealing stepped once per epoch (as the original
FlashSim training), in cycles.

A run trained as planned has one cycle: the learning rate falls from ``lr`` at epoch 1
to 0 after the last epoch (``CosineAnnealingLR(T_max=epochs)``). A run extended with
``flashsim train OBJECT --resume --epochs N`` gets a new cycle that starts where the
previous one ends: the learning rate is set back to ``lr`` (a *warm restart*, SGDR,
Loshchilov & Hutter 2017) and anneals to 0 over the added epochs. Within cycle
``[s, e)`` the learning rate of 0-based epoch ``k`` is::

    lr_k = lr * (1 + cos(pi * (k - s) / (e - s))) / 2

The cycle boundaries are :attr:`flashsim.presets.HParams.restarts` (saved in the
checkpoints and ``run.json``), so a resumed extended run continues bit-for-bit.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from flashsim.presets import HParams


def cosine_schedule(optimizer: torch.optim.Optimizer, hp: HParams) -> CosineAnnealingLR:
    """The schedule of a new run (its first cycle); a resumed run loads its saved state
    into it (the state holds the cycle's length)."""
    start, end = hp.cycle_of(0)
    return CosineAnnealingLR(optimizer, T_max=end - start)


def restart_if_due(scheduler: LRScheduler, hp: HParams, epoch: int) -> LRScheduler:
    """The schedule for 0-based ``epoch``: ``scheduler``, or at the first epoch of a new
    cycle (and only once: a restarted schedule stands at step 0) a fresh cosine over that
    cycle, starting again from the base learning rate."""
    if epoch not in hp.restarts or scheduler.last_epoch == 0:
        return scheduler
    optimizer = scheduler.optimizer
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    start, end = hp.cycle_of(epoch)
    return CosineAnnealingLR(optimizer, T_max=end - start)


def describe_schedule(hp: HParams) -> str:
    """One phrase for the run summary, e.g. ``cosine annealing over 600 epochs``."""
    if not hp.restarts:
        return f"cosine annealing over {hp.epochs} epochs"
    cycles = ", ".join(f"{s + 1}-{e}" for s, e in hp.cycles)
    return f"cosine annealing in {len(hp.cycles)} cycles (epochs {cycles}; warm restarts)"


def schedule_record(hp: HParams) -> dict:
    """What ``run.json`` says of the schedule: its cycles (1-based epochs, inclusive)."""
    return {
        "kind": "cosine annealing per epoch, warm restart at each extension",
        "lr": hp.lr,
        "cycles": [{"first_epoch": s + 1, "last_epoch": e} for s, e in hp.cycles],
    }
