"""torch.distributed plumbing: join a process group from the torchrun environment,
reduce metrics across ranks, and launch N local processes (``--nproc``).

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``
set) :func:`setup` initialises the default process group: NCCL on CUDA, gloo on CPU.
:func:`launch` starts ``nproc`` processes on this machine (spawn; they die with it),
serves their rendezvous store itself on a loopback port the system picks (nothing on
disk, no port to pick), runs a function on each, and returns rank 0's result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from flashsim.children import spawn_context
from flashsim.errors import FlashSimError


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
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, owns_group=True)


def teardown(ctx: DistContext, failed: bool = False) -> None:
    """Destroy the process group if :func:`setup` created it; after a barrier unless this
    rank ``failed`` (the others may be waiting in another collective: a barrier would
    never return, and this rank's exit is what stops them)."""
    if ctx.owns_group and dist.is_initialized():
        if not failed:
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

LAUNCHER_ENV = "FLASHSIM_NPROC"
"""Set by :func:`launch` in the processes it starts: their number."""
_LOOPBACK = "127.0.0.1"


def launched_by_nproc() -> bool:
    """Whether this process is a rank that :func:`launch` started (not torchrun's)."""
    return LAUNCHER_ENV in os.environ


def _rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": _LOOPBACK,
        "MASTER_PORT": str(port),
        # The launcher serves the rendezvous store, as torchrun's agent does: every rank,
        # rank 0 included, connects to it as a client.
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        LAUNCHER_ENV: str(nproc),
    }


def _run_rank(
    rank: int,
    nproc: int,
    port: int,
    report: Connection,
    log_level: int | None,
    fn: Callable[..., Any],
    args: tuple,
) -> None:
    """One rank: ``fn(*args)``; reports ``("result", rank, value)`` (rank 0), ``("error",
    rank, FlashSimError)`` or ``("crash", rank, traceback text)`` to the launcher."""
    os.environ.update(_rank_env(rank, nproc, port))
    if log_level is not None and rank == 0:
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
        report.send(("error", rank, err))
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, quietly
        sys.exit(128 + signal.SIGINT)
    except Exception:
        report.send(("crash", rank, traceback.format_exc()))
        sys.exit(1)
    if rank == 0:
        report.send(("result", 0, value))


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` local processes forming one process group.

    Each process sees ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as under torchrun, so ``fn``
    calls :func:`setup` as usual; this process serves their rendezvous store on a
    loopback port the system picks (nothing on disk). The processes die with this one,
    even by ``kill -9`` (:func:`flashsim.children.spawn_context`); when one fails, the
    others are stopped at once. Ctrl-C/SIGTERM reaching this parent are forwarded to the
    workers as SIGINT (their stop request). ``fn`` and ``args`` must be picklable.

    Returns:
        rank 0's return value.

    Raises:
        FlashSimError: with the first worker's message when a worker raised one, or
            saying which worker died and how.
    """
    _check_launchable(nproc)
    parent_logger = logging.getLogger("flashsim.train")
    log_level = parent_logger.getEffectiveLevel() if parent_logger.handlers else None
    ctx = spawn_context()
    store = dist.TCPStore(_LOOPBACK, 0, is_master=True, wait_for_workers=False)
    procs: list[BaseProcess] = []
    reports: list[Connection] = []
    try:
        for rank in range(nproc):
            reader, writer = ctx.Pipe(duplex=False)
            reports.append(reader)
            procs.append(
                ctx.Process(
                    target=_run_rank,
                    args=(rank, nproc, store.port, writer, log_level, fn, args),
                    name=f"flashsim-train-rank{rank}",
                )
            )
            procs[-1].start()
            writer.close()  # the rank holds the only write end: EOF when it exits
        with _forwarded_signals(procs):
            messages, failed = _join(procs, reports)
    finally:
        _stop(procs)  # no rank outlives the launch (one failed, or this process is stopping)
        for reader in reports:
            reader.close()
        del store
    return _outcome(messages, failed, nproc)


def _check_launchable(nproc: int) -> None:
    if nproc < 1:
        raise FlashSimError(f"--nproc must be >= 1 (got {nproc}).")
    if env_world_size() > 1 or (dist.is_available() and dist.is_initialized()):
        raise FlashSimError(
            "--nproc launches its own processes; it cannot be used inside torchrun or an "
            "existing process group. Drop --nproc (torchrun already sets the world size)."
        )


@contextlib.contextmanager
def _forwarded_signals(procs: Sequence[BaseProcess]) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM to this process reach the workers as SIGINT."""

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
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


def _receive(report: Connection, messages: list[tuple], open_reports: set[Connection]) -> None:
    try:
        messages.append(report.recv())
    except (EOFError, OSError):  # the rank exited: nothing more from it
        open_reports.discard(report)


def _join(
    procs: Sequence[BaseProcess], reports: Sequence[Connection]
) -> tuple[list[tuple], tuple[int, int] | None]:
    """Wait for the workers, collecting their messages, until all exited or one failed:
    the messages and ``(rank, exit code)`` of the first that failed (``None``)."""
    messages: list[tuple] = []
    running = {p.sentinel: rank for rank, p in enumerate(procs)}
    open_reports = set(reports)
    failed = None
    while running and failed is None:
        for ready in wait([*running, *open_reports]):
            if not isinstance(ready, int):  # a report
                assert isinstance(ready, Connection)
                _receive(ready, messages, open_reports)
                continue
            rank = running.pop(ready)
            procs[rank].join()
            code = procs[rank].exitcode
            if code and failed is None:
                failed = (rank, code)
    for report in list(open_reports):  # what the ranks sent just before they exited
        while report in open_reports and report.poll():
            _receive(report, messages, open_reports)
    return messages, failed


def _stop(procs: Sequence[BaseProcess]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        if p.pid is not None:
            p.join()


def _outcome(messages: list[tuple], failed: tuple[int, int] | None, nproc: int) -> Any:
    for kind, _, value in messages:
        if kind == "error":
            raise value if isinstance(value, FlashSimError) else FlashSimError(str(value))
    for kind, rank, value in messages:
        if kind == "crash":
            raise RuntimeError(f"Training process {rank} of {nproc} failed:\n{value}")
    if failed is not None:
        rank, code = failed
        if code == 128 + signal.SIGINT:
            raise KeyboardInterrupt
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        raise FlashSimError(
            f"Training process {rank} of {nproc} {how}, so the others were stopped (SIGKILL "
            "often means that the system ran out of memory). The checkpoints written so "
            "far are whole: --resume continues from the last one."
        )
    for kind, _, value in messages:
        if kind == "result":
            return value
    return None
