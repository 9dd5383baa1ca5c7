"""Join Gaia + crossmatches + SkyMapper + XP + labels on source_id into one raw partition, and write it.

Gaia's gaia_source is the spine (a left join: every Gaia row stays, a survey without a match leaves
NaN). Output columns: `columns.RAW_COLUMNS` + LABELS + LABEL_ERRORS + the flags in `FLAG_COLUMNS` + XP_ERR,
always all of them, in that order, so every partition has the same schema whatever matched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from specfm.io import atomic_path
from specfm.stars import columns as C

log = logging.getLogger(__name__)

FLAG_COLUMNS = ["has_xp_continuous", "in_qso_candidates", "in_galaxy_candidates", "label_survey"]
OUTPUT_COLUMNS = C.RAW_COLUMNS + C.LABELS + C.LABEL_ERRORS + FLAG_COLUMNS + C.XP_ERR
PS1_REJECT_BITS = 0x1 | 0x2 | 0x00800000  # objInfoFlag FEW, POOR (relphot skipped it), EXT (extended)
SDSS_STAR_TYPE = 6
# SDSS photo flags (64-bit): EDGE (2), SATURATED (18), SATUR_CENTER (43), INTERP_CENTER (44, bad
# pixels interpolated near the centre): the thesis's saturation / bad pixels / edge cut.
SDSS_REJECT_BITS = (1 << 2) | (1 << 18) | (1 << 43) | (1 << 44)


def _unique(frame: pd.DataFrame, name: str, what: str) -> pd.DataFrame:
    dup = frame["source_id"].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{what}: {name} has {int(dup.sum())} rows with a duplicated source_id "
                         f"(e.g. {frame['source_id'][dup].iloc[0]}); a best-neighbour table has one row per source")
    return frame


def clean_ps1(frame: pd.DataFrame, reject_bits: int = PS1_REJECT_BITS) -> pd.DataFrame:
    """Pan-STARRS1: drop matches whose objInfoFlag has any of `reject_bits` (the thesis removed
    saturated / artefact sources through this flag; the bits are our reading of that)."""
    if "ps1_obj_info_flag" not in frame:
        return frame
    flags = frame["ps1_obj_info_flag"].fillna(0).astype(np.int64)
    return frame[(flags & reject_bits) == 0].drop(columns="ps1_obj_info_flag")


def clean_sdss(frame: pd.DataFrame, reject_bits: int = SDSS_REJECT_BITS) -> pd.DataFrame:
    """SDSS: keep objects classified as stars (type 6) without the rejected photometry flag bits."""
    out = frame
    if "sdss_type" in out:
        out = out[out["sdss_type"] == SDSS_STAR_TYPE]
    if "sdss_flags" in out:
        out = out[(out["sdss_flags"].fillna(0).astype(np.int64) & reject_bits) == 0]
    return out.drop(columns=[c for c in ("sdss_type", "sdss_flags") if c in out])


def gaia_cuts(gaia: pd.DataFrame, what: str) -> pd.DataFrame:
    """The thesis's pretraining selection: a parallax, has_xp_continuous, not a galaxy/QSO candidate."""
    keep = gaia["parallax"].notna()
    for flag, want in (("has_xp_continuous", True), ("in_qso_candidates", False), ("in_galaxy_candidates", False)):
        if flag in gaia:
            keep &= gaia[flag].fillna(not want).astype(bool) == want
    log.info("%s: Gaia cuts keep %d of %d rows (parallax present, has_xp_continuous, not a galaxy/QSO "
             "candidate)", what, int(keep.sum()), len(gaia))
    return gaia[keep]


def merge_partition(gaia: pd.DataFrame, *, crossmatch: dict[str, pd.DataFrame] | None = None,
                    skymapper: pd.DataFrame | None = None, xp: pd.DataFrame | None = None,
                    labels: pd.DataFrame | None = None, healpix_level: int, what: str,
                    cuts: bool = True) -> pd.DataFrame:
    """Left-join everything onto gaia_source rows; returns exactly OUTPUT_COLUMNS (missing = NaN)."""
    gaia = _unique(gaia, "gaia_source", what)
    if cuts:
        gaia = gaia_cuts(gaia, what)
    out = gaia.copy()
    cleaners = {"ps1": clean_ps1, "sdss": clean_sdss}
    extra = dict(crossmatch or {})
    if skymapper is not None:
        extra["skymapper"] = skymapper
    if xp is not None:
        extra["xp"] = xp
    if labels is not None:
        extra["labels"] = labels
    for name, frame in extra.items():
        n_in = len(frame)
        frame = cleaners.get(name, lambda f: f)(frame)
        frame = _unique(frame, name, what)
        clash = (set(frame.columns) & set(out.columns)) - {"source_id"}
        if clash:
            raise ValueError(f"{what}: {name} would overwrite columns {sorted(clash)}")
        out = out.merge(frame, on="source_id", how="left", validate="one_to_one")
        matched = int(out["source_id"].isin(frame["source_id"]).sum())
        log.info("%s: %s: %d rows in, %d after cleaning, %d matched to Gaia rows", what, name, n_in,
                 len(frame), matched)
    out["healpix"] = C.healpix_from_source_id(out["source_id"].to_numpy(np.int64), healpix_level)
    out = out.reindex(columns=OUTPUT_COLUMNS)  # absent surveys/labels: all-NaN columns, added at once
    out = out.sort_values("source_id", kind="stable").reset_index(drop=True)
    numeric = [c for c in OUTPUT_COLUMNS if c not in ("source_id", "healpix", "label_survey")]
    out[numeric] = out[numeric].astype(float)
    survey = out["label_survey"].astype(object)
    out["label_survey"] = survey.where(survey.notna(), None)
    if len(gaia) != len(out):
        raise AssertionError(f"{what}: joins changed the row count {len(gaia)} -> {len(out)}")
    return out


def schema() -> pa.Schema:
    """The raw-partition schema: int64 ids, float64 values (NaN = missing), the label survey as text."""
    types = {"source_id": pa.int64(), "healpix": pa.int64(), "label_survey": pa.string()}
    return pa.schema([pa.field(c, types.get(c, pa.float64())) for c in OUTPUT_COLUMNS])


def write_partition(frame: pd.DataFrame, path: str | Path, *, row_group_rows: int = 8192) -> int:
    """Write one raw partition atomically (temp name, renamed when complete); returns its row count."""
    table = pa.Table.from_pandas(frame[OUTPUT_COLUMNS], schema=schema(), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows)
    log.info("wrote %s: %d rows", path, table.num_rows)
    return table.num_rows
