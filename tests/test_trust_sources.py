"""A source's pinned checksum holds on every path: the unpack step and every manifest reader check the
archive against the config's pin (or the lock), and a failed re-unpack keeps the good members."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from specfm.fetch import ArchiveError, ChecksumError, ChecksumLock
from specfm.fetch.sources import manifest_files, unpack_source

MEMBERS = {"pkg-1.0/data/a.fits": b"A" * 100, "pkg-1.0/data/b.fits": b"B" * 50}


def tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def good(tmp_path):
    archive = tar(tmp_path / "resources/archives/src/pkg-1.0.tar.gz", MEMBERS)
    return archive, sha(archive), tmp_path / "resources/src/manifest.json"


def test_repacked_archive_is_refused_by_unpack(tmp_path, good):
    archive, pin, manifest = good
    tar(archive, {**MEMBERS, "pkg-1.0/data/a.fits": b"X" * 100})  # valid tar.gz, other bytes
    with pytest.raises(ChecksumError) as info:
        unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    msg = str(info.value)
    assert str(archive) in msg and pin in msg and sha(archive) in msg and "\n" not in msg
    assert not manifest.exists() and not (manifest.parent / "files").exists()


def test_unpack_checks_the_lock_for_trust_on_first_use_sources(tmp_path, good):
    archive, digest, manifest = good
    lock = ChecksumLock(tmp_path / "lock.yaml")
    lock.record("src/pkg-1.0.tar.gz", sha256="0" * 64)
    with pytest.raises(ChecksumError) as info:
        unpack_source(archive, ["*.fits"], manifest, lock_path=lock.path, lock_key="src/pkg-1.0.tar.gz")
    assert "0" * 64 in str(info.value) and digest in str(info.value) and str(lock.path) in str(info.value)


def test_reader_refuses_an_archive_replaced_after_unpacking(tmp_path, good):
    archive, pin, manifest = good
    unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    assert [p.name for p in manifest_files(manifest, "*.fits")] == ["a.fits", "b.fits"]
    tar(archive, {**MEMBERS, "pkg-1.0/data/c.fits": b"C"})
    with pytest.raises(ChecksumError) as info:
        manifest_files(manifest, "*.fits")
    assert str(archive) in str(info.value) and pin in str(info.value) and sha(archive) in str(info.value)


def test_reader_refuses_a_manifest_of_another_pin(tmp_path, good):
    archive, pin, manifest = good
    unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    with pytest.raises(ChecksumError) as info:
        manifest_files(manifest, sha256="1" * 64)  # the caller's config pins other bytes
    assert "1" * 64 in str(info.value) and pin in str(info.value)
    data = json.loads(manifest.read_text())
    data["archive_sha256"] = "2" * 64  # a manifest made from bytes that were never the pin
    manifest.write_text(json.dumps(data))
    archive.unlink()
    with pytest.raises(ChecksumError):
        manifest_files(manifest)


def test_manifest_without_a_checked_pin_is_refused(tmp_path, good):
    """A manifest written before unpacks checked the pin says nothing about the archive: rerun."""
    archive, pin, manifest = good
    unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    data = json.loads(manifest.read_text())
    del data["expected"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ChecksumError) as info:
        manifest_files(manifest)
    assert str(manifest) in str(info.value) and "unpack" in str(info.value)


def test_failed_reunpack_keeps_the_verified_members(tmp_path, good):
    archive, pin, manifest = good
    unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    before = {p.name: sha(p) for p in (manifest.parent / "files").iterdir()}
    truncated = archive.with_name("trunc.tar.gz")
    truncated.write_bytes(archive.read_bytes()[:60])
    with pytest.raises(ArchiveError):
        unpack_source(truncated, ["*.fits"], manifest, sha256=sha(truncated), what="test pin")
    assert {p.name: sha(p) for p in (manifest.parent / "files").iterdir()} == before
    assert [p.name for p in manifest.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries
    assert [p.name for p in manifest_files(manifest)] == ["a.fits", "b.fits"]  # still readable


def test_reunpack_replaces_members_and_leaves_no_temporaries(tmp_path, good):
    archive, pin, manifest = good
    unpack_source(archive, ["*.fits"], manifest, sha256=pin, what="config sources.src.sha256")
    (manifest.parent / ".files.new-stale").mkdir()  # left by a killed unpack
    other = tar(tmp_path / "other.tar.gz", {"x/c.fits": b"C" * 10})
    unpack_source(other, ["*.fits"], manifest, sha256=sha(other), what="test pin")
    assert [p.name for p in manifest_files(manifest)] == ["c.fits"]
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["files", "manifest.json"]
