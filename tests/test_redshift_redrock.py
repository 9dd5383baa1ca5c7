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


def write_template_file(path, wave, flux, rrtype="GALAXY", log_wave=False):
    """A Redrock template file in its BASIS_VECTORS layout (linear wavelength unless log_wave)."""
    from astropy.io import fits

    axis = np.log10(wave) if log_wave else wave
    hdr = fits.Header({"CRVAL1": axis[0], "CDELT1": axis[1] - axis[0], "RRTYPE": rrtype, "RRSUBTYP": "",
                       "RRVER": "test", "RRIGM": "Inoue14", "EXTNAME": "BASIS_VECTORS", **({"LOGLAM": 1} if log_wave else {})})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, header=hdr)]).writeto(path)


def test_template_files_are_read_as_redrock_reads_them(tmp_path):
    from specfm.redshift.steps import read_rr_templates

    wave = np.arange(3000.0, 3010.0, 0.5)
    flux = np.arange(3 * wave.size, dtype=float).reshape(3, wave.size)
    write_template_file(tmp_path / "linear.fits", wave, flux)
    got = read_rr_templates(tmp_path / "linear.fits")
    np.testing.assert_allclose(got["wave"], wave)
    np.testing.assert_array_equal(got["flux"], flux)
    log_wave = 10 ** np.arange(3.4, 3.41, 1e-4)
    write_template_file(tmp_path / "log.fits", log_wave, np.ones((2, log_wave.size)), log_wave=True)
    np.testing.assert_allclose(read_rr_templates(tmp_path / "log.fits")["wave"], log_wave, rtol=1e-10)


def test_a_star_template_or_a_non_template_file_is_a_named_error(tmp_path):
    from astropy.io import fits

    from specfm.redshift.steps import read_rr_templates

    wave = np.arange(3000.0, 3010.0, 0.5)
    write_template_file(tmp_path / "star.fits", wave, np.ones((2, wave.size)), rrtype="STAR")
    with pytest.raises(ValueError, match=r"star\.fits: a Redrock STAR template"):
        read_rr_templates(tmp_path / "star.fits")
    fits.PrimaryHDU(np.ones(3)).writeto(tmp_path / "image.fits")
    with pytest.raises(ValueError, match=r"image\.fits: not a Redrock template file"):
        read_rr_templates(tmp_path / "image.fits")

