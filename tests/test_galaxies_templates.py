"""Unit tests for the GalProTE template preparation (specfm.galaxies: templates, spectra, template_table).

Every expected number is checkable by hand; the SSP files are tiny fakes written here (no downloads).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from astropy.io import fits

from specfm.galaxies import (
    attenuate,
    av_levels,
    emission_mask,
    match_lsf,
    muse_lsf_fwhm,
    paper_wavelength_grid,
    parse_ssp_name,
    plot_templates,
    prepare_templates,
    read_ssp,
    read_ssp_grid,
    read_template_table,
    resample,
    write_template_table,
)
from specfm.galaxies.spectra import FWHM_TO_SIGMA, PAPER_MASK_REGIONS

from fakes import FAKE_AGES, FAKE_MH, fake_name, gaussian, write_fake_ssp

# ---------------------------------------------------------------- helpers


def measured_fwhm(x, y):
    """FWHM of a Gaussian-like profile from its second moment (robust, no fitting)."""
    w = y / y.sum()
    mu = np.sum(w * x)
    return FWHM_TO_SIGMA * np.sqrt(np.sum(w * (x - mu) ** 2))


@pytest.fixture
def fake_grid(tmp_path):
    """2 [M/H] x 3 ages of tiny fake E-MILES files, written in scrambled order."""
    paths = []
    for age in reversed(FAKE_AGES):
        for z in FAKE_MH:
            p = tmp_path / fake_name(z, age)
            write_fake_ssp(p, FAKE_MH[z], float(age))
            paths.append(p)
    return paths


# ---------------------------------------------------------------- LSF


def test_muse_lsf_by_hand():
    # 5.866e-8 * 5000^2 - 9.187e-4 * 5000 + 6.040 = 1.4665 - 4.5935 + 6.040
    assert muse_lsf_fwhm(5000.0) == pytest.approx(2.913, abs=1e-9)
    assert muse_lsf_fwhm(np.array([4750.0, 7100.0])) == pytest.approx([2.99969, 2.47428], abs=1e-5)


def test_match_lsf_delta_becomes_gaussian_of_target_fwhm():
    x = np.arange(4900.0, 5100.0, 0.25)
    y = np.zeros_like(x)
    y[400] = 1.0  # a delta at 5000 A
    out = match_lsf(x, y, 0.0, 3.0)
    assert out.sum() == pytest.approx(1.0, rel=1e-6)  # convolution conserves flux
    assert measured_fwhm(x, out) == pytest.approx(3.0, rel=2e-3)
    assert x[np.argmax(out)] == 5000.0


def test_match_lsf_narrow_lines_get_the_wavelength_dependent_muse_fwhm():
    x = np.arange(4600.0, 6700.0, 0.1)
    lines = (4800.0, 5500.0, 6500.0)
    y = sum(gaussian(x, mu, 2.51) for mu in lines)  # E-MILES resolution
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MUSE > 2.51 A everywhere below 6760 A: no clipping warning
        out = match_lsf(x, y, 2.51, muse_lsf_fwhm)
    for mu in lines:
        win = np.abs(x - mu) < 15
        assert measured_fwhm(x[win], out[win]) == pytest.approx(muse_lsf_fwhm(mu), rel=5e-3)


def test_match_lsf_vectorised_over_leading_axes():
    x = np.arange(5000.0, 5200.0, 0.9)
    y = np.stack([gaussian(x, 5100, 2.51), 2 * gaussian(x, 5100, 2.51)])[None]  # [1, 2, n]
    out = match_lsf(x, y, 2.51, 4.0)
    assert out.shape == y.shape
    np.testing.assert_allclose(out[0, 1], 2 * out[0, 0], rtol=1e-12)


def test_match_lsf_clips_where_target_is_sharper_and_says_where():
    x = np.arange(5000.0, 6000.0, 0.25)
    fwhm_out = np.where(x < 5500, 4.0, 2.0)  # sharper than the input 2.51 A above 5500 A
    y = gaussian(x, 5200, 2.51) + gaussian(x, 5800, 2.51)
    with pytest.warns(UserWarning, match=r"5500\.0-5999\.8 A"):
        out = match_lsf(x, y, 2.51, fwhm_out)
    red = np.abs(x - 5800) < 15
    assert measured_fwhm(x[red], out[red]) == pytest.approx(2.51, rel=5e-3)  # left alone
    blue = np.abs(x - 5200) < 20
    assert measured_fwhm(x[blue], out[blue]) == pytest.approx(4.0, rel=5e-3)


# ---------------------------------------------------------------- grid, resampling, mask


def test_paper_grid_matches_the_paper():
    w = paper_wavelength_grid()
    assert w.size == 948
    assert w[0] == 4749.37 and w[-1] == pytest.approx(7100.49, abs=1e-9)
    assert round(w[1] - w[0], 2) == 2.48
    # Table 2 mask edges sit on this grid's pixel centres to < 0.01 px (confirms the 2.48270 A step;
    # a strict 2.48 A step puts them up to 0.36 px off)
    edges = np.array([e for _, lo, hi in PAPER_MASK_REGIONS for e in (lo, hi)])
    pix = (edges - w[0]) / (w[1] - w[0])
    assert np.max(np.abs(pix - np.round(pix))) < 0.01


def test_resample_conserves_flat_and_linear_spectra():
    win = np.arange(0.5, 100.0, 1.0)  # input pixels 1 A wide, edges 0..100
    wout = np.arange(11.25, 90.0, 2.5)  # output pixels 2.5 A wide, edges 10..90
    np.testing.assert_allclose(resample(win, np.full(win.size, 3.0), wout), 3.0, rtol=1e-12)
    a, b = 2.0, 0.05
    out = resample(win, a + b * win, wout)
    # integral over 10..90 A: the input pixels 10..89 exactly (aligned end edges)
    assert np.sum(out * 2.5) == pytest.approx(np.sum((a + b * win)[10:90] * 1.0), rel=1e-12)
    # and each output pixel is the line at its centre, up to the staircase (<= b * h / 8 per pixel)
    np.testing.assert_allclose(out, a + b * wout, atol=b * 1.0 / 8)


def test_resample_conserves_line_flux_on_the_paper_grid():
    win = np.arange(4700.0, 7150.0, 0.9)
    y = 1.0 + 5 * gaussian(win, 6000.0, 3.0)
    w = paper_wavelength_grid()
    out = resample(win, y, w)
    line_in = np.sum((y - 1) * 0.9)
    line_out = np.sum((out - 1) * np.gradient(w))
    assert line_out == pytest.approx(line_in, rel=1e-6)
    with pytest.raises(ValueError, match="outside the input"):
        resample(win, y, np.array([4690.0, 4700.0]))


def test_mask_keeps_876_of_948_and_masks_halpha():
    w = paper_wavelength_grid()
    keep = emission_mask(w)
    assert keep.sum() == 876 and (~keep).sum() == 72
    i_ha = np.argmin(np.abs(w - 6563.0))
    assert not keep[i_ha]
    assert keep[np.argmin(np.abs(w - 5890.0))]  # NaD is stellar: kept
    counts = [np.sum((w >= lo - 0.01) & (w <= hi + 0.01)) for _, lo, hi in PAPER_MASK_REGIONS]
    assert counts == [6, 6, 6, 12, 6, 6, 18, 12]  # width / 2.4827 + 1 (edges inclusive)


# ---------------------------------------------------------------- attenuation


def test_attenuation_identity_at_zero_and_v_band_factor():
    w = np.array([4750.0, 5500.0, 7100.0])
    f = np.ones((2, 3, w.size))
    av = av_levels()
    out = attenuate(w, f, av)
    assert out.shape == (16, 2, 3, 3)
    np.testing.assert_array_equal(out[0], f)
    # O94 is normalised to A(V): at 5500 A the flux drops by 10^(-0.4 A_V) (A(5500)/A(V) = 0.9987)
    np.testing.assert_allclose(out[:, 0, 0, 1], 10 ** (-0.4 * av), rtol=2e-3)
    assert np.all(out[-1, 0, 0, 0] < out[-1, 0, 0, 1]) and out[-1, 0, 0, 1] < out[-1, 0, 0, 2]  # bluer = dimmer
    assert attenuate(w, np.ones(3), 1.0).shape == (3,)


def test_av_levels():
    assert av_levels().tolist() == [round(0.1 * k, 1) for k in range(16)]


# ---------------------------------------------------------------- file names and grids


@pytest.mark.parametrize(
    "name, mh, age",
    [
        ("Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits", -0.40, 0.0631),
        ("Eun1.30Zp0.22T15.8489_iPp0.00_baseFe_linear_FWHM_variable.fits", 0.22, 15.8489),
        ("Ebi1.30Zm0.25T00.0300_iTp0.00_baseFe.fits", -0.25, 0.03),
        ("Mch1.30Zp0.40T14.0000_iTp0.00_baseFe.fits", 0.40, 14.0),
        ("Ech1.30Zm2.27T00.0300_iTp0.40_Ep0.40.fits", -2.27, 0.03),
    ],
)
def test_parse_both_naming_schemes(name, mh, age):
    n = parse_ssp_name(f"/some/dir/{name}")
    assert (n.mh, n.age_gyr) == (mh, age)


def test_parse_families_differ_between_schemes_and_bad_names_fail():
    padova = parse_ssp_name("Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits").family
    basti = parse_ssp_name("Ebi1.30Zm0.25T00.0300_iTp0.00_baseFe.fits").family
    assert padova != basti and "iP" in padova and "iT" in basti
    bad_names = ("Eun1.30Z0.40T00.0631_iPp0.00_baseFe.fits", "spectrum.fits", "Ebi1.30Zm0.25T00.0300_iTp0.00_baseFe.txt")
    for bad in bad_names:
        with pytest.raises(ValueError, match="not an E-MILES"):
            parse_ssp_name(bad)


def test_grid_shape_comes_from_the_files(fake_grid):
    g = read_ssp_grid(fake_grid)
    assert g.flux.shape == (2, 3, 2950)
    assert g.mh.tolist() == [-0.40, 0.0] and g.age_gyr.tolist() == [1.0, 2.5119, 10.0]
    assert g.files[1][2] == fake_name("p0.00", "10.0000")
    _, f = read_ssp(fake_grid[0].parent / fake_name("p0.00", "10.0000"))
    np.testing.assert_array_equal(g.flux[1, 2], f)


def test_incomplete_grid_names_the_missing_cell(fake_grid):
    missing = fake_grid[0].parent / fake_name("p0.00", "02.5119")
    with pytest.raises(ValueError, match=r"missing 1: \(\[M/H\]=\+0\.00, age=2\.5119 Gyr\)"):
        read_ssp_grid([p for p in fake_grid if p != missing])


def test_mixed_families_are_refused(fake_grid, tmp_path):
    other = tmp_path / "Ebi1.30Zm0.40T01.0000_iTp0.00_baseFe.fits"
    write_fake_ssp(other, -0.40, 1.0)
    with pytest.raises(ValueError, match="2 different SSP families"):
        read_ssp_grid([*fake_grid, other])


def test_bad_files_name_the_file_and_the_problem(fake_grid, tmp_path):
    target = tmp_path / fake_name("m0.40", "10.0000")
    target.write_bytes(b"SIMPLE  = this is not a FITS file")
    with pytest.raises(ValueError, match=f"{target.name}.*not a readable FITS"):
        read_ssp_grid(fake_grid)

    target.unlink()
    write_fake_ssp(target, -0.40, 10.0, drop="CDELT1")
    with pytest.raises(ValueError, match=f"{target.name}: missing wavelength WCS keyword.*CDELT1"):
        read_ssp(target)

    target.unlink()
    write_fake_ssp(target, -0.40, 10.0, crval=4600.9)  # shifted by one pixel
    with pytest.raises(ValueError, match=f"{target.name}: wavelength grid .* differs"):
        read_ssp_grid(fake_grid)


def test_header_contradicting_the_name_is_refused(tmp_path):
    p = tmp_path / fake_name("m0.40", "01.0000")
    write_fake_ssp(p, -0.40, 2.0)  # header says 2 Gyr
    with pytest.raises(ValueError, match="header says age"):
        read_ssp(p)


# ---------------------------------------------------------------- end to end: table and figure


@pytest.fixture
def prepared(fake_grid):
    with pytest.warns(UserWarning, match="no smoothing there"):  # MUSE is sharper than 2.51 A > 6760 A
        return prepare_templates(fake_grid)


def test_prepare_templates_on_the_paper_grid(prepared):
    g = prepared
    assert g.flux.shape == (2, 3, 948) and g.flux.dtype == np.float32
    assert g.mask.sum() == 876
    np.testing.assert_allclose(np.median(g.flux[..., g.mask], axis=-1), 1.0, rtol=1e-6)
    assert g.log_age == pytest.approx(np.log10([1e9, 2.5119e9, 1e10]))
    assert g.norm.shape == (2, 3) and np.all(g.norm > 0)
    assert g.meta["files"][0][0] == fake_name("m0.40", "01.0000")


def test_hdf5_round_trip_and_byte_identical_rewrite(prepared, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_template_table(prepared, a)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution: a leak would show up now
    write_template_table(prepared, b)
    assert a.read_bytes() == b.read_bytes()
    back = read_template_table(a)
    for name in ("wave", "flux", "log_age", "mh", "mask", "norm"):
        np.testing.assert_array_equal(getattr(back, name), getattr(prepared, name))
        assert getattr(back, name).dtype == getattr(prepared, name).dtype
    assert back.meta == prepared.meta


def test_plot_is_a_deterministic_png(prepared, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plot_templates(prepared, a)
    plot_templates(prepared, b)
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
