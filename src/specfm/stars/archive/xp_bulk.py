"""Gaia DR3 XP continuous mean spectra from the ESA bulk files (``XpContinuousMeanSpectrum_*.csv.gz``).

The files are ECSV-flavoured CSV: '#' header lines, then a header row, one row per source, and the
coefficient arrays stored as quoted strings like ``"[1.0,2.0,...]"`` (or ``"(...)"``), as gaiaxpy's
own reader expects. Each file covers a range of level-8 HEALPix pixels named in its file name. We
stream them row by row (gzip text + csv module, not pandas) because a file is ~1 GB uncompressed
and we need the exact line of a malformed row for the error; only rows of the wanted partition are
kept. gaiaxpy's readers load a whole file into memory and know nothing of partitions.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import re
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from specfm.fetch import download
from specfm.io import atomic_path
from specfm.stars import columns as C

log = logging.getLogger(__name__)

BULK_URL = "https://cdn.gea.esac.esa.int/Gaia/gdr3/Spectroscopy/xp_continuous_mean_spectrum/"
BULK_LEVEL = 8  # the HEALPix level of the ranges in the bulk file names
_NAME = re.compile(r"XpContinuousMeanSpectrum_(\d+)-(\d+)\.csv\.gz$")
_NULLS = {"", "null", "NULL", "nan", "NaN", "--"}
csv.field_size_limit(1 << 24)  # a row holds two 55x55 correlation matrices as text


class XpBulkError(ValueError):
    """A bulk XP file is malformed or truncated; the message names the file and line."""


def bulk_file_range(name: str) -> tuple[int, int]:
    """Inclusive level-8 HEALPix range covered by a bulk file, from its name."""
    found = _NAME.search(Path(name).name)
    if not found:
        raise ValueError(f"{name}: not an XpContinuousMeanSpectrum_<from>-<to>.csv.gz file name")
    return int(found.group(1)), int(found.group(2))


def files_for_partition(names: Iterable[str], hpx: int, level: int) -> list[str]:
    """The bulk files whose level-8 range overlaps partition `hpx` at `level`."""
    if level <= BULK_LEVEL:
        lo, hi = hpx * 4 ** (BULK_LEVEL - level), (hpx + 1) * 4 ** (BULK_LEVEL - level) - 1
    else:
        lo = hi = hpx // 4 ** (level - BULK_LEVEL)
    return sorted(n for n in names if (r := bulk_file_range(n))[0] <= hi and r[1] >= lo)


def read_md5sum(path: str | Path) -> dict[str, str]:
    """{file name: md5} from the archive's ``_MD5SUM.txt`` index (the directory's file list)."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            raise ValueError(f"{path}:{n}: expected '<md5> <file name>', got {line!r}")
        out[Path(parts[1]).name] = parts[0].lower()
    return out


def ensure_bulk_file(name: str, md5: str, dest_dir: str | Path, *, base_url: str = BULK_URL,
                     retries: int = 5, backoff: float = 2.0) -> Path:
    """Download one bulk file into `dest_dir` (resumable, see specfm.fetch) unless it is already
    there with the published md5; the file appears under its name only once verified."""
    dest = Path(dest_dir) / name
    if dest.is_file() and _md5(dest) == md5:
        return dest
    with atomic_path(dest) as tmp:
        download(base_url.rstrip("/") + "/" + name, tmp, retries=retries, backoff=backoff, progress=False)
        got = _md5(tmp)
        if got != md5:
            raise XpBulkError(f"{name}: md5 {got} differs from the archive's _MD5SUM.txt ({md5}); deleted")
    return dest


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- parsing


def parse_array(text, n: int = C.N_XP) -> np.ndarray:
    """'[1.0,2.0,...]' / '(1.0, 2.0, ...)' / an array -> float array of length `n`; null -> all NaN.

    Raises ValueError for anything else, including NaN inside a present array (a published
    coefficient is never NaN; one means a corrupt row, not a missing spectrum).
    """
    if text is None or (isinstance(text, str) and text.strip() in _NULLS):
        return np.full(n, np.nan)
    if isinstance(text, float) and np.isnan(text):
        return np.full(n, np.nan)
    if isinstance(text, str):
        body = text.strip()
        if len(body) < 2 or (body[0], body[-1]) not in (("[", "]"), ("(", ")")):
            raise ValueError(f"coefficient array is not '[...]' or '(...)': {body[:60]!r}")
        values = np.array([float(v) for v in body[1:-1].split(",")], dtype=float)
    else:
        masked = np.ma.getmaskarray(text)
        if masked.all() and masked.size:
            return np.full(n, np.nan)
        values = np.ma.filled(np.ma.asarray(text, dtype=float), np.nan)
    if values.shape != (n,):
        raise ValueError(f"coefficient array has {values.size} values, expected {n}")
    if np.isnan(values).any():
        raise ValueError("coefficient array contains NaN")
    return values


ERROR_FIELDS = ("bp_coefficient_errors", "rp_coefficient_errors")


def _parse_pair(records: dict, fields, ids, origin: str, lines) -> np.ndarray:
    out = np.empty((len(ids), 2 * C.N_XP))
    for i in range(len(ids)):
        try:
            out[i, :C.N_XP] = parse_array(records[fields[0]][i])
            out[i, C.N_XP:] = parse_array(records[fields[1]][i])
        except ValueError as exc:
            where = f"{origin}:{lines[i]}" if lines else origin
            what = "errors: " if fields == ERROR_FIELDS else ""
            raise XpBulkError(f"{where}: source_id {ids[i]}: {what}{exc}") from None
    return out


def coefficient_frame(records: dict, *, origin: str, lines: list[int] | None = None) -> pd.DataFrame:
    """{'source_id', 'bp_coefficients', 'rp_coefficients'[, 'bp_coefficient_errors',
    'rp_coefficient_errors']} lists -> source_id + the contract's XP columns (+ XP_ERR: the
    errors of the canonical coefficients, `xp.canonical_errors`, when the records carry Gaia's).
    `lines` (file line of each record) makes the error point at the offending line."""
    ids = np.asarray(records["source_id"], dtype=np.int64)
    xp = _parse_pair(records, ("bp_coefficients", "rp_coefficients"), ids, origin, lines)
    frame = pd.DataFrame(xp, columns=C.XP)
    if all(f in records for f in ERROR_FIELDS):
        from ..xp import canonical_errors

        errors = _parse_pair(records, ERROR_FIELDS, ids, origin, lines)
        frame = pd.concat([frame, pd.DataFrame(canonical_errors(errors), columns=C.XP_ERR)], axis=1)
    frame.insert(0, "source_id", ids)
    return frame


def read_xp_bulk(path: str | Path, *, source_id_range: tuple[int, int] | None = None,
                 chunk_rows: int = 20000) -> Iterator[pd.DataFrame]:
    """Stream one bulk file as DataFrames of at most `chunk_rows` rows (source_id + XP columns),
    keeping only source_ids in the inclusive `source_id_range` if given.

    Raises XpBulkError naming the file and line for a truncated/corrupt gzip, a short row, a
    malformed or NaN coefficient array, or a file without the needed columns.
    """
    path = Path(path)
    lo, hi = source_id_range if source_id_range else (-1, np.iinfo(np.int64).max)
    line = 0
    try:
        with gzip.open(path, "rt", newline="") as fh:
            header = None
            for raw in fh:  # '#' lines: the ECSV header (column types), not needed here
                line += 1
                if not raw.startswith("#"):
                    header = next(csv.reader([raw]))
                    break
            if header is None:
                raise XpBulkError(f"{path}: no header row (empty file or only comments)")
            try:
                cols = [header.index(c) for c in ("source_id", "bp_coefficients", "rp_coefficients")]
            except ValueError:
                raise XpBulkError(f"{path}:{line}: header lacks source_id/bp_coefficients/rp_coefficients "
                                  f"(has {', '.join(header[:8])}...)") from None
            fields = ["bp_coefficients", "rp_coefficients"]
            if all(f in header for f in ERROR_FIELDS):  # Gaia's bulk files have them; keep them
                fields += ERROR_FIELDS
                cols += [header.index(f) for f in ERROR_FIELDS]
            records = {"source_id": [], **{f: [] for f in fields}}
            lines = []
            reader = csv.reader(fh)
            first = line
            for row in reader:
                line = first + reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise XpBulkError(f"{path}:{line}: {len(row)} fields, header has {len(header)} "
                                      "(truncated or malformed row)")
                try:
                    sid = int(row[cols[0]])
                except ValueError:
                    raise XpBulkError(f"{path}:{line}: source_id {row[cols[0]]!r} is not an integer") from None
                if not lo <= sid <= hi:
                    continue
                records["source_id"].append(sid)
                for f, col in zip(fields, cols[1:]):
                    records[f].append(row[col])
                lines.append(line)
                if len(lines) >= chunk_rows:
                    yield coefficient_frame(records, origin=str(path), lines=lines)
                    records = {k: [] for k in records}
                    lines = []
            if lines:
                yield coefficient_frame(records, origin=str(path), lines=lines)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise XpBulkError(f"{path}: truncated or corrupt gzip after line {line} ({exc})") from None
    except csv.Error as exc:
        raise XpBulkError(f"{path}:{line}: malformed CSV ({exc})") from None


def xp_for_partition(paths: Iterable[str | Path], lo: int, hi: int) -> pd.DataFrame:
    """Concatenate the partition's rows from its bulk files; a duplicated source_id is an error."""
    paths = list(paths)
    frames = [f for p in paths for f in read_xp_bulk(p, source_id_range=(lo, hi))]
    if not frames:
        return coefficient_frame({"source_id": [], "bp_coefficients": [], "rp_coefficients": []}, origin="none")
    xp = pd.concat(frames, ignore_index=True)
    dup = xp["source_id"].duplicated(keep=False)
    if dup.any():
        raise XpBulkError(f"XP bulk files {', '.join(map(str, paths))}: source_id "
                          f"{xp['source_id'][dup].iloc[0]} appears {int(dup.sum())} times")
    return xp
