"""Raw catalogue rows -> the model's feature table (Parquet) and its scaling statistics.

Streaming by construction: raw rows arrive as DataFrame chunks (one HEALPix partition, or one
slice of the embedded library) and leave as Parquet row groups, so peak memory depends on the
chunk size, never on the number of stars (benchmarked in `specfm.stars.bench`).

Feature columns (all float32, NaN = not measured; documented in config/README.md):
* ``bp_*``, ``rp_*``: XP coefficients in their canonical form (`specfm.stars.xp.canonical_coefficients`:
  the part the 343-point sampled flux determines, so Gaia's own coefficients and those recovered
  from a sampled spectrum are one feature), divided by the G-band flux in e-/s,
  10**(-0.4 (G - 25.6874)) (DR3 G zero point, Riello et al. 2021). The coefficients scale with the
  star's brightness; the brightness is already in the G magnitude, so dividing by it leaves the
  spectral *shape*, whose dynamic range is ~10 instead of ~10^5 and which a distance change leaves
  untouched.
* magnitudes per survey as published (Vega or AB, each survey's own system); parallax (mas),
  proper motions (mas/yr), E(B-V) (mag).
* ``bp_*_err``, ``rp_*_err``: 1-sigma errors of the XP features (the raw ``*_err`` columns divided by
  the same G-band flux; NaN where the raw partition has none). Only training's ``xp_noise``
  augmentation reads them; they are not features.
* ``has_<group>``: booleans saying which groups are present (the validity mask).
Labels (teff, logg, ...) and their errors pass through in physical units.
Scaling: median and IQR per feature and label over the *training* split, estimated from a
seeded reservoir of at most `reservoir` values per column, written once as JSON; the model applies
it (so the table stays in physical units and other scalings can be tried without rebuilding).
The colours of ``columns.COLOURS`` get statistics too (`colour_frame`), but no table column: the
model derives them from the magnitudes it is given, so a hidden magnitude hides its colours.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from specfm.io import atomic_path, write_json_atomic

from . import columns as C
from .xp import canonical_coefficients

log = logging.getLogger("specfm.stars")

G_ZERO_POINT = 25.6874  # Gaia DR3 G zero point (Vega, e-/s), Riello et al. 2021
SPLITS = ("train", "val", "test")
GROUPS = {"xp": C.XP, "gaia": C.GAIA_PHOTOMETRY, **C.SURVEY_BANDS,
          "astrometry": ["parallax", "pmra", "pmdec"], "ebv": C.EXTINCTION}
TABLE_COLUMNS = (["source_id", "healpix", "ra", "dec", "split"] + C.FEATURES
                 + [f"has_{g}" for g in GROUPS] + C.LABELS + C.LABEL_ERRORS + C.XP_ERR)
SCALED_COLUMNS = C.FEATURES + C.LABELS + C.COLOURS  # the columns with median/IQR statistics


class FeatureError(ValueError):
    """A raw partition that cannot become features (names the file and the problem)."""


def split_of(source_id, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """"train" / "val" / "test" for each source_id from a hash of it, so the split is the same on
    every run, machine and subset (blake2b of the int64 little-endian bytes; Python's hash() is
    salted per process). A star's split never depends on which other stars are present.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, not {tuple(fractions)}")
    ids = np.ascontiguousarray(np.asarray(source_id).astype("<i8", casting="same_kind"))
    raw = ids.tobytes()
    digests = b"".join(hashlib.blake2b(raw[i:i + 8], digest_size=8).digest() for i in range(0, len(raw), 8))
    u = np.frombuffer(digests, dtype="<u8") / 2.0**64  # uniform in [0, 1)
    edges = np.cumsum(fractions)[:2]
    names = np.array(["train", "val", "test"])
    return names[np.searchsorted(edges, u, side="right")]


def _numeric(df: pd.DataFrame, cols: list[str], origin: str) -> pd.DataFrame:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FeatureError(f"{origin}: raw table lacks columns {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}")
    block = df[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
    return block.mask(block.isin(C.SENTINELS))


def colour_frame(feats: pd.DataFrame) -> pd.DataFrame:
    """Every colour of ``columns.COLOURS`` (blue minus red magnitude), NaN where either is missing:
    what the model's input stage computes (`MaskedStellarAutoencoder.colours`), here for its scaling."""
    return pd.DataFrame({name: feats[a].to_numpy(np.float64) - feats[b].to_numpy(np.float64)
                         for name, (a, b) in zip(C.COLOURS, C.COLOUR_PAIRS)}, index=feats.index)


def _xp_errors(df: pd.DataFrame, origin: str, n: int) -> np.ndarray:
    """(n, 110) raw XP errors, all NaN when the partition carries none (a fetcher that keeps no
    Gaia errors); a partition with only some of the columns is broken, not error-free."""
    present = [c for c in C.XP_ERR if c in df.columns]
    if not present:
        return np.full((n, len(C.XP_ERR)), np.nan)
    if len(present) != len(C.XP_ERR):
        raise FeatureError(f"{origin}: raw table has {len(present)} of the {len(C.XP_ERR)} XP error columns")
    return _numeric(df, C.XP_ERR, origin).to_numpy()


def canonical_xp(block: np.ndarray) -> np.ndarray:
    """(n, 110) XP coefficients of any sample kind -> their canonical form, for rows with all 110.

    The one place where library (recovered) and archive (Gaia's own) coefficients become the same
    feature: every kind's raw chunk passes here. A row with only some coefficients (no archive
    writes one) cannot be projected and keeps its values; it is not ``has_xp`` anyway.
    """
    full = np.isfinite(block).all(axis=1)
    if full.all():
        return canonical_coefficients(block)
    block = np.array(block, dtype=np.float64)
    if full.any():
        block[full] = canonical_coefficients(block[full])
    return block


def features_from_raw(df: pd.DataFrame, origin: str = "raw") -> tuple[pd.DataFrame, dict]:
    """One raw chunk -> feature rows, plus counts {rows_in, rows_out, dropped_*}.

    Rows without a valid source_id are dropped (they cannot be split or joined); every other row
    stays, whatever it lacks. Duplicated source_ids inside the chunk keep their first row.
    """
    counts = {"rows_in": len(df)}
    sid = pd.to_numeric(df.get("source_id"), errors="coerce")
    if sid is None:
        raise FeatureError(f"{origin}: raw table has no source_id column")
    ok = sid.notna() & (sid > 0)
    counts["dropped_no_source_id"] = int((~ok).sum())
    df = df.loc[ok]
    dup = df["source_id"].duplicated(keep="first")
    counts["dropped_duplicate_source_id"] = int(dup.sum())
    df = df.loc[~dup].reset_index(drop=True)

    values = _numeric(df, C.FEATURES + C.LABELS + C.LABEL_ERRORS + ["ra", "dec"], origin)
    g_flux = 10.0 ** (-0.4 * (values["phot_g_mean_mag"].to_numpy() - G_ZERO_POINT))
    values[C.XP] = canonical_xp(values[C.XP].to_numpy()) / g_flux[:, None]
    errors = pd.DataFrame(np.abs(_xp_errors(df, origin, len(df))) / g_flux[:, None], columns=C.XP_ERR)
    out = pd.DataFrame({"source_id": df["source_id"].astype("int64").to_numpy()})
    out["healpix"] = pd.to_numeric(df["healpix"]).astype("int64").to_numpy()
    out["ra"], out["dec"] = values["ra"].to_numpy(), values["dec"].to_numpy()
    out["split"] = split_of(out["source_id"].to_numpy())
    feats = values[C.FEATURES].astype("float32")
    has = {f"has_{g}": feats[cols].notna().all(axis=1).to_numpy() for g, cols in GROUPS.items()}
    out = pd.concat([out, feats, pd.DataFrame(has),
                     values[C.LABELS + C.LABEL_ERRORS].astype("float32"), errors.astype("float32")],
                    axis=1)
    counts["rows_out"] = len(out)
    return out[TABLE_COLUMNS], counts


class SeenIds:
    """The set of source_ids written so far, as sorted int64 runs merged like a binary counter.

    8 bytes per id (a Python set needs ~70) and O(log n) sorted runs, so a lookup is a few
    binary searches and the total merge cost is O(n log n), not the O(n^2 / chunk) of one
    array re-sorted per chunk.
    """

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(ids.size, dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, ids).clip(max=run.size - 1)
            found |= run[pos] == ids
        return found

    def add(self, ids: np.ndarray) -> None:
        if ids.size:
            self.runs.append(np.sort(ids))
        while len(self.runs) > 1 and self.runs[-1].size >= self.runs[-2].size:
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="mergesort")

    def __len__(self) -> int:
        return sum(r.size for r in self.runs)


class Reservoir:
    """Median and IQR per column from a seeded uniform sample of at most `size` values each.

    Exact quantiles of 220 million values per column would need them all in memory; a 10^5-value
    reservoir gives the median/IQR to ~0.5 % of the IQR, far below what scaling needs.
    """

    def __init__(self, columns: list[str], size: int, seed: int):
        self.columns, self.size = columns, int(size)
        self.rng = np.random.default_rng(seed)
        self.values = {c: np.empty(0, dtype=np.float64) for c in columns}
        self.seen = dict.fromkeys(columns, 0)

    def add(self, frame: pd.DataFrame) -> None:
        for c in self.columns:
            v = frame[c].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            buf, seen = self.values[c], self.seen[c]
            room = max(self.size - buf.size, 0)
            head, v = v[:room], v[room:]
            buf, seen = np.concatenate([buf, head]), seen + head.size
            if v.size:  # reservoir sampling (Algorithm R), vectorised over the chunk
                position = seen + np.arange(v.size)  # 0-based index in the stream
                j = (self.rng.random(v.size) * (position + 1)).astype(np.int64)
                keep = j < self.size
                buf[j[keep]] = v[keep]
                seen += v.size
            self.values[c], self.seen[c] = buf, seen

    def statistics(self) -> dict:
        stats = {}
        for c in self.columns:
            v = self.values[c]
            if v.size == 0:
                stats[c] = {"median": 0.0, "iqr": 1.0, "n": 0}
                continue
            q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
            iqr = float(q75 - q25)
            if not iqr > 0:
                log.warning("scaling: %s has zero IQR over %d values; using 1", c, v.size)
                iqr = 1.0
            stats[c] = {"median": float(q50), "iqr": iqr, "n": int(self.seen[c])}
        return stats


def build_partition(chunks: Iterable[tuple[str, pd.DataFrame]], table_out, reservoir_out, *,
                    seed: int = 0, reservoir: int = 100_000) -> dict:
    """Stream (origin, raw chunk) pairs of one partition into `table_out` (Parquet, one row group
    per chunk) and its training-split reservoir into `reservoir_out` (.npz). Returns row counts.

    Duplicates across chunks are caught too (a source_id seen before is dropped and counted);
    the seen ids (SeenIds: sorted int64 runs) are the only state that grows with the input (8 bytes per star).
    At full scale a partition is one HEALPix pixel (~20k stars at level 5), and a source_id
    belongs to exactly one pixel, so no duplicate can hide in another partition.
    """
    res = Reservoir(SCALED_COLUMNS, reservoir, seed)
    totals = {"rows_in": 0, "rows_out": 0, "dropped_no_source_id": 0,
              "dropped_duplicate_source_id": 0, "per_split": dict.fromkeys(SPLITS, 0)}
    seen = SeenIds()
    schema = None
    with atomic_path(table_out) as tmp:
        writer = None
        try:
            for origin, raw in chunks:
                feats, counts = features_from_raw(raw, origin)
                ids = feats["source_id"].to_numpy(np.int64)
                repeat = seen.contains(ids)
                if repeat.any():
                    counts["dropped_duplicate_source_id"] += int(repeat.sum())
                    feats = feats.loc[~repeat]
                seen.add(ids[~repeat])
                counts["rows_out"] = len(feats)
                log.info("%s: %d rows in, %d out (%d without source_id, %d duplicated)", origin,
                         counts["rows_in"], counts["rows_out"], counts["dropped_no_source_id"],
                         counts["dropped_duplicate_source_id"])
                for k in ("rows_in", "rows_out", "dropped_no_source_id", "dropped_duplicate_source_id"):
                    totals[k] += counts[k]
                for s in SPLITS:
                    totals["per_split"][s] += int((feats["split"] == s).sum())
                train = feats.loc[feats["split"] == "train"]
                res.add(pd.concat([train, colour_frame(train)], axis=1))
                table = pa.Table.from_pandas(feats, preserve_index=False)
                if writer is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                writer.write_table(table.cast(schema))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise FeatureError(f"{table_out}: no input rows at all")
    if totals["rows_in"] != totals["rows_out"] + totals["dropped_no_source_id"] \
            + totals["dropped_duplicate_source_id"]:
        raise AssertionError(f"row accounting does not add up: {totals}")
    with atomic_path(reservoir_out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, counts=json.dumps(totals), columns=np.array(res.columns),
                     seen=np.array([res.seen[c] for c in res.columns]),
                     **{f"v_{i}": res.values[c] for i, c in enumerate(res.columns)})
    log.info("features: %d rows in, %d out -> %s", totals["rows_in"], totals["rows_out"], table_out)
    return totals


def merge_scaling(reservoir_paths, scaling_out, *, reservoir: int = 100_000, seed: int = 0) -> dict:
    """Partition reservoirs -> one median/IQR per column, as if sampled from the whole sample.

    Each partition contributes values in proportion to how many it saw (a reservoir of a
    partition with n values stands for n values), so the merged sample stays uniform.
    """
    rng = np.random.default_rng(seed)
    totals = {"rows_in": 0, "rows_out": 0, "dropped_no_source_id": 0,
              "dropped_duplicate_source_id": 0, "per_split": dict.fromkeys(SPLITS, 0)}
    parts = []
    for path in reservoir_paths:
        with np.load(path, allow_pickle=False) as z:
            counts = json.loads(str(z["counts"]))
            cols = [str(c) for c in z["columns"]]
            lacking = [c for c in SCALED_COLUMNS if c not in cols]
            if lacking:
                raise FeatureError(f"{path}: reservoir lacks {lacking[:3]} (written by an older "
                                   "specfm); rebuild it (snakemake --forcerun stars_features)")
            parts.append((dict(zip(cols, z["seen"].tolist())),
                          {c: z[f"v_{i}"] for i, c in enumerate(cols)}))
        for k, v in counts.items():
            if k == "per_split":
                for s in SPLITS:
                    totals["per_split"][s] += v[s]
            else:
                totals[k] += v
    if totals["per_split"]["train"] == 0:
        raise FeatureError(f"{scaling_out}: no rows fell in the training split")
    merged = Reservoir(SCALED_COLUMNS, reservoir, seed)
    for c in merged.columns:
        seen = np.array([p[0][c] for p in parts], dtype=np.float64)
        n_total = seen.sum()
        take = []
        for (_, values), n in zip(parts, seen):
            k = min(values[c].size, int(round(reservoir * n / n_total))) if n_total else 0
            take.append(rng.choice(values[c], size=k, replace=False) if k else values[c][:0])
        merged.values[c] = np.concatenate(take)
        merged.seen[c] = int(n_total)
    result = {"method": "median/IQR over the training split", "reservoir": reservoir,
              "partitions": len(parts), "columns": merged.statistics(), "counts": totals}
    write_json_atomic(scaling_out, result)
    return totals


def build_features(chunks: Iterable[tuple[str, pd.DataFrame]], table_out, scaling_out, *,
                   seed: int = 0, reservoir: int = 100_000) -> dict:
    """One-partition convenience: build_partition + merge_scaling (the reservoir next to the table)."""
    res_path = Path(str(table_out) + ".reservoir.npz")
    counts = build_partition(chunks, table_out, res_path, seed=seed, reservoir=reservoir)
    merge_scaling([res_path], scaling_out, reservoir=reservoir, seed=seed)
    return counts


def load_scaling(path) -> dict:
    """The statistics written by build_features: {column: {median, iqr, n}}."""
    data = json.loads(Path(path).read_text())
    return data["columns"]


def feature_files(features) -> list[Path]:
    """A feature table given as one path or a list of partition paths -> list of paths."""
    if isinstance(features, (str, Path)):
        return [Path(features)]
    return [Path(p) for p in features]


def read_split(features, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of one split over all partitions (validation/test sets are small enough to hold)."""
    frames = [pq.read_table(p, columns=columns, filters=[("split", "==", split)]).to_pandas()
              for p in feature_files(features)]
    return pd.concat(frames, ignore_index=True)
