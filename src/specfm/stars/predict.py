"""Deep-ensemble catalogue: every fine-tuned member on every star, combined into one quantile set.

Combination: the median is the mean of the members' medians; each side's spread is the RMS of
the members' (p50 - p16) or (p84 - p50) added in quadrature to the ensemble's standard deviation
of medians (the model-disagreement term a single member cannot know about). Predictions are made
twice: with all inputs, and with the XP coefficients hidden (``*_noxp``, the thesis's "without XP"
column). ``parallax_label`` is always predicted with the input parallax hidden, so it is a
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
from .features import feature_files
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


def _member_catalogue(members, frame: pd.DataFrame, trained: np.ndarray, batch: int) -> pd.DataFrame:
    """One row group's catalogue: every member with all inputs and with XP hidden, combined."""
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
    return cat


def predict_catalogue(features, member_paths, out, *, batch: int = 8192) -> dict:
    """Stream the feature partitions row group by row group through every member; write `out`."""
    members = [load_msa(p) for p in member_paths]
    if not members:
        raise ValueError("no ensemble members given")
    trained = trained_labels(members[0][1])
    # one open file at a time: a full-sky sample has 12,288 partitions
    columns = ["source_id", "ra", "dec", "split", *C.FEATURES, "has_xp"]
    frames = (pf.read_row_group(g, columns=columns).to_pandas() for path in feature_files(features)
              for pf in (pq.ParquetFile(path),) for g in range(pf.num_row_groups))
    n_rows = write_frames_atomic(out, (_member_catalogue(members, f, trained, batch) for f in frames))
    log.info("predicted %d stars with %d members -> %s (labels without training values: %s)",
             n_rows, len(members), out, [c for c, t in zip(C.LABELS, trained) if not t])
    return {"rows": n_rows, "members": len(members),
            "untrained_labels": [c for c, t in zip(C.LABELS, trained) if not t]}


def read_predictions(path, split: str | None = None) -> pd.DataFrame:
    filters = [("split", "==", split)] if split else None
    return pq.read_table(path, filters=filters).to_pandas()
