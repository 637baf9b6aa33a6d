"""Expand the INPUT arguments of ``flashsim prep`` into a list of classified files.

An input may be a file, a glob (``data/*.root``), a directory (every ``.root``,
``.h5`` and ``.hdf5`` file inside, not recursive), an XRootD URL
(``root://HOST[:PORT]//path/file.root``, see :mod:`pipelines.remote`) or a ``.txt``
list of paths and URLs (one per line, ``#`` comments, relative paths taken from the
list's own directory). Files
are classified by their magic bytes, not their names: ROOT files start with ``root``,
HDF5 files with ``\\x89HDF\\r\\n\\x1a\\n`` (at offset 0 or at a user-block boundary).

Examples
--------
>>> from pipelines.inputs import expand_inputs
>>> [f.kind for f in expand_inputs(["../shared/data/nano_dy.root"])]  # doctest: +SKIP
['root']
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flashsim.errors import InputError
from pipelines.remote import RemoteStat, check_url, is_remote, read_head, stat_remote

ROOT_MAGIC = b"root"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)  # HDF5 allows a user block before the superblock
_DIRECTORY_SUFFIXES = (".root", ".h5", ".hdf5")
_GLOB_CHARS = set("*?[")
_HEAD_BYTES = max(_HDF5_OFFSETS) + len(HDF5_MAGIC)


@dataclass(frozen=True)
class InputFile:
    """One input file: its resolved ``path`` and ``kind`` (``"root"`` or ``"hdf5"``).

    A remote file (``root://`` URL) keeps its URL as ``path`` (a ``str``) and has its
    ``remote`` stat: size, modification time and the server's checksum.
    """

    path: Path | str
    kind: str
    remote: RemoteStat | None = None

    @property
    def size_bytes(self) -> int:
        return self.remote.size if self.remote else Path(self.path).stat().st_size


def classify(path: str | os.PathLike) -> str:
    """``"root"`` or ``"hdf5"`` from the file's magic bytes.

    Raises:
        InputError: the file is missing, unreadable, or neither ROOT nor HDF5.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"Input file {p} does not exist. Check the path (and any glob).")
    if p.is_dir():
        raise InputError(f"{p} is a directory; pass the files inside it or the directory alone.")
    try:
        with open(p, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as err:
        raise InputError(f"Cannot read input file {p}: {err.strerror or err}.") from None
    return _kind_of(head, p)


def _kind_of(head: bytes, p: Path | str) -> str:
    if head.startswith(ROOT_MAGIC):
        return "root"
    if any(head[o : o + len(HDF5_MAGIC)] == HDF5_MAGIC for o in _HDF5_OFFSETS):
        return "hdf5"
    what = "it is empty" if not head else f"it starts with {head[:8]!r}"
    raise InputError(
        f"{p} is neither a ROOT file nor an HDF5 file ({what}; ROOT files start with b'root', "
        "HDF5 files with b'\\x89HDF'). flashsim prep reads CMS NanoAOD ROOT files or FlashSim "
        "HDF5 files; check that the file was copied completely and is not a text or log file."
    )


def _read_list(list_file: Path) -> list[str]:
    base = list_file.parent
    out = []
    for raw in list_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line if os.path.isabs(line) or is_remote(line) else str(base / line))
    if not out:
        raise InputError(f"The input list {list_file} names no files (empty or only comments).")
    return out


def _expand_one(arg: str) -> Sequence[Path | str]:
    """Local files as Paths; a remote URL stays a string (a Path would fold its ``//``)."""
    if is_remote(arg):
        check_url(arg)
        return [arg]
    # An existing path is a path before it is a pattern: `br[1].root` names itself.
    if _GLOB_CHARS & set(arg) and not os.path.lexists(arg):
        matches = sorted(glob.glob(arg))
        if not matches:
            raise InputError(f"The pattern {arg!r} matches no file. Check the path and the quotes.")
        files = [Path(m) for m in matches if not Path(m).is_dir()]
        if not files:
            raise InputError(
                f"The pattern {arg!r} matches only directories ({matches[0]}, ...); pass a "
                "pattern of files (e.g. 'dir/*.root') or a directory alone."
            )
        return files
    p = Path(arg)
    if p.is_dir():
        files = sorted(c for c in p.iterdir() if c.suffix in _DIRECTORY_SUFFIXES and c.is_file())
        if not files:
            raise InputError(f"The directory {p} holds no .root, .h5 or .hdf5 file.")
        return files
    if p.suffix == ".txt" and p.is_file():
        return [f for line in _read_list(p) for f in _expand_one(line)]
    return [p]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[InputFile]:
    """Expand files, globs, directories and ``.txt`` lists into classified files.

    The order is the order of ``inputs``, globs and directories sorted by name;
    a file named twice is kept once (its first position).

    Raises:
        InputError: no input, a missing file, an empty glob/directory/list, or a file
            that is neither ROOT nor HDF5.
    """
    args = [os.fspath(i) for i in inputs]
    if not args:
        raise InputError("No input given. Pass NanoAOD ROOT or FlashSim HDF5 files.")
    seen: set[Path | str] = set()
    files: list[InputFile] = []
    for arg in args:
        for path in _expand_one(arg):
            if isinstance(path, str):  # a remote URL (local files are Paths)
                if path not in seen:
                    seen.add(path)
                    files.append(_remote_input(path))
                continue
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(InputFile(key, classify(key)))
    return files


def _remote_input(url: str) -> InputFile:
    """A remote file, stat-ed and classified on its server (no download)."""
    stat = stat_remote(url)
    kind = _kind_of(read_head(url, _HEAD_BYTES), url)
    if kind != "root":
        raise InputError(
            f"{url} is an HDF5 file; remote HDF5 inputs are not read. Copy it locally first."
        )
    return InputFile(url, kind, stat)


def single_kind(files: Sequence[InputFile]) -> str:
    """The common kind of ``files``; mixing ROOT and HDF5 inputs is an error.

    HDF5 files are already preprocessed and ROOT files are not, so one store cannot
    hold both.
    """
    kinds = {f.kind for f in files}
    if len(kinds) > 1:
        roots = [str(f.path) for f in files if f.kind == "root"][:2]
        h5s = [str(f.path) for f in files if f.kind == "hdf5"][:2]
        raise InputError(
            f"The inputs mix ROOT NanoAOD files ({', '.join(roots)}, ...) and FlashSim HDF5 "
            f"files ({', '.join(h5s)}, ...). HDF5 rows are already preprocessed and NanoAOD rows "
            "are not, so they cannot share a store: run flashsim prep once per kind, with "
            "different --out directories."
        )
    return kinds.pop()


def sha256_of(path: str | os.PathLike, block_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in blocks of ``block_bytes`` (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()
