"""Deep-ensemble catalogue: every fine-tuned member on every star, combined into one quantile set.

Combination: the median is the mean of the members' medians; each side's spread is the RMS of
the members' (p50 - p16) or (p84 - p50) added in quadrature to the ensemble's standard deviation
of medians (the model-disagreement term a single member cannot know about). Predictions are made
twice: with all inputs, and with the XP coefficients hidden (``*_noxp``, the thesis's "without XP"
column). The 16/84 offsets are then scaled by the factors `specfm.stars.calibration` fits on the
validation split (`fit_calibration`; one per label, XP visible / hidden; the median unchanged). ``parallax_label`` is always predicted with the input parallax hidden, so it is a
spectrophotometric parallax, not a copy of Gaia's. Labels with no training values in the sample
(e.g. ages in the embedded default) are written as NaN, never as an untrained head's output.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from specfm.io import write_frames_atomic

from . import columns as C
from .calibration import WINSOR, apply_factors, fit_factors, identity_factors
from .features import feature_files, read_split
from .training import load_msa

log = logging.getLogger("specfm.stars")

FLAG_NO_XP = 1  # the star has no XP coefficients: the prediction rests on photometry alone
FLAG_NO_PARALLAX = 2
FLAG_DISAGREE = 4  # ensemble spread of a label exceeds the members' own 1-sigma


@torch.no_grad()
def member_quantiles(model, x: np.ndarray, hide: list[int], batch: int = 8192) -> np.ndarray:
    """(N, L, 3) quantiles in physical units with the features `hide` treated as missing."""
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch])
        z, observed = model.scale_features(xb)
        visible = observed.clone()
        visible[:, hide] = False
        _, q = model(z, visible)
        out.append(model.unscale_labels(q.transpose(1, 2)).transpose(1, 2).numpy())
    return np.concatenate(out) if out else np.empty((0, len(C.LABELS), 3), np.float32)


def combine(qs: np.ndarray) -> dict[str, np.ndarray]:
    """Members' quantiles (M, N, L, 3) -> p16, p50, p84, ens_std (each N, L)."""
    med = qs[..., 1]
    p50 = med.mean(0)
    ens = med.std(0) if len(qs) > 1 else np.zeros_like(p50)
    lo = np.sqrt(((med - qs[..., 0]) ** 2).mean(0) + ens**2)
    hi = np.sqrt(((qs[..., 2] - med) ** 2).mean(0) + ens**2)
    return {"p16": p50 - lo, "p50": p50, "p84": p50 + hi, "ens_std": ens}


def trained_labels(meta: dict) -> np.ndarray:
    """Which labels had training values (the scaling statistics count them)."""
    return np.array([meta["scaling"][c]["n"] > 0 for c in C.LABELS])


def _member_catalogue(members, frame: pd.DataFrame, trained: np.ndarray, batch: int,
                      factors: dict | None = None) -> pd.DataFrame:
    """One row group's catalogue: every member with all inputs and with XP hidden, combined,
    the uncertainties scaled by the calibration `factors` (none: as the members give them)."""
    idx = {c: i for i, c in enumerate(C.FEATURES)}
    hide_xp, hide_plx = [idx[c] for c in C.XP], [idx["parallax"]]
    plx = C.LABELS.index("parallax_label")
    x = frame[C.FEATURES].to_numpy(np.float32, copy=True)
    cat = frame[["source_id", "ra", "dec", "split"]].copy()
    flags = np.where(frame["has_xp"], 0, FLAG_NO_XP) \
        | np.where(np.isfinite(frame["parallax"]), 0, FLAG_NO_PARALLAX)
    for suffix, hide in (("", []), ("_noxp", hide_xp)):
        qs = np.stack([member_quantiles(m, x, hide, batch) for m, _ in members])
        q_plx = np.stack([member_quantiles(m, x, hide + hide_plx, batch)[:, plx] for m, _ in members])
        qs[:, :, plx] = q_plx
        comb = combine(qs)
        for k in comb:
            comb[k][:, ~trained] = np.nan
        for j, label in enumerate(C.LABELS):
            for k, v in comb.items():
                cat[f"{label}_{k}{suffix}"] = v[:, j].astype(np.float32)
        if suffix == "":
            sigma = (comb["p84"] - comb["p16"]) / 2
            disagree = np.nan_to_num(comb["ens_std"] > sigma, nan=False).any(axis=1)
            flags = flags | np.where(disagree, FLAG_DISAGREE, 0)
    cat["flags"] = flags.astype(np.int16)
    if factors is not None:
        apply_factors(cat, factors, frame["has_xp"].to_numpy(bool))
    return cat


def _load_members(member_paths):
    members = [load_msa(p) for p in member_paths]
    if not members:
        raise ValueError("no ensemble members given")
    return members, trained_labels(members[0][1])


def fit_calibration(features, member_paths, *, enabled: bool = True, min_rows: int = 100,
                    winsor: float = WINSOR, batch: int = 8192) -> dict:
    """The calibration factors of an ensemble, fitted on the validation split of the sample it
    was trained on (`specfm.stars.calibration`); all 1 when not `enabled`."""
    if not enabled:
        return {"enabled": False, "factors": identity_factors(), "n_val": 0}
    members, trained = _load_members(member_paths)
    val = read_split(features, "val", ["source_id", "ra", "dec", "split", *C.FEATURES, "has_xp",
                                       *C.LABELS, *C.LABEL_ERRORS])
    if len(val) == 0:
        raise ValueError(f"{feature_files(features)}: no validation rows to calibrate on")
    cat = _member_catalogue(members, val, trained, batch)
    for c in C.LABELS + C.LABEL_ERRORS:
        cat[f"true_{c}"] = val[c].to_numpy()
    cat["has_xp"] = val["has_xp"].to_numpy(bool)
    factors = fit_factors(cat, min_rows=min_rows, winsor=winsor)
    log.info("calibration on %d validation stars: %s", len(val), factors)
    return {"enabled": True, "factors": factors, "n_val": len(val), "min_rows": min_rows,
            "winsor": winsor,
            "method": "k per label and mode: z-score std 1 on the validation split, z capped at "
                      "+-winsor"}


def predict_catalogue(features, member_paths, out, *, batch: int = 8192,
                      calibration: dict | None = None) -> dict:
    """Stream the feature partitions row group by row group through every member; write `out`.
    ``calibration``: `fit_calibration`'s result (None: uncalibrated)."""
    members, trained = _load_members(member_paths)
    factors = calibration["factors"] if calibration else None
    # one open file at a time: a full-sky sample has 12,288 partitions
    columns = ["source_id", "ra", "dec", "split", *C.FEATURES, "has_xp"]
    frames = (pf.read_row_group(g, columns=columns).to_pandas() for path in feature_files(features)
              for pf in (pq.ParquetFile(path),) for g in range(pf.num_row_groups))
    n_rows = write_frames_atomic(out, (_member_catalogue(members, f, trained, batch, factors)
                                       for f in frames))
    log.info("predicted %d stars with %d members -> %s (labels without training values: %s)",
             n_rows, len(members), out, [c for c, t in zip(C.LABELS, trained) if not t])
    return {"rows": n_rows, "members": len(members),
            "untrained_labels": [c for c, t in zip(C.LABELS, trained) if not t]}


def read_predictions(path, split: str | None = None) -> pd.DataFrame:
    filters = [("split", "==", split)] if split else None
    return pq.read_table(path, filters=filters).to_pandas()
