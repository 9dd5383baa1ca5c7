"""Tests of specfm.fetch against a real local HTTP server with scripted faults (no network)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import specfm.fetch.registry as registry
from specfm.fetch import (
    ArchiveError,
    ChecksumError,
    ChecksumLock,
    FetchError,
    download,
    extract_members,
    pip_download,
)

PAYLOAD = random.Random(1).randbytes(300_000)
OTHER = random.Random(2).randbytes(len(PAYLOAD))
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
FAST = dict(retries=5, backoff=0.01, timeout=5, progress=False)


# ----------------------------------------------------------------------------- scripted HTTP server


class _Handler(BaseHTTPRequestHandler):
    """The first path component picks the behaviour: ok, wrong, drop, dropnorange, flaky, missing, down."""

    def do_GET(self):
        state = self.server.state
        with state.lock:
            state.counts[self.path] += 1
            n = state.counts[self.path]
            state.ranges[self.path].append(self.headers.get("Range"))
        mode = self.path.strip("/").split("/")[0]
        body = OTHER if mode == "wrong" else PAYLOAD
        if mode == "missing":
            self.send_error(404)
        elif mode == "down" or (mode == "flaky" and n <= 3):
            self.send_error(503)
        elif mode in ("drop", "dropnorange") and n == 1:
            self._drop(body)
        else:
            self._send(body, None if mode == "dropnorange" else self.headers.get("Range"))

    def _send(self, body: bytes, range_header: str | None) -> None:
        start = int(re.match(r"bytes=(\d+)-", range_header).group(1)) if range_header else 0
        self.send_response(206 if range_header else 200)
        if range_header:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def _drop(self, body: bytes) -> None:
        """Promise the whole body, send half, then cut the connection."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the dropped connection is deliberate
        pass


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = type("State", (), {})()
    srv.state.lock = threading.Lock()
    srv.state.counts = Counter()
    srv.state.ranges = defaultdict(list)
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-listens-here"


def _only(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir())


# ----------------------------------------------------------------------------- download


def test_correct_bytes(server, tmp_path, capsys):
    dest = tmp_path / "sub" / "file.bin"
    assert download(server.url("/ok/file.bin"), dest, SHA, **{**FAST, "progress": True}) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert _only(dest) == ["file.bin"]
    assert "file.bin" in capsys.readouterr().err  # the progress bar goes to stderr


def test_wrong_bytes_raise_once_and_leave_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    url = server.url("/wrong/file.bin")
    with pytest.raises(ChecksumError) as err:
        download([url, server.url("/ok/file.bin")], dest, SHA, **FAST)
    message = str(err.value)
    assert str(dest) in message and url in message and SHA in message and OTHER_SHA in message
    assert list(tmp_path.iterdir()) == []
    assert server.state.counts["/wrong/file.bin"] == 1  # no re-download loop
    assert server.state.counts["/ok/file.bin"] == 0


def test_dropped_connection_resumes_with_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    assert download(server.url("/drop/file.bin"), dest, SHA, **FAST) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.state.ranges["/drop/file.bin"] == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert _only(dest) == ["file.bin"]


def test_range_ignored_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "file.bin"
    assert download(server.url("/dropnorange/file.bin"), dest, SHA, **FAST) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.state.ranges["/dropnorange/file.bin"] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_503_is_retried(server, tmp_path):
    dest = tmp_path / "file.bin"
    assert download(server.url("/flaky/file.bin"), dest, SHA, **FAST) == SHA
    assert server.state.counts["/flaky/file.bin"] == 4


def test_404_moves_to_next_mirror(server, tmp_path):
    dest = tmp_path / "file.bin"
    assert download([server.url("/missing/f"), server.url("/ok/f")], dest, SHA, **FAST) == SHA
    assert server.state.counts["/missing/f"] == 1  # a 404 is not retried
    assert dest.read_bytes() == PAYLOAD


def test_all_dead_gives_one_line_with_hand_placement(server, tmp_path):
    dest = tmp_path / "file.bin"
    urls = [server.url("/missing/f"), server.url("/down/f"), _refused_url()]
    with pytest.raises(FetchError) as err:
        download(urls, dest, SHA, **{**FAST, "retries": 2})
    message = str(err.value)
    assert "\n" not in message
    assert all(url in message for url in urls)
    assert f"place the file by hand at {dest} (sha256 {SHA})" in message
    assert "Connection refused" in message  # the last error
    assert server.state.counts["/down/f"] == 3  # one try + 2 retries
    assert list(tmp_path.iterdir()) == []


def test_all_dead_without_pin_names_the_lock(server, tmp_path):
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    with pytest.raises(FetchError, match="recorded in .*checksums.lock.yaml on first fetch"):
        download(server.url("/missing/f"), tmp_path / "f", lock=lock, lock_key="f", **FAST)
    assert lock.read() == {}


def test_file_url_mirror(server, tmp_path):
    mirror = tmp_path / "mirror" / "file.bin"
    mirror.parent.mkdir()
    mirror.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "file.bin"
    missing = (tmp_path / "mirror" / "absent.bin").as_uri()
    assert download([missing, mirror.as_uri()], dest, SHA, **FAST) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.state.counts == Counter()


def test_stale_part_is_resumed(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    assert download(server.url("/ok/f"), dest, SHA, **FAST) == SHA
    assert server.state.ranges["/ok/f"] == ["bytes=1000-"]


def test_bad_stale_part_is_fetched_again_once(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(OTHER[:1000])
    assert download(server.url("/ok/f"), dest, SHA, **FAST) == SHA
    assert server.state.ranges["/ok/f"] == ["bytes=1000-", None]


def test_valid_dest_is_not_fetched_again(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert download(server.url("/ok/f"), dest, SHA, **FAST) == SHA
    assert server.state.counts == Counter()


# ----------------------------------------------------------------------------- trust on first use


def test_tofu_records_then_enforces(server, tmp_path):
    lock = ChecksumLock(tmp_path / "config" / "checksums.lock.yaml")
    assert download(server.url("/ok/f"), tmp_path / "a.bin", lock=lock, lock_key="payload", **FAST) == SHA
    assert lock.get("payload") == {"sha256": SHA, "size": len(PAYLOAD), "url": server.url("/ok/f")}
    before = lock.path.read_text()

    with pytest.raises(ChecksumError) as err:
        download(server.url("/wrong/f"), tmp_path / "b.bin", lock=lock, lock_key="payload", **FAST)
    assert str(lock.path) in str(err.value) and OTHER_SHA in str(err.value)
    assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
    assert lock.path.read_text() == before


_RECORD = (
    "import sys\n"
    "from specfm.fetch import ChecksumLock\n"
    "lock = ChecksumLock(sys.argv[1])\n"
    "for i in range(20):\n"
    "    lock.record(f'{sys.argv[2]}-{i:02d}', sha256=format(i, '064x'), size=i, url='u')\n"
)


def test_concurrent_records_keep_every_key(tmp_path):
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    procs = [subprocess.Popen([sys.executable, "-c", _RECORD, str(lock.path), f"proc{k}"]) for k in range(4)]

    def record(name):
        for i in range(20):
            ChecksumLock(lock.path).record(f"{name}-{i:02d}", sha256=format(i, "064x"), size=i, url="u")

    threads = [threading.Thread(target=record, args=(f"thread{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in procs)

    data = yaml.safe_load(lock.path.read_text())
    expected = {f"{who}{k}-{i:02d}" for who in ("proc", "thread") for k in range(4) for i in range(20)}
    assert set(data) == expected
    assert list(data) == sorted(data)  # deterministic order
    assert data["proc3-07"] == {"sha256": format(7, "064x"), "size": 7, "url": "u"}


def test_record_is_idempotent_and_refuses_conflicts(tmp_path):
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    lock.record("b", sha256=SHA, size=1, url="u")
    lock.record("a", sha256=OTHER_SHA)
    text = lock.path.read_text()
    lock.record("b", sha256=SHA, size=1, url="other")  # already known: no change
    assert lock.path.read_text() == text
    assert text.index("a:") < text.index("b:")
    with pytest.raises(ChecksumError, match="already recorded"):
        lock.record("b", sha256=OTHER_SHA)


def test_verify_files_reports_drift(tmp_path):
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    files = {k: tmp_path / f"{k}.bin" for k in ("good", "changed", "resized", "gone", "unknown")}
    for key, path in files.items():
        path.write_bytes(PAYLOAD)
        if key != "unknown":
            lock.record(key, sha256=SHA, size=len(PAYLOAD))
    files["changed"].write_bytes(OTHER)
    files["resized"].write_bytes(PAYLOAD[:10])
    files["gone"].unlink()
    problems = {key: problem for key, _, problem in lock.verify_files(files)}
    assert set(problems) == {"changed", "resized", "gone", "unknown"}
    assert OTHER_SHA in problems["changed"] and "size 10" in problems["resized"]
    assert problems["gone"] == "missing" and "not recorded" in problems["unknown"]


# ----------------------------------------------------------------------------- archives

MEMBERS = {"pkg-1.0/README": b"readme", "pkg-1.0/data/a.fits": b"A" * 100, "pkg-1.0/data/sub/b.fits": b"B" * 50}


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("maker, name", [(_tar, "pkg.tar.gz"), (_zip, "pkg.zip"), (_zip, "pkg-1.0-py3-none-any.whl")])
def test_extract_flattens_to_basename(tmp_path, maker, name):
    archive = maker(tmp_path / name, MEMBERS)
    dest = tmp_path / "out" / "templates"
    manifest = extract_members(archive, ["*.fits"], dest)
    assert manifest == {"a.fits": _sha(b"A" * 100), "b.fits": _sha(b"B" * 50)}
    assert sorted(p.name for p in dest.iterdir()) == ["a.fits", "b.fits"]
    assert (dest / "b.fits").read_bytes() == b"B" * 50
    assert sorted(p.name for p in dest.parent.iterdir()) == ["templates"]  # no temporary left


def test_extract_strip_components_keeps_subpaths(tmp_path):
    archive = _tar(tmp_path / "pkg.tar", MEMBERS, "w")
    manifest = extract_members(archive, "pkg-1.0/data/*", tmp_path / "out", strip_components=2)
    assert manifest == {"a.fits": _sha(b"A" * 100), "sub/b.fits": _sha(b"B" * 50)}
    assert (tmp_path / "out" / "sub" / "b.fits").read_bytes() == b"B" * 50


@pytest.mark.parametrize("bad", ["../evil.fits", "/tmp/evil.fits", "pkg/../../evil.fits"])
def test_extract_refuses_path_traversal(tmp_path, bad):
    archive = _tar(tmp_path / "evil.tar.gz", {"pkg/ok.fits": b"x", bad: b"evil"})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="unsafe member path"):
        extract_members(archive, ["*.fits"], dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


def test_extract_refuses_matched_symlink(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("pkg/a.fits")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ArchiveError, match="not a regular file"):
        extract_members(archive, ["*.fits"], tmp_path / "out")


@pytest.mark.parametrize("maker, name", [(_tar, "pkg.tar.gz"), (_zip, "pkg.zip")])
def test_extract_truncated_archive_is_named(tmp_path, maker, name):
    big = {f"pkg/{i}.fits": random.Random(i).randbytes(20_000) for i in range(5)}
    archive = maker(tmp_path / name, big)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated") as err:
        extract_members(archive, ["*.fits"], tmp_path / "out")
    assert str(archive) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_extract_unmatched_pattern_and_existing_dest(tmp_path):
    archive = _tar(tmp_path / "pkg.tar.gz", MEMBERS)
    with pytest.raises(ArchiveError, match=r"pkg\.tar\.gz.*no regular-file member matches \['\*\.npz'\]"):
        extract_members(archive, ["*.fits", "*.npz"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        extract_members(archive, ["*.fits"], tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep"]


# ----------------------------------------------------------------------------- pip_download (faked pip)


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace subprocess.run in the registry module; `result` sets what pip 'does'."""
    calls, result = [], {"rc": 0, "output": "Saved\nSuccessfully downloaded ppxf\n", "files": {}}

    def run(cmd, **kwargs):
        calls.append(cmd)
        target = Path(cmd[cmd.index("-d") + 1])
        for name, data in result["files"].items():
            (target / name).write_bytes(data)
        return subprocess.CompletedProcess(cmd, result["rc"], result["output"])

    monkeypatch.setattr(registry.subprocess, "run", run)
    return calls, result


def test_pip_download_verifies_and_moves(tmp_path, fake_pip):
    calls, result = fake_pip
    result["files"] = {"ppxf-8.2.6.tar.gz": PAYLOAD}
    path = pip_download("ppxf", "8.2.6", tmp_path / "dl", sha256=SHA)
    assert path == tmp_path / "dl" / "ppxf-8.2.6.tar.gz" and path.read_bytes() == PAYLOAD
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["ppxf-8.2.6.tar.gz"]
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--no-build-isolation", "ppxf==8.2.6"} <= set(cmd)
    assert cmd[cmd.index("--no-binary") + 1] == ":all:" and "--only-binary" not in cmd


def test_pip_download_wheel_and_tofu(tmp_path, fake_pip):
    calls, result = fake_pip
    result["files"] = {"pkg-1.0-py3-none-any.whl": PAYLOAD}
    lock = ChecksumLock(tmp_path / "checksums.lock.yaml")
    pip_download("pkg", "1.0", tmp_path / "dl", kind="wheel", lock=lock)
    assert calls[0][calls[0].index("--only-binary") + 1] == ":all:"
    assert lock.get("pypi:pkg-1.0-py3-none-any.whl")["sha256"] == SHA

    result["files"] = {"pkg-1.0-py3-none-any.whl": OTHER}
    (tmp_path / "dl" / "pkg-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ChecksumError, match="checksums.lock.yaml"):
        pip_download("pkg", "1.0", tmp_path / "dl", kind="wheel", lock=lock)


def test_pip_download_checksum_mismatch_leaves_nothing(tmp_path, fake_pip):
    _, result = fake_pip
    result["files"] = {"ppxf-8.2.6.tar.gz": OTHER}
    with pytest.raises(ChecksumError) as err:
        pip_download("ppxf", "8.2.6", tmp_path / "dl", sha256=SHA)
    assert all(s in str(err.value) for s in ("ppxf-8.2.6.tar.gz", SHA, OTHER_SHA))
    assert list((tmp_path / "dl").iterdir()) == []


def test_pip_failure_is_one_clear_line(tmp_path, fake_pip):
    _, result = fake_pip
    result["rc"] = 1
    result["output"] = (
        "Looking in indexes: https://pypi.org/simple\n"
        "ERROR: Could not find a version that satisfies the requirement ppxf==99 (from versions: 9.4.1)\n"
        "ERROR: No matching distribution found for ppxf==99\n"
    )
    with pytest.raises(FetchError) as err:
        pip_download("ppxf", "99", tmp_path / "dl", sha256=SHA)
    message = str(err.value)
    assert "\n" not in message
    assert "pip download" in message and "ppxf==99" in message
    assert "pip said: ERROR: No matching distribution found for ppxf==99" in message
    assert f"by hand in {tmp_path / 'dl'} (sha256 {SHA})" in message
    assert list((tmp_path / "dl").iterdir()) == []
