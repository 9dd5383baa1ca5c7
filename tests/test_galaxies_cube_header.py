"""A cube's spectral axis comes from the keywords that are there: a CD matrix without CD3_3 (CDELT3
given) must not be read as 1 A/px, which is what wcslib's quiet ``cdfix`` made of it."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from specfm.galaxies.cube import preprocess_file
from specfm.galaxies.cube_io import check_linear_keywords, cube_header, read_cube
from test_galaxies_cube import Z, celestial, synthetic_cube


def write_with_header(path, edit):
    """A small noiseless cube at 1.25 A/px whose DATA/STAT headers ``edit`` rewrites."""
    wave, flux, var = synthetic_cube(3, 3)
    hdr = cube_header(wave[0], wave[1] - wave[0], celestial(3, 3))
    edit(hdr)
    shdr = hdr.copy()
    shdr["EXTNAME"], shdr["BUNIT"] = "STAT", "10**(-40)*erg**2/s**2/cm**4/Angstrom**2"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, header=hdr), fits.ImageHDU(var, header=shdr)]).writeto(path)
    return wave


def cd_without_cd3_3(hdr):
    del hdr["CD3_3"], hdr["CD1_3"], hdr["CD2_3"], hdr["CD3_1"], hdr["CD3_2"]
    hdr["CDELT3"] = 1.25


def test_cd_matrix_without_cd3_3_is_refused_naming_file_and_keywords(tmp_path):
    path = tmp_path / "nocd33.fits"
    write_with_header(path, cd_without_cd3_3)
    with pytest.raises(ValueError, match=r"nocd33\.fits: the WCS has a CD matrix .*CD1_1.* no CD3_j for axis 3 "
                                         r"\(CTYPE3 = 'AWAV'\); CDELT3 = 1\.25 is ignored .*add CD3_3"):
        read_cube(path)
    with pytest.raises(ValueError, match="nocd33.fits: .*CD3_3"):
        preprocess_file(path, Z, target_snr=10.0)


def test_the_same_cube_with_cd3_3_reads_at_1_25_A_per_pixel(tmp_path):
    path = tmp_path / "ok.fits"
    wave = write_with_header(path, lambda hdr: None)
    cube = read_cube(path)
    np.testing.assert_allclose(np.diff(cube.wave), 1.25, rtol=1e-9)
    np.testing.assert_allclose(cube.wave, wave, rtol=1e-12)


def test_pc_form_with_cdelt3_is_read_with_its_step(tmp_path):
    """No CD matrix at all: PC/CDELT form (CDELT3 is then the step, as the standard says)."""

    def pc_form(hdr):
        for k in [k for k in hdr if str(k).startswith("CD")]:
            del hdr[k]
        hdr["CDELT1"], hdr["CDELT2"], hdr["CDELT3"] = -0.2 / 3600, 0.2 / 3600, 1.25

    path = tmp_path / "pc.fits"
    wave = write_with_header(path, pc_form)
    np.testing.assert_allclose(read_cube(path).wave, wave, rtol=1e-12)


def test_no_step_keyword_at_all_and_a_missing_celestial_row():
    hdr = cube_header(4750.0, 1.25, celestial(3, 3))
    for k in [k for k in hdr if str(k).startswith("CD")]:
        del hdr[k]
    with pytest.raises(ValueError, match="x.fits: the spectral axis has no pixel step"):
        check_linear_keywords(hdr, "x.fits")
    hdr = cube_header(4750.0, 1.25, celestial(3, 3))
    del hdr["CD2_1"], hdr["CD2_2"], hdr["CD2_3"]
    with pytest.raises(ValueError, match=r"y.fits: .* no CD2_j for axis 2 \(CTYPE2 = 'DEC--TAN'\): add CD2_2"):
        check_linear_keywords(hdr, "y.fits")
