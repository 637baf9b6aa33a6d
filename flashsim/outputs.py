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
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from flashsim.errors import StoreError


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
    one atomic rename; a directory (a store) is swapped with two.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise StoreError(
            f"{final} already exists; nothing was changed. Pass --overwrite to replace it, "
            "or choose another --out."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.is_dir() and not final.is_symlink():  # os.replace cannot replace a directory
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write (or replace) the text file ``path`` atomically."""
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path


def strict_json(value):
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
