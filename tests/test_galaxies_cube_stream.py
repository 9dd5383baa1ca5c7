"""Binning from a file in strips (``preprocess_file``) gives the same bins as the in-memory path, and
bad cubes fail with the file and the problem named (or are masked with the count in the log)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from specfm.galaxies.bench_memory import write_synthetic_cube
from specfm.galaxies.cube import preprocess, preprocess_file, write_bins
from specfm.galaxies.cube_io import read_cube, strip_rows, write_cube
from specfm.galaxies.preprocessing import SNR_WINDOW
from specfm.galaxies.spectra import resample
from test_galaxies_cube import CUBE_LOG, Z, celestial, mock, synthetic_cube, write_synthetic  # noqa: F401

BIN_FIELDS = ("spectra_full", "noise_full", "spectra", "norm", "snr", "bin_id", "xbar", "ybar", "n_spaxels",
              "n_filtered")


def assert_same_bins(a, b):
    for name in BIN_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.meta == b.meta and a.wcs_header == b.wcs_header


def test_strips_give_the_bytes_of_the_in_memory_path(mock, tmp_path):
    in_memory = preprocess(read_cube(mock["cube"], redshift=Z), Z, target_snr=60.0)
    one_row = preprocess_file(mock["cube"], Z, target_snr=60.0, max_chunk_mb=0.001, chunk=5)
    whole = preprocess_file(mock["cube"], Z, target_snr=60.0, max_chunk_mb=1e4)
    assert in_memory.n_bins > 3
    assert_same_bins(in_memory, one_row)
    assert_same_bins(in_memory, whole)
    # independent of both paths: each spaxel's signal (mean rebinned flux in the S/N window, by
    # spectra.resample) weights the bin centroids
    cube = read_cube(mock["cube"], redshift=Z)
    rest = resample(cube.wave / (1 + Z), np.moveaxis(cube.flux, 0, -1).astype(float) * (1 + Z), in_memory.wave)
    win = (in_memory.wave >= SNR_WINDOW[0]) & (in_memory.wave <= SNR_WINDOW[1])
    signal = rest[..., win].astype(np.float32).mean(axis=-1, dtype=np.float64)
    ids = in_memory.bin_id
    inside = ids >= 0
    xx = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    xbar = np.bincount(ids[inside], signal[inside] * xx[inside]) / np.bincount(ids[inside], signal[inside])
    np.testing.assert_allclose(one_row.xbar, xbar, rtol=1e-9)
    write_bins(in_memory, tmp_path / "a.h5")
    write_bins(one_row, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_strip_rows_bounds_the_strip():
    assert strip_rows(1900, 1000, 256.0) == 17  # 17 rows x 1000 x 1900 x 8 B = 258,400,000 B <= 256 MiB
    assert strip_rows(1900, 1000, 0.001) == 1
    assert 17 * 1000 * 1900 * 8 <= 256 * 2**20 < 18 * 1000 * 1900 * 8


def test_synthetic_benchmark_cube_reads_like_a_phangs_cube(tmp_path):
    path = tmp_path / "syn.fits"
    size = write_synthetic_cube(path, 3, 4)
    assert size % 2880 == 0
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "DATA", "STAT"]
        assert hdul["DATA"].shape == hdul["STAT"].shape == (3681, 3, 4)
    cube = read_cube(path)
    assert cube.wave[0] == pytest.approx(4750.0) and cube.wave[-1] == pytest.approx(9350.0)
    assert np.nanmean(cube.flux) == pytest.approx(100.0, abs=0.5) and np.all(cube.var[np.isfinite(cube.var)] == 400.0)


# ---------------------------------------------------------------- bad input, through the streaming path


def test_nan_inf_pixels_masked_and_counted_in_strips(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CUBE_LOG)
    wave, flux, var = synthetic_cube(5, 4)
    flux[:, 1, 2] = np.nan  # an all-masked spaxel
    flux[1000:1003, 3, 0] = np.nan
    flux[1500, 0, 1] = np.inf
    flux[1600, 2, 2] = -np.inf
    var[1200, 4, 3] = 0.0  # zero variance: masked too
    path = tmp_path / "holes.fits"
    write_cube(path, wave[0], 1.25, flux, var, celestial(5, 4))
    n_planes = read_cube(path, redshift=Z).flux.shape[0]
    caplog.clear()
    bins = preprocess_file(path, Z, target_snr=10.0, max_chunk_mb=0.05)
    assert f"holes.fits: {n_planes + 6} of {n_planes * 20} pixels masked" in caplog.text
    assert "holes.fits: 1 of 20 spaxels have no valid pixel" in caplog.text
    assert bins.bin_id[1, 2] == -1 and (bins.bin_id >= 0).sum() == 19
    assert bins.meta["counts"]["n_empty"] == 1 and bins.meta["counts"]["n_pixels_interpolated"] == 6
    assert np.isfinite(bins.spectra_full).all()


def test_all_masked_cube_is_an_error_naming_the_file(tmp_path):
    wave, flux, var = synthetic_cube(3, 3)
    flux[:] = np.nan
    path = tmp_path / "empty.fits"
    write_cube(path, wave[0], 1.25, flux, var, celestial(3, 3))
    with pytest.raises(ValueError, match=r"empty\.fits: no spaxel has S/N >= 3"):
        preprocess_file(path, Z)
    with pytest.raises(ValueError, match=r"empty\.fits: no spaxel has S/N >= 3"):
        preprocess(read_cube(path, redshift=Z), Z)


def test_rest_frame_range_not_covered_is_named(tmp_path):
    path = tmp_path / "short.fits"
    write_synthetic(path, end=7000.0)
    with pytest.raises(ValueError, match=r"short\.fits: observed wavelengths .* not the required 4748\.1-7101\.7 A"):
        preprocess_file(path, Z)
    blue = tmp_path / "blue.fits"
    write_synthetic(blue, start=4800.0)  # starts red of 4748 A rest x (1 + z)
    with pytest.raises(ValueError, match=r"blue\.fits: .*rest frame at z = 0\.008"):
        preprocess_file(blue, Z)


@pytest.mark.parametrize("bunit,problem", [
    ("", r"DATA has no BUNIT"),
    ("erg/s/cm2", r"BUNIT 'erg/s/cm2' \(energy flux/irradiance\) is not a flux density per unit wavelength"),
    ("10**(-20)*erg/s/cm**2/Angstrom/furlong", r"BUNIT .* is not a unit astropy can parse"),
])
def test_wrong_or_missing_bunit(tmp_path, bunit, problem):
    path = tmp_path / "unit.fits"
    write_synthetic(path)
    with fits.open(path) as hdul:
        if bunit:
            hdul["DATA"].header["BUNIT"] = bunit
        else:
            del hdul["DATA"].header["BUNIT"]
        hdul.writeto(tmp_path / "bad_unit.fits")
    with pytest.raises(ValueError, match=r"bad_unit\.fits: " + problem):
        preprocess_file(tmp_path / "bad_unit.fits", Z)


def test_stat_problems_are_named(tmp_path):
    path = tmp_path / "good.fits"
    write_synthetic(path)
    with fits.open(path) as hdul:
        hdul["STAT"].header["BUNIT"] = "10**(-20)*erg/s/cm**2/Angstrom"  # sigma, not variance
        hdul.writeto(tmp_path / "sigma.fits")
    with pytest.raises(ValueError, match=r"sigma\.fits: STAT BUNIT .* is not the square of DATA BUNIT"):
        preprocess_file(tmp_path / "sigma.fits", Z)
    with fits.open(path) as hdul:
        fits.HDUList([hdul[0].copy(), hdul["DATA"].copy()]).writeto(tmp_path / "nostat.fits")
    with pytest.raises(ValueError, match=r"nostat\.fits: no variance \(STAT\) extension"):
        preprocess_file(tmp_path / "nostat.fits", Z)


def test_corrupt_and_truncated_files_through_the_streaming_path(tmp_path):
    good = tmp_path / "good.fits"
    write_synthetic(good)
    data = good.read_bytes()
    stat_cut = tmp_path / "statcut.fits"  # headers intact, the STAT data ends early
    stat_cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(ValueError, match=r"statcut\.fits: truncated"):
        preprocess_file(stat_cut, Z)
    broken = tmp_path / "broken.fits"  # a FITS start, then a header card that is not one
    broken.write_bytes(data[:80] + b"NAXIS   = this is not a value" + b" " * 51 + data[160:2880])
    with pytest.raises(ValueError, match=r"broken\.fits: no DATA extension"):
        preprocess_file(broken, Z)
    flat = tmp_path / "flat.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), np.float32), name="DATA")]).writeto(flat)
    with pytest.raises(ValueError, match=r"flat\.fits: DATA must be a 3-D cube"):
        preprocess_file(flat, Z)
