"""Remote inputs against a real XRootD server on 127.0.0.1 serving a temporary directory:
rows identical to the local prep of the same files (in-process and on Dask), file lists
of URLs, identity without download, and clear messages for a missing file and a dead
server within the timeout."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from flashsim.errors import FlashSimError
from flashsim.store import SPLITS, read_metadata, store_path
from pipelines import remote
from pipelines.prep import prep
from pipelines.store_info import iter_blocks

from conftest import SHARED_DATA

V12 = SHARED_DATA / "nano_tt_v12.root"
START_TIMEOUT_S = 15.0
TIMEOUT_S = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class XRootDServer:
    """``xrootd`` serving ``data`` on 127.0.0.1:``port`` (loopback clients only)."""

    def __init__(self, checksum: bool = True) -> None:
        exe = shutil.which("xrootd")
        if exe is None:
            pytest.skip("xrootd is not installed (Debian: apt-get install xrootd-server)")
        if not V12.is_file():
            pytest.skip(f"real NanoAOD sample {V12} absent; set FLASHSIM_SHARED_DATA")
        # outside pytest's 0700 tmp dirs: the server drops root privileges to nobody
        self.root = Path(tempfile.mkdtemp(prefix="flashsim-xrootd-"))
        self.data = self.root / "data"
        self.data.mkdir()
        for name in ("a.root", "b.root"):
            shutil.copyfile(V12, self.data / name)
        (self.root / "run").mkdir()
        for p in (self.root, self.data, *self.data.iterdir()):
            p.chmod(0o755)
        (self.root / "run").chmod(0o777)
        self.port = _free_port()
        config = self.root / "xrootd.cfg"
        config.write_text(
            f"all.export {self.data}\nxrd.port {self.port}\nxrd.network nodnr\n"
            "xrd.allow host 127.0.0.1\n" + ("xrootd.chksum adler32\n" if checksum else "")
        )
        run = self.root / "run"
        cmd = [exe, "-c", str(config), "-l", str(run / "xrootd.log"), "-n", "flashsim"]
        cmd += ["-a", str(run / "adm"), "-s", str(run / "xrootd.pid")]
        if os.geteuid() == 0:  # xrootd refuses to run as root
            cmd += ["-R", "nobody"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                out = (
                    self.process.stdout.read().decode(errors="replace")
                    if self.process.stdout
                    else ""
                )
                self.stop()
                pytest.skip(f"the XRootD server did not start: {out.strip()[-500:]}")
            time.sleep(0.1)

    def url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.port}/{self.data / name}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    srv = XRootDServer()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setenv("FLASHSIM_REMOTE_TIMEOUT_S", str(TIMEOUT_S))


def _rows(out: Path, obj: str) -> dict[str, np.ndarray]:
    path = store_path(out, obj, "zarr")
    return {s: np.concatenate(list(iter_blocks(path, s))) for s in SPLITS}


def _same_stores(a: Path, b: Path) -> None:
    for obj in ("jets", "muons"):
        ra, rb = _rows(a, obj), _rows(b, obj)
        for split in SPLITS:
            assert len(ra[split]) > 0 or split == "val"
            np.testing.assert_array_equal(ra[split], rb[split])


def test_remote_prep_equals_local(server, tmp_path):
    url = server.url("a.root")
    remote_summary = prep([url], tmp_path / "remote", progress=False)
    prep([server.data / "a.root"], tmp_path / "local", progress=False)
    _same_stores(tmp_path / "remote", tmp_path / "local")
    assert remote_summary.objects["jets"].matched > 1000
    (entry,) = read_metadata(store_path(tmp_path / "remote", "jets", "zarr"))["inputs"]
    local_bytes = (server.data / "a.root").read_bytes()
    assert entry["path"] == url and entry["size_bytes"] == len(local_bytes)
    # identified by the server's checksum, not by downloading the file to hash it
    assert entry["sha256"] is None and entry["identity"] == "server checksum (adler32)"
    assert entry["checksum"] == f"adler32 {zlib.adler32(local_bytes):08x}"
    assert entry["mtime"] == int((server.data / "a.root").stat().st_mtime)


def test_list_of_urls(server, tmp_path):
    urls = tmp_path / "files.txt"
    urls.write_text(f"# two remote files\n{server.url('a.root')}\n{server.url('b.root')}\n")
    paths = tmp_path / "local.txt"
    paths.write_text(f"{server.data / 'a.root'}\n{server.data / 'b.root'}\n")
    summary = prep([urls], tmp_path / "remote", objects=["jets"], progress=False)
    prep([paths], tmp_path / "local", objects=["jets"], progress=False)
    assert [i["path"] for i in summary.inputs] == [server.url("a.root"), server.url("b.root")]
    ra, rb = _rows(tmp_path / "remote", "jets"), _rows(tmp_path / "local", "jets")
    for split in SPLITS:
        np.testing.assert_array_equal(ra[split], rb[split])


@pytest.mark.multiprocess
def test_dask_prep_of_remote_files(server, tmp_path):
    url = server.url("a.root")
    prep([url], tmp_path / "dask", dask_scheduler="local", workers=2, progress=False)
    prep([server.data / "a.root"], tmp_path / "local", progress=False)
    _same_stores(tmp_path / "dask", tmp_path / "local")


def test_missing_remote_file(server, tmp_path):
    url = server.url("missing.root")
    t0 = time.monotonic()
    with pytest.raises(FlashSimError) as err:
        prep([url], tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < TIMEOUT_S
    message = str(err.value)
    assert url in message and "does not exist" in message
    assert not (tmp_path / "out").exists()


def test_server_down(tmp_path):
    port = _free_port()  # nothing listens there
    url = f"root://127.0.0.1:{port}//data/nano.root"
    t0 = time.monotonic()
    with pytest.raises(FlashSimError) as err:
        prep([url], tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < TIMEOUT_S
    message = str(err.value)
    assert f"Cannot reach the XRootD server root://127.0.0.1:{port}" in message
    assert f"{remote.RETRIES} tries" in message and "copy the file locally" in message


def test_server_without_checksum(tmp_path):
    srv = XRootDServer(checksum=False)
    try:
        stat = remote.stat_remote(srv.url("a.root"))
        assert stat.checksum is None and stat.size == V12.stat().st_size
        summary = prep([srv.url("a.root")], tmp_path / "s", objects=["muons"], progress=False)
        (entry,) = summary.inputs
        assert entry["identity"].startswith("size and modification time")
        assert entry["sha256"] is None and entry["checksum"] is None
    finally:
        srv.stop()


def test_unsupported_urls(tmp_path):
    with pytest.raises(FlashSimError, match="ftp:// inputs are not supported"):
        prep(["ftp://127.0.0.1/nano.root"], tmp_path / "o", progress=False)
    with pytest.raises(FlashSimError, match="patterns are not expanded"):
        prep(["root://127.0.0.1//data/*.root"], tmp_path / "o", progress=False)


def test_server_stops_during_the_read():
    from pipelines.nanoaod import close_cached, inspect_nanoaod, iterate_steps

    srv = XRootDServer()
    url = srv.url("a.root")
    try:
        info = inspect_nanoaod(url)  # the file is open, its baskets not yet read
        srv.process.terminate()
        srv.process.wait(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(FlashSimError) as err:
            list(iterate_steps(url, ["Jet_pt", "Muon_pt"], 0, info.n_events, 100))
        assert time.monotonic() - t0 < TIMEOUT_S
        assert url in str(err.value) and "server stopped answering" in str(err.value)
    finally:
        close_cached()
        srv.stop()
