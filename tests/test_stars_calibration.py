"""stars: the post-hoc uncertainty calibration (fitted on the validation split only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stars_fakes import fake_raw

from specfm.stars import columns as C
from specfm.stars.calibration import apply_factors, fit_factor, fit_factors, zscore_std
from specfm.stars.features import build_features
from specfm.stars.predict import fit_calibration, predict_catalogue, read_predictions
from specfm.stars.training import train_stage

TINY_ARCH = dict(d_embedding=4, n_frequencies=4, frequency_scale=0.1, widths=[16, 16], latent=8,
                 dropout=0.0, head_width=16, head_layers=2)
TINY_TRAIN = dict(epochs=1, patience=1, batch_size=256, lr=2e-3, weight_decay=1e-4, p_xp=0.5,
                  p_other=0.6, buffer_rows=1024, val_rows=500)


def test_fit_factor_recovers_a_known_underestimate_and_leaves_calibrated_widths_alone():
    rng = np.random.default_rng(0)
    n = 20000
    sigma = rng.uniform(0.5, 2.0, n)
    err = np.full(n, 0.3)
    # residuals three times wider than the predicted sigma (in quadrature with the label error)
    resid = rng.normal(0, 1, n) * np.sqrt((3 * sigma) ** 2 + err**2)
    k = fit_factor(resid, sigma, err)
    assert k == pytest.approx(3.0, rel=0.02)
    assert zscore_std(resid, sigma, err, k)[0] == pytest.approx(1.0, abs=0.01)
    calibrated = rng.normal(0, 1, n) * np.sqrt(sigma**2 + err**2)
    assert fit_factor(calibrated, sigma, err) == pytest.approx(1.0, rel=0.02)
    assert fit_factor(resid[:50], sigma[:50], err[:50], min_rows=100) == 1.0  # too few: untouched


def test_a_few_catastrophic_failures_do_not_set_every_stars_width():
    """Two stars at z = 25 among 4,000 (as in the demo's validation split): the plain std fit
    widens every star to absorb them; the winsorised fit stays at the core's factor."""
    rng = np.random.default_rng(1)
    n = 4000
    sigma, err = rng.uniform(0.5, 2.0, n), np.full(n, 0.1)
    resid = rng.normal(0, 1, n) * np.sqrt((2 * sigma) ** 2 + err**2)
    resid[:2] = 25 * np.sqrt((2 * sigma[:2]) ** 2 + err[:2] ** 2)
    assert fit_factor(resid, sigma, err) == pytest.approx(2.0, rel=0.04)
    assert fit_factor(resid, sigma, err, winsor=1e9) > 2.0 * 1.1  # the plain std: pulled wide
    core = fit_factor(resid[2:], sigma[2:], err[2:], winsor=1e9)
    assert fit_factor(resid, sigma, err) == pytest.approx(core, rel=0.03)


def fake_catalogue(n, split, has_xp, scale):
    """A catalogue whose with-XP residuals are `scale` sigma wide (sigma = 1, no label error)."""
    rng = np.random.default_rng(1)
    cat = pd.DataFrame({"split": split, "has_xp": has_xp})
    for label in C.LABELS:
        truth = rng.normal(0, 5, n)
        for sfx, s in (("", scale), ("_noxp", 2 * scale)):
            p50 = truth + rng.normal(0, s, n)
            cat[f"{label}_p16{sfx}"], cat[f"{label}_p50{sfx}"], cat[f"{label}_p84{sfx}"] = p50 - 1, p50, p50 + 1
        cat[f"true_{label}"], cat[f"true_{label}_err"] = truth, 0.0
    return cat


def test_factors_per_mode_refuse_other_splits_and_rows_without_xp_take_the_hidden_factor():
    n = 8000
    cat = fake_catalogue(n, "val", np.ones(n, bool), 2.0)
    f = fit_factors(cat)
    assert f["with_xp"]["teff"] == pytest.approx(2.0, rel=0.03)
    assert f["without_xp"]["teff"] == pytest.approx(4.0, rel=0.03)
    with pytest.raises(ValueError, match="validation split only"):
        fit_factors(fake_catalogue(n, np.where(np.arange(n) % 10 == 0, "test", "val"), np.ones(n, bool), 2.0))
    out = fake_catalogue(4, "test", np.array([True, False, True, False]), 1.0)
    p50 = out["teff_p50"].to_numpy().copy()
    apply_factors(out, {"with_xp": dict.fromkeys(C.LABELS, 2.0), "without_xp": dict.fromkeys(C.LABELS, 5.0)},
                  out["has_xp"].to_numpy())
    np.testing.assert_allclose(out["teff_p50"], p50)  # the median never moves
    np.testing.assert_allclose(out["teff_p84"] - out["teff_p50"], [2, 5, 2, 5], rtol=1e-6)
    np.testing.assert_allclose(out["teff_p50_noxp"] - out["teff_p16_noxp"], [5, 5, 5, 5], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    raw = fake_raw(2000, seed=4)
    build_features([("chunk0", raw)], d / "f.parquet", d / "scaling.json", seed=3, reservoir=10**6)
    pre, member = d / "pre.pt", d / "m0.pt"
    train_stage("pretrain", d / "f.parquet", d / "scaling.json", pre, arch=TINY_ARCH,
                train=TINY_TRAIN, seed=1, progress=False)
    train_stage("finetune", d / "f.parquet", d / "scaling.json", member, arch=TINY_ARCH,
                train=TINY_TRAIN, seed=2, init=pre, progress=False)
    return d, [member]


def with_labels_changed(src, dst, split, factor):
    """A copy of the feature table with one split's Teff labels moved away from the truth."""
    table = pq.read_table(src).to_pandas()
    rows = table["split"] == split
    table.loc[rows, "teff"] = table.loc[rows, "teff"] * factor
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), dst)
    return dst


def test_calibration_is_fitted_on_the_validation_split_only(tiny_ensemble, tmp_path):
    d, members = tiny_ensemble
    base = fit_calibration(d / "f.parquet", members, min_rows=20)
    assert base["enabled"] and base["n_val"] > 100
    # test labels far off: the factors do not move (the test split is never looked at)
    test_moved = fit_calibration(with_labels_changed(d / "f.parquet", tmp_path / "t.parquet", "test", 1.5),
                                 members, min_rows=20)
    assert test_moved["factors"] == base["factors"]
    # validation labels far off: the Teff factors grow
    val_moved = fit_calibration(with_labels_changed(d / "f.parquet", tmp_path / "v.parquet", "val", 1.5),
                                members, min_rows=20)
    for mode in ("with_xp", "without_xp"):
        assert val_moved["factors"][mode]["teff"] > 1.5 * base["factors"][mode]["teff"]
    assert fit_calibration(d / "f.parquet", members, enabled=False)["factors"]["with_xp"]["teff"] == 1.0


def test_calibrated_catalogue_keeps_medians_and_scales_widths_by_the_factors(tiny_ensemble, tmp_path):
    d, members = tiny_ensemble
    calib = fit_calibration(d / "f.parquet", members, min_rows=20)
    predict_catalogue(d / "f.parquet", members, tmp_path / "raw.parquet")
    predict_catalogue(d / "f.parquet", members, tmp_path / "cal.parquet", calibration=calib)
    raw, cal = read_predictions(tmp_path / "raw.parquet"), read_predictions(tmp_path / "cal.parquet")
    no_xp = (raw["flags"].to_numpy() & 1).astype(bool)  # stars without XP: the XP-hidden factor
    assert no_xp.any() and not no_xp.all()
    hidden = calib["factors"]["without_xp"]["teff"]
    for mode, sfx in (("with_xp", ""), ("without_xp", "_noxp")):
        k = np.where(no_xp, hidden, calib["factors"][mode]["teff"])
        assert calib["factors"][mode]["teff"] != 1.0
        np.testing.assert_array_equal(cal[f"teff_p50{sfx}"], raw[f"teff_p50{sfx}"])
        np.testing.assert_allclose(cal[f"teff_p84{sfx}"] - cal[f"teff_p50{sfx}"],
                                   k * (raw[f"teff_p84{sfx}"] - raw[f"teff_p50{sfx}"]), rtol=1e-4, atol=1e-2)
