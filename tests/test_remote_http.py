"""https:// inputs (served here over plain http on 127.0.0.1 by a real byte-range server):
rows identical to the local prep, ETag identity, missing file and dead server."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from flashsim.errors import FlashSimError
from flashsim.store import SPLITS, read_metadata, store_path
from pipelines.prep import prep
from pipelines.store_info import iter_blocks

from conftest import SHARED_DATA

V12 = SHARED_DATA / "nano_tt_v12.root"
TIMEOUT_S = 5

pytestmark = pytest.mark.skipif(not V12.is_file(), reason=f"{V12} absent; set FLASHSIM_SHARED_DATA")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges (206) and an ETag, as web servers serve them."""

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def end_headers(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_file():
            self.send_header("ETag", f'"{path.stat().st_size:x}-{path.stat().st_mtime_ns:x}"')
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self) -> None:
        spec = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not spec.startswith("bytes=") or "," in spec or not path.is_file():
            return super().do_GET()  # whole file (uproot then asks for single ranges)
        data = path.read_bytes()
        first, _, last = spec[6:].partition("-")
        start, stop = int(first), min(int(last or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
        self.send_header("Content-Length", str(stop - start + 1))
        self.end_headers()
        self.wfile.write(data[start : stop + 1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    shutil.copyfile(V12, root / "a.root")
    handler = partial(RangeHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setenv("FLASHSIM_REMOTE_TIMEOUT_S", str(TIMEOUT_S))


def test_http_prep_equals_local(server, tmp_path):
    root, base = server
    prep([f"{base}/a.root"], tmp_path / "remote", progress=False)
    prep([root / "a.root"], tmp_path / "local", progress=False)
    for obj in ("jets", "muons"):
        for split in SPLITS:
            got = list(iter_blocks(store_path(tmp_path / "remote", obj, "zarr"), split))
            ref = list(iter_blocks(store_path(tmp_path / "local", obj, "zarr"), split))
            np.testing.assert_array_equal(np.concatenate(got), np.concatenate(ref))
    (entry,) = read_metadata(store_path(tmp_path / "remote", "jets", "zarr"))["inputs"]
    assert entry["identity"] == "server entity tag (HTTP ETag)" and entry["sha256"] is None
    assert entry["size_bytes"] == V12.stat().st_size


def test_http_missing_and_down(server, tmp_path):
    _, base = server
    t0 = time.monotonic()
    with pytest.raises(FlashSimError, match="does not exist on its server"):
        prep([f"{base}/missing.root"], tmp_path / "m", progress=False)
    with pytest.raises(FlashSimError) as err:
        prep(["http://127.0.0.1:9/a.root"], tmp_path / "d", progress=False)  # discard port
    assert "Cannot reach the HTTP server http://127.0.0.1:9 " in str(err.value)
    assert time.monotonic() - t0 < TIMEOUT_S
