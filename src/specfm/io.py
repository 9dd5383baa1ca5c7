"""Small file helpers shared by every stage: hashing and atomic writes.

Every product is written under a temporary name in the same directory and renamed into place only
when complete, so a killed or requeued job never leaves a file that looks finished. The temporary's
name holds the writer's pid and host, so the next write of the same product can tell the litter of
a writer that was killed (SIGKILL leaves no chance to clean up) from a live writer's file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20
HOST = socket.gethostname().replace("/", "_")
STALE_ELSEWHERE_S = 3600  # a temporary of another host's writer untouched this long is stale
log = logging.getLogger(__name__)


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by writers that are gone; return what was removed.

    Stale: this host's writer whose pid is no longer running, another host's untouched for
    STALE_ELSEWHERE_S, or a name without pid and host (written before names carried them).
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(?:(\d+)@(.+)-)?[^-]*{re.escape(path.suffix)}$")
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        m = pattern.match(tmp.name)
        if m is None or not tmp.is_file():
            continue
        pid, host = (int(m.group(1)), m.group(2)) if m.group(1) else (None, None)
        if pid is None:
            stale = True
        elif host == HOST:
            stale = pid != os.getpid() and not _alive(pid)
        else:
            stale = time.time() - tmp.stat().st_mtime > STALE_ELSEWHERE_S
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            log.info("removed %s, left by a writer of %s that was killed", tmp, path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the real suffix (``.foo.h5.tmp-<pid>@<host>-XXXX.h5``) so libraries
    that pick a writer from the extension (astropy, matplotlib) still work. Stale temporaries of
    `path` (remove_stale_temporaries) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}@{HOST}-", suffix=path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp makes 0600; products are shared files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_frames_atomic(path: str | os.PathLike, frames) -> int:
    """Stream DataFrames (one schema) into one zstd Parquet file, atomically; return the rows.
    A row group per frame, so a catalogue of any size is never in memory at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_rows, writer = 0, None
    with atomic_path(path) as tmp:
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
                n_rows += len(frame)
        finally:
            if writer is not None:
                writer.close()
    return n_rows


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Deterministic JSON (sorted keys, fixed indent, trailing newline), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes_atomic(path, text.encode())


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    try:  # numpy scalars and arrays without importing numpy here
        return obj.tolist()
    except AttributeError:
        raise TypeError(f"cannot serialise {type(obj).__name__} to JSON") from None
