"""MaNGA LOGCUBEs (FLUX/IVAR/MASK/WAVE, vacuum log wavelengths, 1e-17 units, DRP mask bits) through the
strip-wise binning path, on a small cube written by the test; and MaNGA-format spectra files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from specfm.galaxies.cube import preprocess_file, write_bins
from specfm.galaxies.manga import MASK_BITS, bad_pixels, write_manga_cube
from specfm.galaxies.preprocessing import vacuum_to_air
from specfm.galaxies.single import prepare, read_spectra
from specfm.galaxies.spectra import paper_wavelength_grid
from test_galaxies_cube import celestial

Z = 0.03
LINE_REST_AIR = 5500.0  # an absorption line at this rest AIR wavelength
NY, NX = 4, 5


def manga_cube(path, *, mask_spaxel=(0, 0), star_pixels=((2, 3), (2000, 2040))):
    """Log-spaced vacuum wavelengths (MaNGA's 1e-4 dex from 3621.6 A), flat continuum with one Gaussian
    absorption line; spaxel ``mask_spaxel`` all DONOTUSE, pixels ``star_pixels`` of spaxel (2, 3) FORESTAR."""
    wave_vac = 3621.596 * 10 ** (1e-4 * np.arange(4563))
    rest_air = vacuum_to_air(wave_vac) / (1 + Z)
    prof = 1.0 - 0.4 * np.exp(-0.5 * ((rest_air - LINE_REST_AIR) / 2.0) ** 2)
    flux = np.broadcast_to((2.0 * prof)[:, None, None], (wave_vac.size, NY, NX)).astype(np.float32).copy()
    ivar = np.full(flux.shape, 1.0 / 0.05**2, np.float32)  # S/N 40 per pixel
    mask = np.zeros(flux.shape, np.int32)
    mask[:, mask_spaxel[0], mask_spaxel[1]] = 1 << MASK_BITS["DONOTUSE"] | 1  # NOCOV + DONOTUSE
    (y, x), (i0, i1) = star_pixels
    mask[i0:i1, y, x] = 1 << MASK_BITS["FORESTAR"]
    flux[i0:i1, y, x] = 1e4  # a star: garbage unless masked
    ivar[:, 1, 1] = 0.0  # no data at all: IVAR 0 masks it too
    write_manga_cube(path, wave_vac, flux, ivar, mask, celestial(NY, NX))
    return wave_vac


def test_mask_bits_by_hand():
    assert MASK_BITS == {"FORESTAR": 3, "DONOTUSE": 10}  # sdssMaskbits.par, MANGA_DRP3PIXMASK
    np.testing.assert_array_equal(bad_pixels([0, 1, 2, 4, 8, 1024, 1026, 1027]),
                                  [False, False, False, False, True, True, True, True])


@pytest.mark.parametrize("name", ["cube.fits", "cube.fits.gz"])
def test_manga_cube_binned_in_strips(tmp_path, name, caplog):
    path = tmp_path / name
    manga_cube(path)
    with caplog.at_level(logging.INFO, logger="specfm.galaxies"):
        bins = preprocess_file(path, Z, kind="manga", target_snr=20.0)
    assert "MaNGA vacuum wavelengths converted to air" in caplog.text
    # DONOTUSE spaxel and the IVAR = 0 spaxel are out; every other spaxel reaches S/N 20 alone
    assert bins.bin_id[0, 0] == -1 and bins.bin_id[1, 1] == -1
    assert bins.n_bins == NY * NX - 2 and np.all(bins.n_spaxels == 1)
    assert bins.meta["counts"]["n_empty"] == 2
    # the FORESTAR pixels were masked and interpolated over, not binned (their flux was 1e4)
    b = int(bins.bin_id[2, 3])
    assert bins.meta["counts"]["n_pixels_interpolated"] > 0
    assert np.nanmax(bins.spectra_full[b]) < 3.0 * (1 + Z)
    # vacuum -> air: the line is at its rest AIR wavelength (a vacuum grid would put it 1.5 A redder)
    wave = bins.wave
    sel = (wave > LINE_REST_AIR - 10) & (wave < LINE_REST_AIR + 10)
    depth = 1 - bins.spectra_full[b, sel] / np.median(bins.spectra_full[b])
    centroid = np.sum(wave[sel] * depth) / np.sum(depth)
    assert abs(centroid - LINE_REST_AIR) < 0.1
    # 1e-17 units kept (rest frame: x (1+z)); the flat continuum is 2 in the file
    assert np.median(bins.spectra_full[b]) == pytest.approx(2.0 * (1 + Z), rel=1e-3)
    one_row = preprocess_file(path, Z, kind="manga", target_snr=20.0, max_chunk_mb=0.001, chunk=3)
    write_bins(bins, tmp_path / "a.h5")
    write_bins(one_row, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_a_manga_spaxel_as_a_spectrum_is_the_cube_bin(tmp_path):
    """The same spaxel written as a MaNGA-format spectra file gives the cube bin's model input."""
    path = tmp_path / "cube.fits"
    manga_cube(path)
    bins = preprocess_file(path, Z, kind="manga", target_snr=20.0)
    with fits.open(path) as h:
        rows = [h[e].data[:, 2, 3][None] for e in ("FLUX", "IVAR", "MASK")]
        wave = h["WAVE"].data
    spec = tmp_path / "spectra.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(wave, name="WAVE"), fits.ImageHDU(rows[0], name="FLUX"),
                  fits.ImageHDU(rows[1], name="IVAR"), fits.ImageHDU(rows[2], name="MASK")]).writeto(spec)
    one = prepare(read_spectra(spec), Z, wave_out=paper_wavelength_grid())
    b = int(bins.bin_id[2, 3])
    for name in ("spectra", "spectra_full", "noise_full", "norm"):
        np.testing.assert_array_equal(getattr(one, name)[0], getattr(bins, name)[b], err_msg=name)


def test_bad_manga_cubes_are_named(tmp_path):
    path = tmp_path / "c.fits"
    manga_cube(path)
    with fits.open(path) as h:
        del h["IVAR"]
        h.writeto(tmp_path / "noivar.fits")
    with pytest.raises(ValueError, match=r"noivar.fits: not a MaNGA LOGCUBE: no IVAR extension"):
        preprocess_file(tmp_path / "noivar.fits", Z, kind="manga")
    with fits.open(path) as h:
        h["FLUX"].header["BUNIT"] = "erg/s/cm^2/Ang"
        h.writeto(tmp_path / "unit.fits")
    with pytest.raises(ValueError, match=r"unit.fits: FLUX BUNIT 'erg/s/cm\^2/Ang' is not MaNGA's"):
        preprocess_file(tmp_path / "unit.fits", Z, kind="manga")
    with pytest.raises(ValueError, match=r"c.fits: observed wavelengths .* at z = 0.5, not the required"):
        preprocess_file(path, 0.5, kind="manga")
    with pytest.raises(ValueError, match="c.fits: a MaNGA cube .*kind manga"):
        read_spectra(path)
    with pytest.raises(ValueError, match="unknown cube kind 'sdss'"):
        preprocess_file(path, Z, kind="sdss")
