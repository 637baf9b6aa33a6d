"""Writing outputs so that nothing half-written ever looks complete.

Every output of flashsim (stores, checkpoints, metrics, plots, reports) is written under
a hidden temporary name next to its final path and moved there only once complete:

* :func:`atomic_output`: the context manager behind all of them (files and directories);
* :func:`write_text_atomic`: a text file in one call;
* :func:`strict_json`: values made safe for standard JSON (NaN/inf -> ``null``).

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output(d / "x.txt") as tmp:
...     _ = tmp.write_text("done")
>>> (d / "x.txt").read_text()
'done'
>>> strict_json({"a": float("nan"), "b": [1.5, pathlib.Path("p")]})
{'a': None, 'b': [1.5, 'p']}
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flashsim.errors import StoreError

_ADVICE: dict[int | None, str] = {  # keyed by OSError.errno, which may be None
    errno.ENOSPC: "the file system is full: free space there or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another --out",
    errno.EFBIG: "the file is larger than that file system allows: choose another --out",
    errno.EROFS: "that file system is read-only: choose a writable --out",
    errno.EACCES: "you may not write there: choose a writable --out or fix the permissions",
    errno.EPERM: "you may not write there: choose a writable --out or fix the permissions",
    errno.ENOTDIR: "a part of that path is a file, not a directory: choose another --out",
    errno.ENOENT: "its directory cannot be created there: choose another --out",
}
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
"""Errors that only writing causes: raised inside an output block, they concern the output."""


def _is_short_write(err: OSError) -> bool:
    # numpy's tofile and some C writers report a full disk as "N requested and M written"
    return err.errno is None and "requested and" in str(err) and "written" in str(err)


def output_error(err: OSError, path: str | os.PathLike) -> StoreError:
    """A one-paragraph :class:`StoreError` for ``err`` raised while writing ``path``:
    which path, what the system said, what to do."""
    code = errno.ENOSPC if _is_short_write(err) else err.errno
    said = err.strerror or str(err)
    if _is_short_write(err):
        said = f"{err} (a short write: the disk is full)"
    # The failing file, unless it is the output itself or its temporary (noise)
    parent = Path(os.path.abspath(path)).parent
    name = Path(os.path.abspath(err.filename)) if err.filename else None
    inside = name is not None and (name == parent or parent in name.parents)
    where = f" ({err.filename})" if name is not None and not inside else ""
    advice = _ADVICE.get(code, "check the path, the free space and the permissions, and retry")
    return StoreError(f"Cannot write {path}{where}: {said}. Nothing was written there; {advice}.")


def system_error_message(err: OSError) -> str:
    """One paragraph for an ``OSError`` no flashsim code translated (the CLI's last resort)."""
    where = f"{err.filename}: " if err.filename else ""
    said = err.strerror or str(err) or type(err).__name__
    code = errno.ENOSPC if _is_short_write(err) else err.errno
    advice = _ADVICE.get(code, "check that path, the free disk space and the permissions")
    return (
        f"{where}{said} ({type(err).__name__}); {advice}, and retry. If it persists, report "
        "it with the command you ran."
    )


def _concerns(err: OSError, roots: tuple[Path, ...]) -> bool:
    """Whether ``err`` (raised inside an output block) is about the output."""
    if err.errno in _OUTPUT_ERRNOS or _is_short_write(err):
        return True
    if not err.filename:
        return False
    name = Path(os.path.abspath(err.filename))
    return any(name == r or r in name.parents for r in roots)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, *within: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` about the output ``path`` (or a path under ``within``, or any
    full-disk/read-only error) into a one-paragraph :class:`StoreError`; other errors
    (reading an input, say) pass unchanged."""
    roots = tuple(Path(os.path.abspath(r)) for r in (path, *within))
    try:
        yield
    except OSError as err:
        if not _concerns(err, roots):
            raise
        raise output_error(err, path) from None


def make_output_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, with a one-paragraph error when it cannot be created."""
    path = Path(path)
    with output_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _disk_full(directory: Path) -> bool:
    """Whether the file system of ``directory`` has (almost) no space left (< 64 KiB)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 2**10


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _sweep_dead_partials(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed processes (``.NAME.partial-PID``,
    ``.NAME.old-PID`` whose PID no longer runs)."""
    for kind in ("partial", "old"):
        for stale in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                if kind == "old" and not final.exists():
                    os.replace(stale, final)  # killed between the two renames: restore
                else:
                    _remove(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it to ``final`` only on success.

    A crash or exception leaves ``final`` as it was (absent, or the previous version)
    and removes the partial output. An existing ``final`` without ``overwrite`` is an
    error raised before anything is written. A file replaces its previous version in
    one atomic rename; a directory (a store) is swapped with two. Temporaries of
    ``final`` left by killed processes are removed first (a previous version caught
    between the two renames is put back). An ``OSError`` about the output becomes a
    one-paragraph :class:`StoreError` (:func:`output_errors`).
    """
    final = Path(final)
    _sweep_dead_partials(final)
    if final.exists() and not overwrite:
        raise StoreError(
            f"{final} already exists; nothing was changed. Pass --overwrite to replace it, "
            "or choose another --out."
        )
    make_output_dir(final.parent)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    with output_errors(final, tmp):
        _remove(tmp)
        try:
            yield tmp
        except Exception as err:
            full = not isinstance(err, OSError | StoreError) and _disk_full(final.parent)
            _remove(tmp)
            if full:  # torch.save, say, reports a full disk as RuntimeError
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from err
            raise
        except BaseException:
            _remove(tmp)
            raise
        try:
            _move_into_place(tmp, final)
        except BaseException:
            _remove(tmp)
            raise


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():  # os.replace cannot replace a directory
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # put the previous version back
            raise
        _remove(old)
    else:
        os.replace(tmp, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write (or replace) the text file ``path`` atomically."""
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` and paths by strings,
    recursively through dicts, lists and tuples (standard JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
