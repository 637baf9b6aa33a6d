"""Remote NanoAOD inputs (``root://`` and ``https://`` URLs): stat, identity, first bytes
and opening.

Files are read through uproot's own remote sources (fsspec-xrootd for ``root://``,
``HTTPSource`` for ``https://``), so prep reads only the baskets it needs. The XRootD client is given bounded timeouts and a
single connection attempt per try, and every server call is retried a few times with a
short back-off; a missing file is reported at once (no retry), a server that cannot be
reached after the last try, with the URL and what to check.

A remote file is identified without downloading it: by the server's checksum where the
server computes one (``xrootd.chksum`` in its configuration), otherwise by its size and
modification time (web servers: their ETag where they send one);
:attr:`RemoteStat.identity` says which.

``FLASHSIM_REMOTE_TIMEOUT_S`` (default 30) sets the timeout of one server call, in seconds.

Examples
--------
>>> is_remote("root://eosuser.cern.ch//eos/user/x/nano.root"), is_remote("nano.root")
(True, False)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from flashsim.errors import InputError

if TYPE_CHECKING:
    import uproot
    from XRootD.client.responses import XRootDStatus

XROOTD_SCHEMES = ("root", "xroot")
HTTP_SCHEMES = ("https", "http")
DEFAULT_TIMEOUT_S = 30
RETRIES = 3
"""Tries of one server call when the server cannot be reached."""
BACKOFF_S = 0.5
"""Wait before the second try; doubled before each further one."""
_NOT_FOUND = 3011  # kXR_NotFound, the XRootD server's "no such file"

T = TypeVar("T")


def is_remote(path: object) -> bool:
    """True for a URL (``scheme://...``), False for a local path."""
    return "://" in str(path)


def timeout_s() -> int:
    """Timeout of one server call in seconds (``FLASHSIM_REMOTE_TIMEOUT_S``, default 30)."""
    raw = os.environ.get("FLASHSIM_REMOTE_TIMEOUT_S", "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(
            f"FLASHSIM_REMOTE_TIMEOUT_S must be a whole number of seconds, not {raw!r}."
        ) from None


class Unreachable(OSError):
    """The server did not answer (connection refused, timed out)."""


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _is_http(url: str) -> bool:
    return _scheme(url) in HTTP_SCHEMES


def check_url(url: str) -> None:
    """Refuse URLs prep cannot read, naming the ones it can."""
    scheme = _scheme(url)
    if scheme in HTTP_SCHEMES:
        return
    if scheme not in XROOTD_SCHEMES:
        raise InputError(
            f"{url}: {scheme}:// inputs are not supported. flashsim prep reads local files, "
            "XRootD URLs (root://HOST[:PORT]//absolute/path) and https:// URLs; copy the file "
            "locally first."
        )
    try:
        from XRootD.client import URL
    except ImportError:  # pragma: no cover - fsspec-xrootd (and XRootD) are dependencies
        raise InputError(
            f"{url}: reading root:// URLs needs the XRootD client: pip install fsspec-xrootd."
        ) from None
    if not URL(url).is_valid() or not URL(url).path:
        raise InputError(
            f"{url} is not a valid XRootD URL; write root://HOST[:PORT]//absolute/path/file.root."
        )
    if set("*?[") & set(url.split("://", 1)[1]):
        raise InputError(
            f"{url}: patterns are not expanded on remote servers. List the files, one URL "
            "a line, in a .txt file and pass that."
        )


def _configure_client(timeout: int) -> None:
    """Bounded XRootD client timeouts (this process): one connection attempt per try."""
    from XRootD.client import EnvPutInt

    EnvPutInt("ConnectionWindow", timeout)
    EnvPutInt("ConnectionRetry", 1)
    EnvPutInt("RequestTimeout", timeout)
    EnvPutInt("StreamTimeout", timeout)


def _split(url: str) -> tuple[str, str]:
    from XRootD.client import URL

    u = URL(url)
    return f"{u.protocol}://{u.hostid}", u.path


def _raise_for(url: str, status: XRootDStatus) -> None:
    """An :class:`InputError` for a missing file, :class:`Unreachable` for a dead server."""
    if status.ok:
        return
    message = " ".join(str(status.message).split())
    if status.errno == _NOT_FOUND:
        raise InputError(
            f"Remote input {url} does not exist on its server ({message}). Check the path; "
            "XRootD URLs name the absolute path after a double slash: "
            "root://HOST[:PORT]//path/file.root."
        )
    if status.fatal or status.errno == 0:
        raise Unreachable(message)
    raise InputError(f"The server of {url} refused to serve it ({message}).")


def with_retries(url: str, call: Callable[[int], T]) -> T:
    """``call(timeout)``, tried :data:`RETRIES` times while the server cannot be reached."""
    timeout = timeout_s()
    if not _is_http(url):
        _configure_client(timeout)
    wait = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            return call(timeout)
        except Unreachable as err:
            if attempt == RETRIES:
                server, kind = (
                    (_http_server(url), "HTTP") if _is_http(url) else (_split(url)[0], "XRootD")
                )
                raise InputError(
                    f"Cannot reach the {kind} server {server} for {url} ({err}; {RETRIES} "
                    f"tries, {timeout} s timeout each). Check the host and port and that the "
                    "server is up (and your grid proxy, for CMS servers), or copy the file "
                    "locally (xrdcp) and pass its path."
                ) from None
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class RemoteStat:
    """What identifies a remote file: size in bytes, modification time (Unix seconds) and
    the server's checksum (``"adler32 eddcc517"``) where it computes one."""

    url: str
    size: int
    mtime: int
    checksum: str | None = None

    @property
    def identity(self) -> str:
        """How the file is identified in the store metadata."""
        if self.checksum and self.checksum.startswith("etag "):
            return "server entity tag (HTTP ETag)"
        if self.checksum:
            return f"server checksum ({self.checksum.split()[0]})"
        return "size and modification time (the server gives no checksum)"

    def to_dict(self) -> dict:
        return {
            "identity": self.identity,
            "checksum": self.checksum,
            "mtime": self.mtime,
        }


def stat_remote(url: str) -> RemoteStat:
    """Size, modification time and (where available) checksum of ``url``, read on its server.

    Raises:
        InputError: the file is missing, or the server cannot be reached.
    """
    if _is_http(url):
        return with_retries(url, lambda timeout: _http_stat(url, timeout))
    from XRootD.client import FileSystem
    from XRootD.client.flags import QueryCode

    server, path = _split(url)

    def call(timeout: int) -> RemoteStat:
        fs = FileSystem(server)
        status, info = fs.stat(path, timeout=timeout)
        _raise_for(url, status)
        status, answer = fs.query(QueryCode.CHECKSUM, path, timeout=timeout)
        checksum = None
        if status.ok and answer:
            checksum = answer.decode(errors="replace").strip("\x00 \n") or None
        return RemoteStat(url, int(info.size), int(info.modtime), checksum)

    return with_retries(url, call)


def read_head(url: str, n_bytes: int) -> bytes:
    """The first ``n_bytes`` of ``url`` (to classify it by its magic bytes)."""
    if _is_http(url):
        headers = {"Range": f"bytes=0-{n_bytes - 1}"}
        return with_retries(url, lambda t: _http_request(url, "GET", t, headers)[1])
    from XRootD.client import File
    from XRootD.client.flags import OpenFlags

    def call(timeout: int) -> bytes:
        f = File()
        status, _ = f.open(url, OpenFlags.READ, timeout=timeout)
        _raise_for(url, status)
        try:
            status, data = f.read(0, n_bytes, timeout=timeout)
            _raise_for(url, status)
            return bytes(data)
        finally:
            f.close(timeout=timeout)

    return with_retries(url, call)


def open_remote(url: str) -> uproot.ReadOnlyDirectory:
    """``uproot.open`` of ``url`` through uproot's remote source, with timeouts and retries."""
    import uproot

    options = {"handler": uproot.source.http.HTTPSource} if _is_http(url) else {}

    def call(timeout: int) -> uproot.ReadOnlyDirectory:
        try:
            return uproot.open(url, timeout=timeout, object_cache=None, array_cache=None, **options)
        except OSError as err:  # fsspec-xrootd reports every failure as OSError
            text = " ".join(str(err).split())
            if "[3011]" in text or "no such file" in text.lower():
                raise InputError(
                    f"Remote input {url} does not exist on its server ({text})."
                ) from None
            raise Unreachable(text) from None

    return with_retries(url, call)


# ---------------------------------------------------------------------------
# https:// (uproot's HTTPSource reads byte ranges; the stat is one HEAD request)
# ---------------------------------------------------------------------------


def _http_server(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _http_request(
    url: str, method: str, timeout: int, headers: Mapping[str, str] | None = None
) -> tuple[dict, bytes]:
    """``(response headers, body)``; a missing file is an InputError, no answer Unreachable."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise InputError(
                f"Remote input {url} does not exist on its server (HTTP 404). Check the URL."
            ) from None
        raise InputError(f"The server of {url} refused to serve it (HTTP {err.code}).") from None
    except (urllib.error.URLError, OSError) as err:
        raise Unreachable(str(getattr(err, "reason", err))) from None


def _http_stat(url: str, timeout: int) -> RemoteStat:
    from email.utils import parsedate_to_datetime

    headers, _ = _http_request(url, "HEAD", timeout)
    modified = headers.get("Last-Modified")
    mtime = int(parsedate_to_datetime(modified).timestamp()) if modified else 0
    etag = headers.get("ETag")
    size = int(headers.get("Content-Length", 0))
    return RemoteStat(url, size, mtime, f"etag {etag.strip(chr(34))}" if etag else None)
