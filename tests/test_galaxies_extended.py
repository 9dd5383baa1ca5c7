"""Extended populations in the GalProTE training set (issue 14): light spread over many ages and
metallicities, beside the paper's 1-5 template mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.galaxies.trainset import (BEYOND_ROWS, EXTENDED_PARAMS, ROWS, SFH_PARAMS, TABLE1_ROWS, _age_bin_mass,
                                      build_training_set, draw_base, draw_extended, draw_sfh, extended_weights,
                                      load_split, sfh_weights, table1_counts)
from specfm.galaxies.training import light_weighted

from test_galaxies_model import N_AGE, N_Z, TINY, tiny_grid

LOG_AGE = np.linspace(7.8, 10.2, 25)
MH = np.array([-1.71, -1.31, -0.71, -0.4, 0.0, 0.22])  # the E-MILES demo grid: uneven steps


def params(**kw) -> np.ndarray:
    base = dict(age_mu=9.0, age_sigma=0.3, second_frac=0.0, second_mu=8.0, second_sigma=0.1, mh_mu=-0.4,
                mh_sigma=0.2, amr_slope=0.0)
    base.update(kw)
    return np.array([[base[k] for k in EXTENDED_PARAMS]])


def test_extended_weights_are_light_fractions_centred_on_their_parameters():
    w = extended_weights(params(), LOG_AGE, MH)
    assert w.shape == (1, MH.size, LOG_AGE.size) and w.min() >= 0
    assert w.sum() == pytest.approx(1.0)
    age, mh = light_weighted(w, LOG_AGE, MH)
    assert age[0] == pytest.approx(9.0, abs=0.01)  # symmetric in a grid much wider than 0.3 dex
    assert (w[0] > 0.01).sum() > 10  # spread over many cells, unlike a 1-5 template mixture
    assert np.argmax(w[0].sum(axis=1)) == 3  # [M/H] mass at -0.4


def test_extended_weights_second_population_and_amr_move_the_means():
    one = light_weighted(extended_weights(params(), LOG_AGE, MH), LOG_AGE, MH)
    two = light_weighted(extended_weights(params(second_frac=0.4, second_mu=8.0), LOG_AGE, MH), LOG_AGE, MH)
    assert two[0][0] == pytest.approx(0.6 * 9.0 + 0.4 * 8.0, abs=0.02)
    tilted = extended_weights(params(amr_slope=0.3, age_sigma=0.6), LOG_AGE, MH)[0]
    mh_by_age = (tilted * MH[:, None]).sum(axis=0) / tilted.sum(axis=0)
    assert mh_by_age[-1] > mh_by_age[0] + 0.3  # old populations more metal-rich with a positive slope
    assert one[1][0] == pytest.approx(-0.4, abs=0.1)


def test_extended_weights_narrow_spread_falls_on_the_nearest_grid_point():
    w = extended_weights(params(age_sigma=1e-3, mh_sigma=1e-3, age_mu=9.01, mh_mu=-0.5), LOG_AGE, MH)[0]
    assert np.isfinite(w).all() and w.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(w), w.shape) == (3, 12)  # -0.4 and log age 9.0


def test_draw_extended_covers_the_grid():
    p = draw_extended(4000, LOG_AGE, MH, np.random.default_rng(0))
    col = dict(zip(EXTENDED_PARAMS, p.T))
    assert LOG_AGE[0] <= col["age_mu"].min() and col["age_mu"].max() <= LOG_AGE[-1]
    assert MH[0] <= col["mh_mu"].min() and col["mh_mu"].max() <= MH[-1]
    assert 0.4 < np.mean(col["second_frac"] > 0) < 0.6
    w = extended_weights(p, LOG_AGE, MH)
    np.testing.assert_allclose(w.sum(axis=(1, 2)), 1.0)


def test_extended_rows_leave_the_paper_rows_unchanged():
    rows = table1_counts(N_Z * N_AGE, 0.5, extended=2, sfh=1)["rows"]
    grid = tiny_grid()
    kw = dict(held=False, fraction=0.25, salt="s")
    paper = draw_base(N_Z * N_AGE, {**rows, "extended": 0, "sfh": 0}, 16, np.random.default_rng(1), **kw)
    both = draw_base(N_Z * N_AGE, rows, 16, np.random.default_rng(1), **kw,
                     beyond_rngs={"extended": np.random.default_rng(2), "sfh": np.random.default_rng(3)},
                     axes=(grid.log_age, grid.mh))
    ext = np.isin(both.row, [ROWS.index(r) for r in BEYOND_ROWS])
    assert (both.row == ROWS.index("sfh")).sum() == 16 * rows["sfh"] > 0
    assert ext.sum() == 16 * (rows["extended"] + rows["sfh"]) and np.isfinite(both.params[ext]).all()
    first = draw_sfh(rows["sfh"], grid.log_age, grid.mh, np.random.default_rng(3))  # level 0's draw
    np.testing.assert_array_equal(both.params[both.row == ROWS.index("sfh")][: rows["sfh"]], first)
    assert np.isnan(both.params[~ext]).all() and (both.components[ext] < 0).all()
    np.testing.assert_array_equal(both.components[~ext], paper.components)
    np.testing.assert_array_equal(both.raw[~ext], paper.raw)
    np.testing.assert_array_equal(both.av_index[~ext], paper.av_index)
    assert set(ROWS) - set(TABLE1_ROWS) == {"extended", "sfh"}


def test_training_set_with_extended_rows(tmp_path):
    grid = tiny_grid()
    path = tmp_path / "ext.h5"
    summary = build_training_set(grid, path, seed=3, progress=False, extended=2.0, **TINY)
    n_ext = summary["table1"]["rows"]["extended"]
    assert n_ext > 0
    train = load_split(path, "train", ("weights", "row", "av_index"))
    ext = train["row"] == ROWS.index("extended")
    assert ext.sum() == 16 * n_ext
    np.testing.assert_allclose(train["weights"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert np.bincount(train["av_index"][ext], minlength=16).tolist() == [n_ext] * 16
    unseen = load_split(path, "test_unseen", ("row",))
    assert not (unseen["row"] == ROWS.index("extended")).any()  # test_unseen: unseen combinations only


def test_synthetic_metrics_score_the_paper_rows_and_the_extended_rows_apart(tmp_path):
    from specfm.galaxies.model import GalProTE, GalProTEConfig
    from specfm.galaxies.training import synthetic_metrics

    from test_galaxies_model import TINY_ARCH

    grid = tiny_grid()
    path = tmp_path / "ext.h5"
    build_training_set(grid, path, seed=4, progress=False, extended=2.0, **TINY)
    torch_model = GalProTE(GalProTEConfig(n_z=N_Z, n_age=N_AGE, **TINY_ARCH), log_age=grid.log_age, mh=grid.mh,
                           av_levels=np.arange(16) / 10).eval()
    m = synthetic_metrics(torch_model, path)
    test = load_split(path, "test", ("row",))
    n_ext = int((test["row"] == ROWS.index("extended")).sum())
    assert 0 < n_ext < m["test"]["n"]
    parts = m["test"]["by_population"]
    assert set(parts) == {"table1", "beyond_paper"}
    # the pooled bias is the count-weighted mean of the two parts' biases
    pooled = ((m["test"]["n"] - n_ext) * parts["table1"]["log_age"]["bias"]
              + n_ext * parts["beyond_paper"]["log_age"]["bias"])
    assert m["test"]["log_age"]["bias"] == pytest.approx(pooled / m["test"]["n"])
    assert "by_population" not in m["test_unseen"]  # no extended rows there


def sfh(**kw) -> np.ndarray:
    base = dict(t_start_gyr=12.0, tau_gyr=2.0, burst_frac=0.0, burst_age_gyr=0.1, mh_mu=-0.4, mh_sigma=0.2,
                amr_slope=0.0, unused=0.0)
    base.update(kw)
    return np.array([[base[k] for k in SFH_PARAMS]])


def test_delayed_tau_mass_integral_by_hand():
    """tau -> infinity: SFR ~ (t_start - age); the mass over the grid's age bins is its integral."""
    age = 10 ** LOG_AGE / 1e9
    m = _age_bin_mass(age, np.array([20.0]), np.array([1e9]))[0]
    half = (LOG_AGE[1] - LOG_AGE[0]) / 2
    lo, hi = 10 ** (LOG_AGE[0] - half) / 1e9, 10 ** (LOG_AGE[-1] + half) / 1e9
    exact = 20.0 * (hi - lo) - (hi**2 - lo**2) / 2 if hi < 20 else None
    assert exact is not None and m.sum() == pytest.approx(exact, rel=1e-3)
    assert (m[:-1] > 0).all()
    none_yet = _age_bin_mass(age, np.array([1.0]), np.array([1.0]))[0]
    assert none_yet[age > 1.2].sum() == 0  # nothing formed before the start


def test_sfh_light_is_mass_times_the_templates_light_per_mass():
    norm = np.ones((MH.size, LOG_AGE.size))
    flat = sfh_weights(sfh(), LOG_AGE, MH, norm)[0]
    norm[:, 20] = 3.0  # one age three times brighter per unit mass
    bright = sfh_weights(sfh(), LOG_AGE, MH, norm)[0]
    ratio = bright.sum(axis=0)[[5, 20]] / flat.sum(axis=0)[[5, 20]]
    assert ratio[1] / ratio[0] == pytest.approx(3.0)
    assert bright.sum() == pytest.approx(1.0) and bright.min() >= 0
    burst = sfh_weights(sfh(burst_frac=1.0, burst_age_gyr=0.1), LOG_AGE, MH, np.ones_like(norm))[0]
    assert burst.sum(axis=0)[np.argmin(np.abs(LOG_AGE - 8.0))] == pytest.approx(1.0)


def test_draw_sfh_covers_old_and_young_light():
    p = draw_sfh(3000, LOG_AGE, MH, np.random.default_rng(0))
    col = dict(zip(SFH_PARAMS, p.T))
    assert col["t_start_gyr"].min() >= 1.0 and col["t_start_gyr"].max() <= 13.5
    assert 0.4 < np.mean(col["burst_frac"] > 0) < 0.6
    w = sfh_weights(p, LOG_AGE, MH, np.ones((MH.size, LOG_AGE.size)))
    age, _ = light_weighted(w, LOG_AGE, MH)
    assert age.min() < 8.8 and age.max() > 9.8


def test_diagnose_builds_the_training_sets_spectra_from_the_true_weights():
    from types import SimpleNamespace

    from specfm.galaxies.diagnose import inputs, score
    from specfm.galaxies.model import GalProTE, GalProTEConfig
    from specfm.galaxies.training import reconstruct

    from test_galaxies_model import TINY_ARCH

    grid = tiny_grid()
    rng = np.random.default_rng(0)
    w = rng.random((4, N_Z, N_AGE))
    w /= w.sum(axis=(1, 2), keepdims=True)
    av = np.array([0.0, 0.3, 0.7, 1.2])
    truth = {"WEIGHTS": w, "AV": av, "SIGMA": np.zeros(4)}
    got = inputs(grid, SimpleNamespace(spectra=np.ones((4, int(grid.mask.sum())))), truth)
    np.testing.assert_allclose(got["clean"], reconstruct(grid, w, av), rtol=1e-5)
    np.testing.assert_allclose(got["clean_sigma"], got["clean"], rtol=2e-3)  # sigma 0: only the ln-grid round trip
    model = GalProTE(GalProTEConfig(n_z=N_Z, n_age=N_AGE, **TINY_ARCH), log_age=grid.log_age, mh=grid.mh,
                     av_levels=np.arange(16) / 10).eval()
    age, _ = light_weighted(w, grid.log_age, grid.mh)
    s = score(model, grid, got["clean"], {**truth, "LOGAGE": age, "MH": np.zeros(4)}, 0.0)
    assert set(s) == {"LOGAGE", "MH", "AV"} and np.isfinite(s["LOGAGE"]["bias"])
