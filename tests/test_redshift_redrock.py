"""Redrock on the stage's PCA templates: a noiseless spectrum made from the templates is fitted at its z,
and the hybrid scan (a window around a given z) finds the same minimum."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.redshift import mock as M
from specfm.redshift import rrfit
from specfm.redshift.grid import make_grid
from specfm.redshift.rrtemplates import build_templates


def featured_basis():
    """Six fake SSPs with absorption features and slopes that differ by age (enough for a PCA)."""
    ln = np.arange(np.log(1700.0), np.log(9900.0), 1e-4)
    lam = np.exp(ln)
    rows = []
    for k in range(6):
        f = (lam / 5000.0) ** (-1.5 + 0.5 * k)
        for c in (3934.8, 3969.6, 4305.0, 5176.7, 5895.0):
            f = f * (1 - (0.1 + 0.05 * k) * np.exp(-0.5 * ((lam - c) / 4.0) ** 2))
        rows.append(f)
    per = np.array(rows, "f4")
    return M.SSPBasis(ln_wave=ln, per_arm={a: per for a in M.ARMS}, mh=np.array([-0.4, 0.0]),
                      age_gyr=np.array([0.1, 1.0, 10.0]), k_lambda=np.zeros(ln.size))


@pytest.fixture(scope="module")
def templates():
    return build_templates(featured_basis(), n_basis=5, n_galaxies=60, seed=1)


def noiseless(tpl, wave, z, coeff=(1.0, 0.3, -0.2)):
    model = np.asarray(coeff) @ tpl["flux"][:len(coeff)]
    return np.interp(wave / (1 + z), tpl["wave"], model)


def test_templates_are_zero_padded_below_the_ssps(templates):
    blue = templates["wave"] < templates["covered_from"]
    assert blue.any() and np.all(templates["flux"][:, blue] == 0)
    assert rrfit.max_z_covered(templates["wave"], np.array([3600.0, 9824.0]))[1] > 1.6


def test_redrock_recovers_the_z_of_a_noiseless_template_spectrum(templates):
    wave = make_grid(3600.0, 9824.0, 2.4)
    zs = np.array([0.137, 0.52])
    flux = np.stack([noiseless(templates, wave, z) for z in zs])
    ivar = np.full_like(flux, 1e4)
    table, _ = rrfit.fit_full(templates, wave, flux, ivar, np.array([1, 2]), zmin=0.0, zmax=1.0)
    assert np.allclose(table["z"], zs, atol=2e-4), table["z"]
    hyb, _ = rrfit.fit_hybrid(templates, wave, flux, ivar, np.array([1, 2]), zs + 0.002, np.full(2, 0.001),
                              n_sigma=5.0, min_half_width=0.005, zmin=0.0, zmax=1.0)
    assert np.allclose(hyb["z"], table["z"], atol=1e-5)
    assert np.all(hyb["window_lo"] < zs) and np.all(hyb["window_hi"] > zs)


def test_a_z_range_the_templates_do_not_cover_is_refused(templates):
    wave = make_grid(3600.0, 9824.0, 2.4)
    with pytest.raises(ValueError, match="outside what the templates cover"):
        rrfit.fit_full(templates, wave, np.ones((1, wave.size)), np.ones((1, wave.size)), np.array([1]),
                       zmin=0.0, zmax=3.0)
