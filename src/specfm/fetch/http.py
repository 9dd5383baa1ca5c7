"""Resumable, verified downloads from a list of mirrors.

Survey archives drop connections on large files and some cluster nodes only see a local mirror, so a
fetch streams to ``<dest>.part``, resumes with an HTTP ``Range`` request, retries transient faults with
exponential backoff, falls through the mirrors in order (``file://`` URLs are copied) and renames the
part file onto ``dest`` only once its sha256 is the pinned or recorded one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
import urllib3
from tqdm import tqdm

from specfm import __version__
from specfm.io import sha256_file

from .errors import ChecksumError, FetchError, checksum_hint
from .lock import ChecksumLock, redact_url, scrub

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_WAIT = 60.0  # cap on one backoff sleep or Retry-After, in seconds
USER_AGENT = f"specfm/{__version__} python-requests/{requests.__version__}"


class _Retry(Exception):
    """Transient fault: try the same URL again after a backoff."""

    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


class _GiveUp(Exception):
    """This URL will not work (4xx, missing local file, retries exhausted): move to the next mirror."""


def download(
    urls: str | Iterable[str],
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60,
    progress: bool = True,
    lock: ChecksumLock | None = None,
    lock_key: str | None = None,
) -> str:
    """Fetch ``dest`` from the first working mirror in ``urls`` and return its hex sha256.

    The expected sha256 is ``sha256`` if given, else the one recorded in ``lock`` under ``lock_key``;
    if neither exists the first successful fetch is recorded in ``lock`` (trust on first use). A
    mismatch raises ChecksumError at once (no re-download loop) and leaves nothing at ``dest``. If
    ``dest`` already holds the expected bytes nothing is fetched.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("download() needs at least one URL")
    if lock is not None and not lock_key:
        raise ValueError("download(): lock_key is required when a lock is given")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    entry = lock.get(lock_key) if lock is not None else None
    expected = (sha256 or (entry or {}).get("sha256") or "").lower() or None
    source = "pinned" if sha256 else f"recorded in {lock.path} under {lock_key!r}" if entry else ""

    if expected and dest.is_file():
        if sha256_file(dest) == expected:
            _record(lock, lock_key, expected, dest, urls[0])
            return expected
        log.warning("%s exists but its sha256 is not %s; fetching it again", dest, expected)

    dest.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    for url in urls:
        if not expected:  # bytes resumed from another attempt can only be trusted if verifiable
            part.unlink(missing_ok=True)
        try:
            inherited = part.exists()
            _fetch(url, part, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
            actual = sha256_file(part)
            if expected and actual != expected and inherited:
                log.warning("%s: resumed bytes do not verify; fetching %s again from zero", part,
                            redact_url(url))
                part.unlink()
                _fetch(url, part, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
                actual = sha256_file(part)
        except _GiveUp as exc:
            last = f"{redact_url(url)}: {scrub(str(exc), url)}"
            log.warning("giving up on %s", last)
            continue
        try:
            if expected and actual != expected:
                raise ChecksumError(
                    f"sha256 mismatch for {dest} fetched from {redact_url(url)}: expected {expected} ({source}), "
                    f"got {actual}; the download was deleted"
                )
            _record(lock, lock_key, actual, part, url)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return actual

    raise FetchError(
        f"could not fetch {dest.name}: tried {', '.join(map(redact_url, urls))}; last error: {last}; "
        f"place the file by hand at {dest} ({checksum_hint(expected, lock)})"
    )


def _record(lock: ChecksumLock | None, key: str | None, sha: str, path: Path, url: str) -> None:
    if lock is not None:  # no-op if known; ChecksumError if another job recorded other bytes
        lock.record(key, sha256=sha, size=path.stat().st_size, url=url)


def _fetch(url: str, part: Path, *, retries: int, backoff: float, timeout: float,
           progress: bool) -> None:
    """Complete ``part`` from one URL, retrying transient faults; raise _GiveUp when it cannot."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        src = Path(url2pathname(urlsplit(url).path))
        if not src.is_file():
            raise _GiveUp(f"no such file {src}")
        shutil.copyfile(src, part)
        return
    if scheme not in ("http", "https"):
        raise _GiveUp(f"unsupported URL scheme {scheme!r}")
    attempt = 0
    with requests.Session() as session:
        while True:
            try:
                return _get_once(session, url, part, timeout=timeout, progress=progress)
            except _Retry as exc:
                error, wait = str(exc), exc.wait
            except requests.exceptions.SSLError as exc:
                raise _GiveUp(_describe(exc)) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as exc:
                error, wait = _describe(exc), 0.0
            except requests.RequestException as exc:
                raise _GiveUp(_describe(exc)) from None
            attempt += 1
            if attempt > retries:
                raise _GiveUp(f"{error} (gave up after {retries} retries)")
            delay = min(MAX_WAIT, max(wait, backoff * 2 ** (attempt - 1)))
            log.warning("%s: %s; retry %d/%d in %.2f s", redact_url(url), scrub(error, url), attempt,
                        retries, delay)
            time.sleep(delay)


def _get_once(session: requests.Session, url: str, part: Path, *, timeout: float,
              progress: bool) -> None:
    """One GET, appending to ``part`` after a 206 or rewriting it after a 200."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        status = r.status_code
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status} {r.reason}", wait=_retry_after(r))
        if status == 416 and offset:
            part.unlink()
            raise _Retry("HTTP 416 for the resumed range; restarting from zero")
        if status not in (200, 206):
            raise _GiveUp(f"HTTP {status} {r.reason}")
        if status == 206:
            start = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
            if not offset or not start or int(start.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retry("unexpected Content-Range; restarting from zero")
        elif offset:
            log.info("%s ignored the Range request; restarting from zero", redact_url(url))
            offset = 0
        length = r.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        with open(part, "ab" if offset else "wb") as fh, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], file=sys.stderr, disable=not progress, leave=False,
        ) as bar:
            for chunk in r.raw.stream(CHUNK, decode_content=False):  # the bytes as stored upstream
                fh.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"short read: {size} of {total} bytes")


def _retry_after(r: requests.Response) -> float:
    value = r.headers.get("Retry-After", "")
    return min(MAX_WAIT, float(value)) if value.isdigit() else 0.0


def _describe(exc: Exception) -> str:
    """Short text for a requests/urllib3 error: 'ConnectionError ([Errno 111] Connection refused)'."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return f"{type(exc).__name__} ({errno.group(0).strip()})"
    return f"{type(exc).__name__} ({text[:300]})" if text else type(exc).__name__
