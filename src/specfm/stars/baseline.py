"""The classical baseline of the stars stage: gradient-boosted trees (LightGBM), one per label.

Andrae et al. (2023) estimated stellar labels from Gaia XP with gradient-boosted trees (XGBoost);
the masked autoencoder is only worth its cost if it beats such a model on the same features and
split. Each label gets two models: one on every MSA feature, one on the features without XP
(the columns the ensemble's ``*_noxp`` predictions hide). A tree model never saw XP missing, so
"XP hidden" is a model trained without those columns, not the with-XP model fed NaNs. Like the
MSA, ``parallax_label`` is predicted with the input parallax left out, labels without training
values are NaN, and early stopping watches the validation split. Trees take NaN as "missing"
natively (LightGBM learns a default branch), so no value is invented for absent features.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from specfm.io import write_frames_atomic

from . import columns as C
from .features import feature_files

log = logging.getLogger("specfm.stars")

MODES = {"": C.FEATURES, "_noxp": [c for c in C.FEATURES if c not in C.XP]}


def label_features(label: str, suffix: str) -> list[str]:
    """The columns the model of `label` in mode `suffix` sees."""
    cols = MODES[suffix]
    return [c for c in cols if c != "parallax"] if label == "parallax_label" else cols


def _keys(source_id: np.ndarray) -> np.ndarray:
    """A uniform pseudo-random key per star (splitmix64 of the source_id): the training sample
    is the same set whatever the partition order."""
    with np.errstate(over="ignore"):
        z = source_id.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_split(features, split: str, max_rows: int) -> pd.DataFrame:
    """At most `max_rows` rows of one split (the smallest keys), holding at most twice that at once:
    a full-sky training split is never loaded whole."""
    cols = ["source_id", *C.FEATURES, *C.LABELS]
    kept = pd.DataFrame(columns=cols)
    for path in feature_files(features):
        part = pq.read_table(path, columns=cols, filters=[("split", "==", split)]).to_pandas()
        kept = pd.concat([kept, part], ignore_index=True) if len(kept) else part
        if len(kept) > max_rows:
            order = np.argsort(_keys(kept["source_id"].to_numpy()), kind="stable")[:max_rows]
            kept = kept.iloc[np.sort(order)].reset_index(drop=True)
    return kept


def lgb_params(settings: dict, seed: int, threads: int) -> dict:
    """LightGBM parameters: deterministic (same bytes for the same threads), seeded."""
    return {"objective": settings["objective"], "learning_rate": settings["learning_rate"],
            "num_leaves": settings["num_leaves"], "feature_fraction": settings["feature_fraction"],
            "max_bin": settings["max_bin"], "min_data_in_leaf": settings["min_data_in_leaf"],
            "seed": seed, "deterministic": True, "force_row_wise": True, "num_threads": threads,
            "verbose": -1}


def fit_label(train: pd.DataFrame, val: pd.DataFrame, label: str, suffix: str, settings: dict,
              seed: int, threads: int):
    """One booster, or None when the label has no training values."""
    import lightgbm as lgb

    cols = label_features(label, suffix)
    tr, va = train[train[label].notna()], val[val[label].notna()]
    if tr.empty:
        return None
    data = lgb.Dataset(tr[cols].to_numpy(np.float32), tr[label].to_numpy(np.float64),
                       feature_name=cols, free_raw_data=True)
    callbacks, valid = [], []
    if len(va):
        valid = [lgb.Dataset(va[cols].to_numpy(np.float32), va[label].to_numpy(np.float64),
                             reference=data)]
        callbacks = [lgb.early_stopping(settings["early_stopping"], verbose=False)]
    return lgb.train(lgb_params(settings, seed, threads), data, settings["n_estimators"],
                     valid_sets=valid, callbacks=callbacks)


def train_baseline(features, settings: dict, seed: int, threads: int) -> dict:
    """{(label, suffix): booster or None} for every label, with and without XP."""
    train = sample_split(features, "train", settings["max_train_rows"])
    val = sample_split(features, "val", settings["max_val_rows"])
    models, summary = {}, {"train_rows": len(train), "val_rows": len(val)}
    for suffix in MODES:
        for label in C.LABELS:
            t0 = time.time()
            model = fit_label(train, val, label, suffix, settings, seed, threads)
            models[label, suffix] = model
            if model is not None:
                trees = model.best_iteration or model.num_trees()
                summary[f"{label}{suffix}"] = {"trees": trees, "seconds": time.time() - t0}
                log.info("trees %s%s: %d trees in %.1f s", label, suffix, trees, time.time() - t0)
    return models, summary


def predict_frame(models: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """`{label}_p50` and `{label}_p50_noxp` per row (NaN for labels without a model)."""
    out = frame[["source_id", "ra", "dec", "split"]].copy()
    for (label, suffix), model in models.items():
        if model is None:
            out[f"{label}_p50{suffix}"] = np.float32(np.nan)
            continue
        x = frame[label_features(label, suffix)].to_numpy(np.float32)
        out[f"{label}_p50{suffix}"] = model.predict(x, num_threads=1).astype(np.float32)
    return out


def _row_groups(features, columns: list[str]):
    """Every row group of every partition, one at a time (a full-sky sample has 12,288 files)."""
    for path in feature_files(features):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            yield pf.read_row_group(g, columns=columns).to_pandas()


def baseline_catalogue(features, out, *, settings: dict, seed: int, threads: int) -> dict:
    """Train the trees on the training split, then predict every star of every partition."""
    models, summary = train_baseline(features, settings, seed, threads)
    frames = _row_groups(features, ["source_id", "ra", "dec", "split", *C.FEATURES])
    n_rows = write_frames_atomic(out, (predict_frame(models, f) for f in frames))
    log.info("trees predicted %d stars -> %s", n_rows, out)
    return {**summary, "rows": n_rows}
