"""The mock generator: an emission line lands at (1 + z) x its rest wavelength; masks are where they must be."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.redshift import mock as M


def flat_basis(n_age=3, n_z=2):
    ln = np.arange(np.log(1500.0), np.log(9900.0), 1e-4)
    ones = np.ones((n_age * n_z, ln.size), "f4")
    return M.SSPBasis(ln_wave=ln, per_arm={a: ones for a in M.ARMS}, mh=np.array([-0.4, 0.0]),
                      age_gyr=np.array([0.1, 1.0, 10.0])[:n_age], k_lambda=np.zeros(ln.size))


def one_galaxy(z, line, ew=50.0, snr=1e6):
    ew_all = np.zeros((1, len(M.LINES)))
    ew_all[0, list(M.LINES).index(line)] = ew
    w = np.zeros((1, 6))
    w[0, 0] = 1.0
    return M.Params(z=np.array([z]), pop=np.array(["BGS"]), weights=w, av=np.zeros(1), snr=np.array([snr]),
                    rmag=np.array([18.0]), line_ew=ew_all, sigma_v=np.array([50.0]))


@pytest.mark.parametrize("z,line,arm", [(0.25, "Halpha", "z"), (0.9, "OII_3729", "r"), (0.1, "OIII_5007", "b")])
def test_a_line_lands_at_one_plus_z_times_rest(z, line, arm):
    s = M.MockSettings(bad_pixel_fraction=0.0, block_probability=0.0)
    out = M.render(flat_basis(), one_galaxy(z, line), np.random.default_rng(0), s)
    flux, _ = out["arms"][arm]
    wave = M.arm_wave(arm)
    expected = M.LINES[line] * (1 + z)
    peak = wave[np.argmax(flux[0] - 1.0)]
    assert abs(peak - expected) <= M.PIX / 2 + 1e-9, (peak, expected)
    # the line's flux is EW_rest (1 + z) x continuum (= 1 here)
    near = np.abs(wave - expected) < 20
    assert np.sum(flux[0, near] - 1.0) * M.PIX == pytest.approx(50.0 * (1 + z), rel=0.02)


def test_pixels_bluer_than_the_ssps_are_masked_above_z_1_14():
    s = M.MockSettings(bad_pixel_fraction=0.0, block_probability=0.0)
    out = M.render(flat_basis(), one_galaxy(1.5, "OII_3729"), np.random.default_rng(0), s)
    _, ivar = out["arms"]["b"]
    wave = M.arm_wave("b")
    edge = M.air_to_vac(M.SSP_BLUE) * 2.5
    assert np.all(ivar[0, wave < edge] == 0) and np.all(ivar[0, wave > edge + 1] > 0)
    assert out["counts"]["masked_rest_coverage"] == int(np.sum(wave < edge))


def test_sfh_weights_sum_to_one_and_nothing_is_older_than_the_universe():
    ages = np.array([0.1, 0.5, 1.0, 5.0, 10.0])
    rng = np.random.default_rng(1)
    for family in ("tau", "delayed"):
        w = M.sfh_weights(rng, ages, t_univ=3.0, family=family)
        assert w.sum() == pytest.approx(1.0) and np.all(w[ages > 3.0] == 0)


def test_test_split_uses_another_sfh_family():
    """The parameters _mock_spectra renders: test galaxies come from the truncated delayed-tau family
    (about 30 % quenched: no mass in the youngest age bin), which tau + burst never gives."""
    from specfm.redshift.steps import mock_params

    basis = flat_basis()
    basis.age_gyr = np.geomspace(0.063, 15.85, 25)  # the E-MILES ages (truncations fall between bins)
    p = mock_params(3, np.arange(600) % 3 == 0, basis, M.MockSettings())
    assert p[False].z.size == 400 and p[True].z.size == 200
    youngest = basis.age_gyr.argmin()
    young = {t: p[t].weights[:, youngest::basis.age_gyr.size].sum(axis=1) for t in (False, True)}
    assert np.all(young[False] > 0)  # tau + burst: every training galaxy still forms stars
    assert 0.15 < np.mean(young[True] == 0) < 0.45, np.mean(young[True] == 0)


def test_test_split_has_its_own_random_stream():
    """Neither split's galaxies depend on the other split's size (one shared stream would shift them)."""
    from specfm.redshift.steps import mock_params

    basis, s = flat_basis(), M.MockSettings()
    split = lambda n_train, n_test: np.arange(n_train + n_test) >= n_train  # noqa: E731
    a, b, c = (mock_params(5, split(*n), basis, s) for n in [(300, 100), (300, 50), (200, 100)])
    assert np.array_equal(a[False].weights, b[False].weights) and np.array_equal(a[False].z, b[False].z)
    assert np.array_equal(a[True].weights, c[True].weights) and np.array_equal(a[True].z, c[True].z)
    assert not np.allclose(a[False].z[:100], a[True].z)  # and the two streams differ


def test_air_to_vac_at_halpha():
    assert M.air_to_vac(6562.80) == pytest.approx(6564.61, abs=0.02)
