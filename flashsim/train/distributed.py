"""torch.distributed plumbing: join a process group from the torchrun environment,
reduce metrics across ranks, and launch N local processes (``--nproc``).

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``
set) :func:`setup` initialises the default process group: NCCL on CUDA, gloo on CPU.
:func:`launch` starts ``nproc`` processes on this machine with
``torch.multiprocessing`` (spawn), rendezvous through a file in a temporary
directory (no port to pick), runs a function on each, and returns rank 0's result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queue_module
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from flashsim.errors import FlashSimError

if TYPE_CHECKING:
    import multiprocessing.queues

    from torch.multiprocessing.spawn import ProcessContext

INIT_METHOD_ENV = "FLASHSIM_DIST_INIT_METHOD"
"""Set by :func:`launch`: the rendezvous URL of the local process group."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes (1 for a single process).
        local_rank: rank on this machine (selects the GPU).
        owns_group: this module initialised the group and must destroy it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device_type: str) -> DistContext:
    """Join (or reuse) the default process group; a no-op for a single process.

    Args:
        device_type: ``"cuda"`` (NCCL backend, one GPU per local rank) or ``"cpu"`` (gloo).
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            owns_group=False,
        )
    world_size = env_world_size()
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise FlashSimError(
            "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support."
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    init_method = os.environ.get(INIT_METHOD_ENV, "env://")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def all_reduce(
    values: Sequence[float], ctx: DistContext, device: torch.device, op: str = "sum"
) -> list[float]:
    """Element-wise sum (or ``"max"``) of ``values`` over all ranks (identity for one process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- local launcher


def _run_rank(
    local_rank: int,
    nproc: int,
    init_method: str,
    results: multiprocessing.queues.Queue[tuple],
    log_level: int | None,
    fn: Callable[..., Any],
    args: tuple,
) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            INIT_METHOD_ENV: init_method,
        }
    )
    if log_level is not None and local_rank == 0:
        # The parent printed flashsim.train messages; rank 0 prints them for it now.
        logger = logging.getLogger("flashsim.train")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(log_level)
    # Share the cores instead of every rank starting one thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        value = fn(*args)
    except FlashSimError as err:
        results.put(("error", local_rank, err))
        sys.exit(2)
    if local_rank == 0:
        results.put(("result", 0, value))


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` local processes forming one process group.

    Each process sees ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as under torchrun, so ``fn``
    calls :func:`setup` as usual. Ctrl-C/SIGTERM reaching this parent are forwarded to
    the workers as SIGINT (their stop request). ``fn`` and ``args`` must be picklable.

    Returns:
        rank 0's return value.

    Raises:
        FlashSimError: with the first worker's message when a worker raised one.
    """
    import torch.multiprocessing as mp

    _check_launchable(nproc)
    parent_logger = logging.getLogger("flashsim.train")
    log_level = parent_logger.getEffectiveLevel() if parent_logger.handlers else None
    results = mp.get_context("spawn").Queue()
    messages: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="flashsim-dist-") as tmp:
        init_method = Path(tmp, "rendezvous").as_uri()
        procs = mp.start_processes(
            _run_rank,
            args=(nproc, init_method, results, log_level, fn, args),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        with _forwarded_signals(procs), _quiet_spawn_log():
            failure = _join(procs, results, messages)
        # Collect what is still in the queue (up to ~2 s for the last messages).
        for _ in range(20):
            _drain(results, messages)
            if any(m[0] in ("result", "error") for m in messages):
                break
            with contextlib.suppress(queue_module.Empty):
                messages.append(results.get(timeout=0.1))
    return _outcome(messages, failure)


def _check_launchable(nproc: int) -> None:
    if nproc < 1:
        raise FlashSimError(f"--nproc must be >= 1 (got {nproc}).")
    if env_world_size() > 1 or (dist.is_available() and dist.is_initialized()):
        raise FlashSimError(
            "--nproc launches its own processes; it cannot be used inside torchrun or an "
            "existing process group. Drop --nproc (torchrun already sets the world size)."
        )


def _drain(results: multiprocessing.queues.Queue[tuple], messages: list[tuple]) -> None:
    while True:
        try:
            messages.append(results.get_nowait())
        except queue_module.Empty:
            return


@contextlib.contextmanager
def _forwarded_signals(procs: ProcessContext) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM to this process reach the workers as SIGINT."""

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs.processes:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_spawn_log() -> Iterator[None]:
    # When a worker fails, torch terminates the others and logs each termination; the
    # worker's own message (see _outcome) is what the user needs.
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        spawn_log.setLevel(level)


def _join(
    procs: ProcessContext, results: multiprocessing.queues.Queue[tuple], messages: list[tuple]
) -> BaseException | None:
    """Wait for the workers, collecting their messages; the failure, if one failed."""
    from torch.multiprocessing.spawn import ProcessException

    while True:
        _drain(results, messages)
        try:
            if procs.join(timeout=0.2):
                return None
        except ProcessException as err:
            return err


def _outcome(messages: list[tuple], failure: BaseException | None) -> Any:
    errors = [m for m in messages if m[0] == "error"]
    if errors:
        err = errors[0][2]
        raise err if isinstance(err, FlashSimError) else FlashSimError(str(err))
    if failure is not None:
        raise failure
    for kind, _, value in messages:
        if kind == "result":
            return value
    return None
