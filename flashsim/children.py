"""Child processes that die with their parent and never outlive it by more than a moment.

:func:`spawn_context` is a ``multiprocessing`` "spawn" context (for
``ProcessPoolExecutor`` or ``ctx.Process``) whose children arm Linux's parent-death signal
(SIGKILL) as their very first act, before they import anything or read their work from
the parent. A child that finds its parent gone while it starts exits quietly (exit code
:data:`ORPHANED_EXIT`): the stock spawn child prints an ``EOFError`` traceback when its
parent was killed, or stopped by a signal, between starting it and sending it its work.
``prep --workers`` and ``train --nproc`` start their workers through it.

The parent-death signal is sent when the *thread* that started the child ends: start
children from a thread that lives as long as they should (the main thread).

Examples
--------
>>> ctx = spawn_context()
>>> p = ctx.Process(target=abs, args=(-1,))
>>> p.start(); p.join(); p.exitcode
0
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
from multiprocessing.context import SpawnContext

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHANED_EXIT = 1
"""Exit code of a child whose parent went away before it got its work."""


def _arm_parent_death_signal() -> None:
    """SIGKILL this process when its parent (thread) dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGKILL when the parent dies; exit now if it already has."""
    _arm_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(ORPHANED_EXIT)


def start_child(pipe_handle: int, tracker_fd: int, parent_pid: int) -> None:
    """What a child of :func:`spawn_context` runs: ``multiprocessing``'s spawn entry point,
    after arming the parent-death signal. A failure to start (no work arrived, the
    parent's semaphores are gone) is silent when the parent is gone or never sent the
    work, and so is Ctrl-C while it starts: nobody is left to act on a traceback."""
    _die_with_parent(parent_pid)
    from multiprocessing import spawn

    try:
        spawn.spawn_main(pipe_handle=pipe_handle, tracker_fd=tracker_fd)  # raises SystemExit
    except SystemExit:
        raise
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group while it started
        os._exit(128 + signal.SIGINT)
    except EOFError:  # the parent was stopped or killed before it sent this child its work
        os._exit(ORPHANED_EXIT)
    except BaseException:  # a start failure: the target's own errors are reported by it
        if os.getppid() == parent_pid:
            raise
        os._exit(ORPHANED_EXIT)


if sys.platform != "win32":
    from multiprocessing import popen_spawn_posix, spawn, util
    from multiprocessing.context import SpawnProcess

    _COMMAND_LINE_LOCK = threading.Lock()

    def _guarded_command_line(*, pipe_handle: int, tracker_fd: int) -> list[str]:
        """The child's command line: :func:`start_child` in place of ``spawn_main``."""
        # The directory flashsim is imported from comes first: the child imports
        # flashsim.children before multiprocessing restores the parent's sys.path.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        prog = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from flashsim.children import start_child; "
            f"start_child(pipe_handle={pipe_handle}, tracker_fd={tracker_fd}, "
            f"parent_pid={os.getpid()})"
        )
        return [
            spawn.get_executable(),
            *util._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            "-c",
            prog,
            "--multiprocessing-fork",
        ]

    class _GuardedPopen(popen_spawn_posix.Popen):
        def _launch(self, process_obj: multiprocessing.process.BaseProcess) -> None:
            # The stock launch, which asks multiprocessing.spawn for the child's command
            # line: that one function is swapped for the guarded one while it runs (under
            # a lock, so concurrent starts from other threads see a consistent module).
            with _COMMAND_LINE_LOCK:
                stock = spawn.get_command_line
                spawn.get_command_line = _guarded_command_line  # type: ignore[assignment]
                try:
                    super()._launch(process_obj)  # type: ignore[misc]
                finally:
                    spawn.get_command_line = stock

    class _GuardedProcess(SpawnProcess):
        @staticmethod
        def _Popen(process_obj: multiprocessing.process.BaseProcess) -> _GuardedPopen:
            return _GuardedPopen(process_obj)

    class _GuardedSpawnContext(SpawnContext):
        Process = _GuardedProcess


def spawn_context() -> SpawnContext:
    """A "spawn" context whose children die with their parent (see the module docstring);
    the stock one on Windows."""
    if sys.platform == "win32":
        return multiprocessing.get_context("spawn")  # type: ignore[return-value]
    return _GuardedSpawnContext()
