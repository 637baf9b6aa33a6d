"""prep's spool directories (``OUT/.flashsim-prep-*``), so that a killed prep leaves nothing
behind for long (its workers die with it: :func:`flashsim.children.spawn_context`).

* :func:`make_spool` creates the spool holding an exclusive ``flock`` on its ``.lock``
  file for as long as the prep runs (the kernel drops it when the process dies, even by
  ``kill -9``), after sweeping the spools of dead preps in the same directory: those are
  removed, with a warning giving their size. Spools without a lock file (written before
  locks) cannot be told from a live run, so they are only reported.

Examples
--------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> spool = make_spool(out)
>>> spool.name.startswith(SPOOL_PREFIX)
True
>>> remove_spool(spool)
>>> list(out.iterdir())
[]
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("flashsim.prep")

SPOOL_PREFIX = ".flashsim-prep-"
LOCK_NAME = ".lock"

_held: dict[Path, int] = {}  # spool -> file descriptor holding its lock


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _is_stale(spool: Path) -> bool | None:
    """True if no live process holds ``spool``'s lock; ``None`` if it has no lock file."""
    try:
        fd = os.open(spool / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live prep holds it
    finally:
        os.close(fd)
    return True


def sweep_stale_spools(out: Path) -> list[tuple[Path, int]]:
    """Remove the spools of dead preps in ``out``; ``(path, bytes)`` of each removed."""
    removed = []
    for spool in sorted(out.glob(f"{SPOOL_PREFIX}*")):
        if not spool.is_dir() or spool in _held:
            continue
        stale = _is_stale(spool)
        size = _tree_bytes(spool)
        if stale:
            shutil.rmtree(spool, ignore_errors=True)
            removed.append((spool, size))
            log.warning("removed %s (%.1f MB), left by a prep that was killed", spool, size / 1e6)
        elif stale is None:
            log.warning(
                "%s (%.1f MB) looks left by an interrupted prep of an older flashsim; remove "
                "it (rm -r %s) if no prep is running in %s.",
                spool,
                size / 1e6,
                spool,
                out,
            )
    return removed


def make_spool(out: Path) -> Path:
    """A new locked spool directory in ``out`` (after sweeping dead preps' spools)."""
    sweep_stale_spools(out)
    spool = Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=out))
    fd = os.open(spool / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[spool] = fd
    return spool


def remove_spool(spool: Path) -> None:
    """Delete ``spool`` and release its lock."""
    shutil.rmtree(spool, ignore_errors=True)
    fd = _held.pop(spool, None)
    if fd is not None:
        os.close(fd)
