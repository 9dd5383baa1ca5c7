"""The stars stage's classical baseline (LightGBM per label) and the comparison with the MSA:
learns a simple function, is deterministic, really hides XP, and the FGK / hot-tail scores and
the targets are computed on the right stars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specfm.stars import columns as C
from specfm.stars.baseline import baseline_catalogue, predict_frame, train_baseline
from specfm.stars.compare import comparison, fgk_mask, hot_tail, target, target_rows
from specfm.stars.predict import read_predictions

SETTINGS = dict(objective="regression", n_estimators=150, learning_rate=0.1, num_leaves=15,
                feature_fraction=0.5, max_bin=63, min_data_in_leaf=10, early_stopping=20,
                max_train_rows=10**6, max_val_rows=10**6)


def tiny_table(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Features in the MSA's columns; teff follows XP, logg follows a magnitude only, fe_h a
    mix; ages and parallax labels absent (as in the embedded default)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(size=n) for c in C.FEATURES})
    df[[c for bands in C.SURVEY_BANDS.values() for c in bands if c not in ("tmass_j", "tmass_h")]] = np.nan
    df["source_id"] = np.arange(n, dtype=np.int64) * 7919 + 10**15
    df["ra"], df["dec"] = rng.uniform(0, 360, n), rng.uniform(-60, 60, n)
    df["split"] = np.where(np.arange(n) % 10 == 0, "test", np.where(np.arange(n) % 10 == 1, "val", "train"))
    df["teff"] = 5500 + 800 * df["bp_3"] - 400 * df["rp_7"] ** 2
    df["logg"] = 3.0 + 0.8 * df["tmass_h"]
    df["fe_h"] = 0.3 * df["bp_0"] + 0.2 * df["phot_g_mean_mag"]
    df["alpha_fe"] = 0.1 * np.tanh(df["rp_1"])
    for label in ("age", "parallax_label"):
        df[label] = np.nan
    return df


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "f.parquet"
    df = tiny_table()
    df.to_parquet(path, row_group_size=400)
    return path, df


def test_trees_beat_the_mean_and_leave_unlabelled_labels_empty(table, tmp_path):
    path, df = table
    info = baseline_catalogue(path, tmp_path / "trees.parquet", settings=SETTINGS, seed=1, threads=1)
    pred = read_predictions(tmp_path / "trees.parquet")
    assert info["rows"] == len(df) and len(pred) == len(df) and pred["source_id"].is_unique
    test = pred.merge(df[["source_id", "teff", "logg"]], on="source_id").query("split == 'test'")
    for label in ("teff", "logg"):
        mean_mae = np.abs(test[label] - df.loc[df.split == "train", label].mean()).mean()
        assert np.abs(test[f"{label}_p50"] - test[label]).mean() < 0.4 * mean_mae, label
    # teff lives in XP only: the model without XP can do no better than about the mean
    mae = {sfx: np.abs(test[f"teff_p50{sfx}"] - test["teff"]).mean() for sfx in ("", "_noxp")}
    assert mae["_noxp"] > 2 * mae[""]
    assert pred["age_p50"].isna().all() and pred["parallax_label_p50_noxp"].isna().all()


def test_two_runs_give_identical_predictions(table, tmp_path):
    path, _ = table
    for name in ("a", "b"):
        baseline_catalogue(path, tmp_path / f"{name}.parquet", settings=SETTINGS, seed=5, threads=2)
    a, b = (read_predictions(tmp_path / f"{n}.parquet") for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


def test_the_no_xp_model_does_not_look_at_xp(table):
    path, df = table
    models, _ = train_baseline(path, SETTINGS, seed=2, threads=1)
    frame = df.loc[df.split == "test"].copy()
    before = predict_frame(models, frame)
    frame[C.XP] = np.random.default_rng(9).normal(size=(len(frame), len(C.XP))) * 50
    after = predict_frame(models, frame)
    noxp = [c for c in before if c.endswith("_noxp")]
    pd.testing.assert_frame_equal(before[noxp], after[noxp])
    assert not np.allclose(before["teff_p50"], after["teff_p50"])  # the with-XP model does


def hand_test() -> pd.DataFrame:
    """Four test stars: 3500 K (M), 5000 K and 6999 K (FGK), 9000 K (hot)."""
    t = pd.DataFrame({"source_id": [1, 2, 3, 4], "true_teff": [3500.0, 5000.0, 6999.0, 9000.0]})
    for label in C.LABELS:
        if label != "teff":
            t[f"true_{label}"] = np.nan
        t[f"true_{label}_err"] = 0.0
        for sfx in ("", "_noxp"):
            for k in ("p16", "p50", "p84"):
                t[f"{label}_{k}{sfx}"] = np.nan
            t[f"tree_{label}_p50{sfx}"] = np.nan
    t["teff_p50"] = t["true_teff"] + [100.0, 10.0, -30.0, 860.0]  # |errors| sum to 1000
    t["teff_p16"], t["teff_p84"] = t["teff_p50"] - 50, t["teff_p50"] + 50
    t["tree_teff_p50"] = t["true_teff"] + [0.0, 20.0, 20.0, 0.0]
    return t


def test_fgk_stars_and_the_hot_tails_share_by_hand():
    t = hand_test()
    assert fgk_mask(t).tolist() == [False, True, True, False]
    tail = hot_tail(t)["with_xp"]["teff"]
    assert tail["n_hot"] == 1 and tail["share_of_mae"] == pytest.approx(0.86)
    assert tail["mae_without_hot"] == pytest.approx(140 / 3)
    result = comparison(t)
    assert result["fgk"]["n"] == 2
    assert result["fgk"]["msa"]["with_xp"]["teff"]["mae"] == pytest.approx(20.0)
    assert result["fgk"]["baseline"]["with_xp"]["teff"]["mae"] == pytest.approx(20.0)
    assert result["baseline"]["scores"]["with_xp"]["teff"]["mae"] == pytest.approx(10.0)


def test_targets_say_met_and_ratio():
    assert target("x", 80.0, "trees", 100.0, 85.0) == {
        "metric": "x", "value": 80.0, "reference": "trees", "reference_value": 100.0, "target": 85.0,
        "met": True, "ratio": pytest.approx(80 / 85)}
    z = target("z", 2.61, "N(0, 1)", 1.0, 1.2, lower=0.8)
    assert z["met"] is False and z["ratio"] == pytest.approx(2.61 / 1.2) and z["target_range"] == [0.8, 1.2]
    assert target("z", 0.7, "N(0, 1)", 1.0, 1.2, lower=0.8)["met"] is False
    msa = {"with_xp": {"teff": {"n": 3, "mae": 90.0}},
           "without_xp": {"teff": {"n": 3, "mae": 90.0, "zscore_std": 1.0}}}
    trees = {"with_xp": {"teff": {"n": 3, "mae": 100.0}}, "without_xp": {"teff": {"n": 3, "mae": 100.0}}}
    rows = {r["metric"]: r for r in target_rows(msa, trees, msa)}
    assert rows["teff MAE (with XP) vs trees"]["target"] == pytest.approx(85.0)
    assert rows["teff MAE (with XP) vs trees"]["met"] is False  # 10 % better is not 15 %
    assert rows["teff MAE (XP hidden) vs trees"]["met"] is True
    assert rows["teff z-score std (XP hidden)"]["met"] is True
    assert rows["teff MAE (with XP, FGK)"]["reference_value"] == 92.0
