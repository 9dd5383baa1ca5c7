"""Trust-on-first-use checksum lock file (e.g. ``config/checksums.lock.yaml``).

Upstream archives rarely publish checksums, so the first successful fetch records one and every later
fetch, on any machine, must reproduce it. The file is shared by concurrent jobs, so each write takes
an exclusive ``fcntl.flock`` on a hidden sidecar file, re-reads, modifies and atomically replaces the
YAML, which is kept sorted so that it diffs cleanly under version control.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml

from specfm.io import sha256_file, write_bytes_atomic

from .errors import ChecksumError

HEADER = (
    "# sha256 of every downloaded input, recorded on first fetch (trust on first use).\n"
    "# Written by specfm.fetch; delete an entry to accept a legitimately changed upstream file.\n"
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Query parameters that carry credentials (signed URLs, API keys): never written down.
_SECRET_PARAM = re.compile(r"token|key|secret|pass|pwd|auth|sig|credential|session|^x-amz-|^x-goog-",
                           re.IGNORECASE)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~20x faster on a long lock file
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def redact_url(url: str) -> str:
    """`url` without user:password@, secret-looking query parameters and the fragment.

    The lock file is committed and logs are shared, so a mirror URL with credentials in it must
    reach neither as given. Not a URL (e.g. "pip download ..."): returned unchanged.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SECRET_PARAM.search(k)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def url_secrets(url: str) -> list[str]:
    """The secret parts of `url` (password, user, secret query values), to scrub from error texts."""
    parts = urlsplit(url)
    found = [parts.password, parts.username]
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_PARAM.search(k)]
    return sorted({s for s in found if s and len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (e.g. a requests error that quotes the URL) with the secrets of `url` replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


class ChecksumLock:
    """Mapping ``key -> {sha256, size, url}`` stored as YAML at ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.sidecar = self.path.with_name(f".{self.path.name}.lock")

    def __repr__(self) -> str:
        return f"ChecksumLock({str(self.path)!r})"

    def read(self) -> dict[str, dict]:
        """All entries (empty if the file does not exist yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        data = yaml.load(text, Loader=_Loader) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a mapping of key -> {{sha256, size, url}}")
        for key, entry in data.items():
            if not isinstance(entry, dict) or not _HEX64.match(str(entry.get("sha256", ""))):
                raise ValueError(f"{self.path}: entry {key!r} has no valid lower-case hex sha256")
        return data

    def get(self, key: str) -> dict | None:
        return self.read().get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.read()

    def record(self, key: str, *, sha256: str, size: int | None = None, url: str | None = None) -> dict:
        """Record ``key`` unless already known; raise ChecksumError if it is known with another sha256.

        Safe under concurrency: several processes or threads may record at once.
        """
        entry = {"sha256": sha256, "size": size, "url": redact_url(url) if url else url}
        with self._locked():
            data = self.read()
            old = data.get(key)
            if old is not None:
                if old["sha256"] != sha256:
                    raise ChecksumError(
                        f"{key}: sha256 {sha256} differs from {old['sha256']} already recorded in "
                        f"{self.path}; delete that entry if the upstream file legitimately changed"
                    )
                return old
            data[key] = {k: v for k, v in entry.items() if v is not None}
            self._write(data)
        return data[key]

    def verify_files(self, mapping: Mapping[str, str | os.PathLike]) -> list[tuple[str, str, str]]:
        """Compare files on disk with the lock: ``[(key, path, problem), ...]``, empty if all agree."""
        data = self.read()
        problems = []
        for key, path in sorted(mapping.items()):
            path = Path(path)
            entry = data.get(key)
            if entry is None:
                problem = f"not recorded in {self.path}"
            elif not path.is_file():
                problem = "missing"
            elif entry.get("size") is not None and path.stat().st_size != entry["size"]:
                problem = f"size {path.stat().st_size} != recorded {entry['size']}"
            elif (actual := sha256_file(path)) != entry["sha256"]:
                problem = f"sha256 {actual} != recorded {entry['sha256']}"
            else:
                continue
            problems.append((key, str(path), problem))
        return problems

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.sidecar, "a") as fh:  # flock is per open file, so threads exclude each other too
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write(self, data: dict) -> None:
        first = ("sha256", "size", "url")  # then any hand-added fields, sorted
        ordered = {
            k: {f: data[k][f] for f in [*first, *sorted(set(data[k]) - set(first))] if f in data[k]}
            for k in sorted(data)
        }
        body = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
        write_bytes_atomic(self.path, (HEADER + body).encode())
