"""Turn Ctrl-C / SIGTERM into a polite stop request that the training loop honours.

Raising ``KeyboardInterrupt`` at an arbitrary point could leave the optimiser half
way through a step; instead the first SIGINT/SIGTERM only sets a flag, which the loop
checks between steps: it then writes a resumable checkpoint and returns. A second
signal (more than :data:`GRACE_S` seconds later, so that one Ctrl-C reaching several
processes of a process group counts once) raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

GRACE_S = 2.0

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What :func:`signal.signal` returns and accepts: a callable, ``SIG_DFL``/``SIG_IGN`` or None."""


class StopRequest:
    """Context manager: installs the handlers (main thread only) and exposes ``requested``."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._first_at = 0.0
        self._previous: dict[int, _Handler] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested and now - self._first_at > GRACE_S:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            self._first_at = now

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()
