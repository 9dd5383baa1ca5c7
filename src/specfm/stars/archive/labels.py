"""Spectroscopic labels for fine-tuning: APOGEE DR17 allStar (+ astroNN ages and distances), GALAH DR4,
RAVE DR6, with the thesis's quality cuts, into the contract's label columns.

Each reader returns source_id + `columns.LABELS` + `columns.LABEL_ERRORS`; a label a survey lacks or
flags as bad is NaN (never 0). Sentinels (-9999 ...) become NaN. Within one survey a source_id that
occurs more than once is dropped with all its copies (the thesis: "it and its duplicates were
removed"), since we cannot tell which copy is right. Across surveys each star takes its labels from
the first survey in priority order that has it, and `label_survey` says which.

Column names are the published ones (allStar-dr17-synspec_rev1, apogee_astroNN-DR17,
galah_dr4_allstar, RAVE DR6 BDASP/CNN); each reader takes a `names` override for other versions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.table import Table

from specfm.stars import columns as C

log = logging.getLogger(__name__)

APOGEE_STAR_BAD = 1 << 23  # ASPCAPFLAG bit 23: STAR_BAD
APOGEE_EXTRATARG_DUPLICATE = 1 << 4  # EXTRATARG bit 4: not the primary (highest S/N) visit of a star
GALAH_BAD_BITS = 0b11  # flag_X_fe bits 0-1: problem / upper limit (the thesis: both must be 0)
LEUNG_MAX_REL_ERR = 0.4  # Leung et al. 2023 ages: relative error < 40 % (authors' recommendation)

APOGEE_NAMES = {
    "source_id": "GAIAEDR3_SOURCE_ID", "apogee_id": "APOGEE_ID",
    "teff": ("TEFF", "TEFF_ERR"), "logg": ("LOGG", "LOGG_ERR"), "fe_h": ("FE_H", "FE_H_ERR"),
    "alpha_m": ("ALPHA_M", "ALPHA_M_ERR"), "m_h": "M_H",
    "aspcapflag": "ASPCAPFLAG", "starflag": "STARFLAG", "extratarg": "EXTRATARG",
}
ASTRONN_NAMES = {"apogee_id": "APOGEE_ID", "age": ("age", "age_total_error"), "dist": ("dist", "dist_error")}
LEUNG_NAMES = {"apogee_id": "APOGEE_ID", "age": ("Age", "Age_Error")}
GALAH_NAMES = {
    "source_id": "gaiadr3_source_id", "flag_sp": "flag_sp",
    "teff": ("teff", "e_teff"), "logg": ("logg", "e_logg"), "fe_h": ("fe_h", "e_fe_h", "flag_fe_h"),
    "alpha_fe": ("alpha_fe", "e_alpha_fe", "flag_alpha_fe"), "age": ("age", "e_age"),
}
RAVE_NAMES = {
    "source_id": "gaiaedr3_source_id",
    "teff": ("teff_bdasp", "teff_error_bdasp"), "logg": ("logg_bdasp", "logg_error_bdasp"),
    "fe_h": ("m_h_bdasp", "m_h_error_bdasp"),  # RAVE gives [M/H], used in place of [Fe/H] (thesis 5.2.2)
    "alpha_fe": ("alpha_m_cnn", "alpha_m_error_cnn"), "age": ("age_bdasp", "age_error_bdasp"),
    "parallax_label": ("parallax_bdasp", "parallax_error_bdasp"),
}


def read_table(path: str | Path) -> pd.DataFrame:
    """FITS / CSV / Parquet / VOTable catalogue as a DataFrame with masked and sentinel values NaN."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            table = Table.read(path, format="ascii.csv" if ".csv" in path.suffixes else None)
            keep = [n for n in table.colnames if table[n].ndim == 1]  # per-star scalars only
            frame = _table_to_frame(table[keep])
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"{path}: cannot read label catalogue ({type(exc).__name__}: {exc})") from None
    return frame


def _table_to_frame(table: Table) -> pd.DataFrame:
    out = {}
    for name in table.colnames:
        col = table[name]
        mask = np.ma.getmaskarray(col)
        data = np.asarray(col.filled(0) if hasattr(col, "filled") else col)
        if data.dtype.kind == "f":
            data = data.copy()
            data[mask] = np.nan
        elif data.dtype.kind in "SU":
            data = np.char.strip(data.astype(str))
        out[name] = data
    return pd.DataFrame(out)


def _num(frame: pd.DataFrame, name: str | None, path) -> np.ndarray:
    if name is None:
        return np.full(len(frame), np.nan)
    if name not in frame:
        raise ValueError(f"{path}: column {name!r} not found (columns: {', '.join(map(str, frame.columns[:20]))}...)")
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(float, copy=True)
    values[np.isin(values, C.SENTINELS) | ~np.isfinite(values)] = np.nan
    return values


def _ids(frame: pd.DataFrame, name: str, path) -> np.ndarray:
    if name not in frame:
        raise ValueError(f"{path}: source_id column {name!r} not found")
    return pd.to_numeric(frame[name], errors="coerce").fillna(0).to_numpy(np.int64)


def _empty_labels(ids: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({c: np.full(len(ids), np.nan) for c in C.LABELS + C.LABEL_ERRORS})
    frame.insert(0, "source_id", ids.astype(np.int64))
    return frame


def _finish(out: pd.DataFrame, keep: np.ndarray, survey: str, path) -> pd.DataFrame:
    """Drop rows failing `keep` or without a source_id, then every duplicated source_id; log counts."""
    n0 = len(out)
    keep = keep & (out["source_id"].to_numpy() > 0)
    out = out[keep]
    dup = out["source_id"].duplicated(keep=False)
    out = out[~dup].reset_index(drop=True)
    log.info("%s labels from %s: %d rows in, %d pass the quality cuts, %d source_ids dropped as duplicated, "
             "%d out", survey, path, n0, int(keep.sum()), int(dup.sum()), len(out))
    return out


def apogee_labels(allstar: str | Path, *, astronn: str | Path | None = None, leung: str | Path | None = None,
                  names=None, astronn_names=None, leung_names=None) -> pd.DataFrame:
    """APOGEE DR17: Teff, logg, [Fe/H], [alpha/Fe] = [alpha/M] + [M/H] - [Fe/H]; ages from Leung et al.
    (2023) where they pass the authors' cuts (relative error < 40 %, STARFLAG = ASPCAPFLAG = 0), else
    astroNN (Mackereth et al. 2019); parallax_label = 1000 / astroNN distance (pc).
    Rows with ASPCAPFLAG STAR_BAD, and non-primary duplicate visits (EXTRATARG bit 4), are dropped."""
    n = {**APOGEE_NAMES, **(names or {})}
    frame = read_table(allstar)
    out = _empty_labels(_ids(frame, n["source_id"], allstar))
    for label in ("teff", "logg", "fe_h"):
        out[label] = _num(frame, n[label][0], allstar)
        out[f"{label}_err"] = _num(frame, n[label][1], allstar)
    out["alpha_fe"] = _num(frame, n["alpha_m"][0], allstar) + _num(frame, n["m_h"], allstar) - out["fe_h"]
    out["alpha_fe_err"] = _num(frame, n["alpha_m"][1], allstar)
    aspcap = _num(frame, n["aspcapflag"], allstar)
    star = _num(frame, n["starflag"], allstar)
    extra = _num(frame, n["extratarg"], allstar)
    keep = ((np.nan_to_num(aspcap).astype(np.int64) & APOGEE_STAR_BAD) == 0) & \
           ((np.nan_to_num(extra).astype(np.int64) & APOGEE_EXTRATARG_DUPLICATE) == 0)
    apogee_id = frame[n["apogee_id"]].astype(str).str.strip().to_numpy()
    if astronn is not None:
        an = {**ASTRONN_NAMES, **(astronn_names or {})}
        vac = _by_apogee_id(read_table(astronn), an["apogee_id"], astronn)
        idx = vac.index.get_indexer(apogee_id)
        age, age_err = _take(vac, an["age"], idx, astronn)
        dist, dist_err = _take(vac, an["dist"], idx, astronn)
        out["age"], out["age_err"] = age, age_err
        with np.errstate(divide="ignore", invalid="ignore"):
            good = dist > 0
            out["parallax_label"] = np.where(good, 1000.0 / dist, np.nan)
            out["parallax_label_err"] = np.where(good, 1000.0 * dist_err / dist**2, np.nan)
    if leung is not None:
        ln = {**LEUNG_NAMES, **(leung_names or {})}
        vac = _by_apogee_id(read_table(leung), ln["apogee_id"], leung)
        idx = vac.index.get_indexer(apogee_id)
        age, age_err = _take(vac, ln["age"], idx, leung)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = (age_err / age < LEUNG_MAX_REL_ERR) & (age > 0) & (aspcap == 0) & (star == 0)
        log.info("APOGEE: %d Leung et al. (2023) ages pass the cuts and replace astroNN ages", int(ok.sum()))
        out.loc[ok, "age"] = age[ok]
        out.loc[ok, "age_err"] = age_err[ok]
    return _finish(out, keep, "APOGEE", allstar)


def _by_apogee_id(frame: pd.DataFrame, key: str, path) -> pd.DataFrame:
    if key not in frame:
        raise ValueError(f"{path}: column {key!r} not found")
    frame = frame.assign(_key=frame[key].astype(str).str.strip())
    return frame.drop_duplicates("_key", keep=False).set_index("_key")


def _take(vac: pd.DataFrame, cols: tuple[str, str], idx: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    values, errors = (_num(vac, c, path) for c in cols)
    found = idx >= 0
    v = np.where(found, values[np.where(found, idx, 0)], np.nan)
    e = np.where(found, errors[np.where(found, idx, 0)], np.nan)
    return v, e


def galah_labels(path: str | Path, *, names=None) -> pd.DataFrame:
    """GALAH DR4: rows with flag_sp != 0 dropped; [Fe/H] and [alpha/Fe] set missing where their
    flag has bit 0 (problem) or bit 1 (upper limit) set; isochrone ages with errors."""
    n = {**GALAH_NAMES, **(names or {})}
    frame = read_table(path)
    out = _empty_labels(_ids(frame, n["source_id"], path))
    for label in ("teff", "logg", "fe_h", "alpha_fe", "age"):
        value, error = _num(frame, n[label][0], path), _num(frame, n[label][1], path)
        if len(n[label]) > 2:
            bad = (np.nan_to_num(_num(frame, n[label][2], path), nan=1).astype(np.int64) & GALAH_BAD_BITS) != 0
            value[bad] = error[bad] = np.nan
        out[label], out[f"{label}_err"] = value, error
    keep = _num(frame, n["flag_sp"], path) == 0
    return _finish(out, keep, "GALAH", path)


def rave_labels(path: str | Path, *, names=None) -> pd.DataFrame:
    """RAVE DR6: BDASP Teff, logg, [M/H] (as fe_h), age, parallax and the CNN [alpha/M]; the thesis
    applied no cut beyond de-duplication."""
    n = {**RAVE_NAMES, **(names or {})}
    frame = read_table(path)
    out = _empty_labels(_ids(frame, n["source_id"], path))
    for label in C.LABELS:
        if label in n:
            out[label], out[f"{label}_err"] = _num(frame, n[label][0], path), _num(frame, n[label][1], path)
    return _finish(out, np.ones(len(out), bool), "RAVE", path)


def combine(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per source_id: labels from the first survey (in dict order) that has the star."""
    parts = [t.assign(label_survey=name) for name, t in tables.items() if len(t)]
    if not parts:
        out = _empty_labels(np.array([], np.int64))
        return out.assign(label_survey=pd.Series([], dtype=object))
    merged = pd.concat(parts, ignore_index=True).drop_duplicates("source_id", keep="first")
    log.info("labels: %d rows from %s -> %d unique source_ids", sum(map(len, parts)),
             ", ".join(tables), len(merged))
    return merged.reset_index(drop=True)
