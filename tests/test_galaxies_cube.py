"""IFU cubes -> binned spectra -> maps (specfm.galaxies: mock_cube, cube, maps).

Fast: the mock is built from six tiny fake SSP files (tests/fakes.py) on a 6 x 9 spaxel grid, and the
other cubes are small synthetic arrays whose expected results are known by construction.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from specfm.galaxies.cube import preprocess, read_bins, write_bins
from specfm.galaxies.cube_io import Cube, read_cube, write_cube
from specfm.galaxies.maps import UNITS, read_maps, write_maps
from specfm.galaxies.mock_cube import make_mock_cube, read_truth, truth_per_bin
from specfm.galaxies.preprocessing import rebin_matrix
from specfm.galaxies.spectra import paper_wavelength_grid, resample

from fakes import FAKE_AGES, FAKE_MH, fake_name, gaussian, write_fake_ssp

Z = 0.008
CUBE_LOG = "specfm.galaxies.cube"


def celestial(ny, nx, ra=184.70675, dec=14.41641, scale=0.2):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.crval = [ra, dec]
    w.wcs.cd = np.array([[-scale / 3600, 0.0], [0.0, scale / 3600]])
    w.wcs.radesys = "ICRS"
    return w


def synthetic_cube(ny=5, nx=4, *, z=Z, start=4750.0, end=7300.0, step=1.25, snr=None, seed=1, lines=()):
    """Flat rest-frame continuum (100 per rest A, so 100/(1+z) observed) + ``lines`` [(rest A, amplitude, sigma)].

    ``snr`` [ny, nx] per 1.25 A pixel (noise drawn); default: S/N 50 everywhere, noiseless data.
    """
    wave = start + step * np.arange(int(round((end - start) / step)) + 1)
    rest = wave / (1 + z)
    prof = np.full(wave.size, 100.0)
    for lam, amp, sig in lines:
        prof += amp * gaussian(rest, lam, sig * 2.3548)
    flux = np.broadcast_to((prof / (1 + z))[:, None, None], (wave.size, ny, nx)).copy()
    noisy = snr is not None
    snr = np.full((ny, nx), 50.0) if snr is None else np.asarray(snr, float)
    sigma = (100.0 / (1 + z)) / snr
    var = np.broadcast_to(sigma**2, flux.shape).copy()
    if noisy:
        flux += np.random.default_rng(seed).standard_normal(flux.shape) * sigma
    return wave, flux.astype(np.float32), var.astype(np.float32)


def write_synthetic(path, ny=5, nx=4, **kw):
    bunit = kw.pop("bunit", "10**(-20)*erg/s/cm**2/Angstrom")
    wave, flux, var = synthetic_cube(ny, nx, **kw)
    write_cube(path, wave[0], wave[1] - wave[0], flux, var, celestial(ny, nx), bunit=bunit)
    return wave, flux, var


# ---------------------------------------------------------------- the mock cube


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    d = tmp_path_factory.mktemp("mock")
    paths = []
    for age in FAKE_AGES:
        for z, mh in FAKE_MH.items():
            p = d / fake_name(z, age)
            write_fake_ssp(p, mh, float(age), crval=4600.0, n=5400)  # 4600-9459 A
            paths.append(p)
    cube, truth = d / "cube.fits", d / "truth.fits"
    make_mock_cube(paths, cube, truth, shape=(6, 9), seed=3, redshift=Z)
    return {"paths": paths, "cube": cube, "truth": truth, "dir": d}


def test_mock_cube_reads_like_a_phangs_cube(mock, caplog):
    caplog.set_level(logging.INFO, logger=CUBE_LOG)
    with fits.open(mock["cube"]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "DATA", "STAT"]
        assert hdul[0].data is None
        hdr = hdul["DATA"].header
        assert hdr["CTYPE3"] == "AWAV" and hdr["CUNIT3"] == "Angstrom" and hdr["CD3_3"] == 1.25
        assert hdr["BUNIT"] == "10**(-20)*erg/s/cm**2/Angstrom"
        assert hdul["STAT"].header["BUNIT"] == "10**(-40)*erg**2/s**2/cm**4/Angstrom**2"
    cube = read_cube(mock["cube"])
    assert cube.flux.shape == cube.var.shape == (3681, 6, 9)
    assert cube.wave[0] == pytest.approx(4750.0) and cube.wave[-1] == pytest.approx(9350.0)
    assert np.allclose(np.diff(cube.wave), 1.25)
    assert cube.bunit == "10**(-20)*erg/s/cm**2/Angstrom"
    # celestial WCS: 0.2"/px, RA increasing to the left, centre at the reference pixel
    scale = np.abs(np.diag(cube.wcs_celestial.pixel_scale_matrix)) * 3600
    assert scale == pytest.approx([0.2, 0.2])
    centre = cube.wcs_celestial.pixel_to_world(4, 2.5)
    assert centre.ra.deg == pytest.approx(184.70675) and centre.dec.deg == pytest.approx(14.41641)
    # the two NaN planes at each end are masked and counted
    assert np.isnan(cube.flux[:2]).all() and np.isnan(cube.flux[-2:]).all()
    assert np.isfinite(cube.flux[2:-2]).all()
    assert "216 of 198774 pixels masked" in caplog.text
    # with a redshift only the planes the paper grid needs are read
    cropped = read_cube(mock["cube"], redshift=Z)
    assert cropped.flux.shape[0] < 2000
    assert cropped.wave[0] < 4748.13 * (1 + Z) and cropped.wave[-1] > 7101.73 * (1 + Z)


def test_mock_truth_maps_in_range_with_the_cube_wcs(mock):
    truth = read_truth(mock["truth"])
    cube = read_cube(mock["cube"])
    for name in ("LOGAGE", "MH", "AV", "VEL"):
        assert truth.maps[name].shape == (6, 9), name
        assert np.isfinite(truth.maps[name]).all(), name
    ages = np.log10([float(a) * 1e9 for a in FAKE_AGES])
    assert ages.min() <= truth.maps["LOGAGE"].min() and truth.maps["LOGAGE"].max() <= ages.max()
    assert -0.4 <= truth.maps["MH"].min() and truth.maps["MH"].max() <= 0.0
    assert 0.0 <= truth.maps["AV"].min() and truth.maps["AV"].max() <= 1.5
    assert np.abs(truth.maps["VEL"]).max() == pytest.approx(150.0)
    assert truth.maps["VEL"].min() < -100 and truth.maps["VEL"].max() > 100  # a rotating disc
    assert truth.weights.shape == (2, 3, 6, 9)
    assert np.allclose(truth.weights.sum(axis=(0, 1)), 1.0)
    assert truth.units["LOGAGE"] == "log10(yr)" and truth.units["AV"] == "mag"
    yx = np.array([[0, 0], [5, 8], [2, 7]])
    a = truth.wcs.pixel_to_world_values(yx[:, 1], yx[:, 0])
    b = cube.wcs_celestial.pixel_to_world_values(yx[:, 1], yx[:, 0])
    assert np.allclose(a, b, rtol=0, atol=1e-12)
    # S/N falls outward with the exponential disc
    snr = truth.maps["SNR"]
    assert snr[2:4, 3:6].max() == pytest.approx(40.0, rel=1e-3) and snr[0, 0] < snr.max() / 4


def test_mock_is_deterministic(mock, tmp_path):
    make_mock_cube(mock["paths"], tmp_path / "c.fits", tmp_path / "t.fits", shape=(6, 9), seed=3, redshift=Z)
    assert (tmp_path / "c.fits").read_bytes() == mock["cube"].read_bytes()
    assert (tmp_path / "t.fits").read_bytes() == mock["truth"].read_bytes()


def test_mock_preprocess_end_to_end(mock):
    cube = read_cube(mock["cube"], redshift=Z)
    bins = preprocess(cube, Z, target_snr=60.0, min_snr=3.0)
    assert bins.spectra_full.shape == (bins.n_bins, 948) and bins.spectra.shape == (bins.n_bins, 876)
    assert np.isfinite(bins.spectra).all()
    assert np.median(bins.spectra, axis=1) == pytest.approx(1.0, abs=1e-5)
    used = bins.bin_id >= 0
    assert bins.n_spaxels.sum() == used.sum()
    truth = truth_per_bin(read_truth(mock["truth"]), bins.bin_id)
    assert truth["LOGAGE"].shape == (bins.n_bins,)
    assert np.allclose(truth["WEIGHTS"].sum(axis=(1, 2)), 1.0)


# ---------------------------------------------------------------- bad inputs


def test_nan_pixels_are_masked_and_an_all_nan_spaxel_excluded(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CUBE_LOG)
    wave, flux, var = synthetic_cube(5, 4)
    flux[:, 1, 2] = np.nan  # an all-NaN spaxel
    flux[1000:1003, 3, 0] = np.nan  # three NaN pixels inside the paper window
    flux[1500, 0, 1] = np.inf
    var[1200, 4, 3] = -1.0  # negative variance: masked too
    path = tmp_path / "holes.fits"
    write_cube(path, wave[0], 1.25, flux, var, celestial(5, 4))
    cube = read_cube(path, redshift=Z)
    assert np.isnan(cube.flux[:, 1, 2]).all() and np.isnan(cube.var[:, 4, 3]).sum() == 1
    n_planes = cube.flux.shape[0]
    assert f"{n_planes + 5} of {cube.flux.size} pixels masked" in caplog.text
    assert "1 of 20 spaxels have no valid pixel" in caplog.text
    bins = preprocess(cube, Z, target_snr=10.0)
    assert bins.bin_id[1, 2] == -1 and (bins.bin_id >= 0).sum() == 19
    assert bins.meta["counts"]["n_empty"] == 1 and bins.meta["counts"]["n_pixels_interpolated"] == 5
    # the interpolated spaxels are as flat as the others
    assert np.allclose(bins.spectra_full[bins.bin_id[3, 0]], bins.spectra_full[bins.bin_id[0, 0]], rtol=1e-5)


def test_wavelength_range_not_covering_the_rest_window(tmp_path):
    path = tmp_path / "short.fits"
    write_synthetic(path, end=7000.0)  # 7101.7 A rest needs 7158 A observed at z = 0.008
    with pytest.raises(ValueError, match=r"short\.fits.*rest frame") as err:
        read_cube(path, redshift=Z)
    assert "4748.1-7101.7 A" in str(err.value)
    cube = read_cube(path)  # without a redshift it reads, but preprocess refuses
    with pytest.raises(ValueError, match=r"short\.fits"):
        preprocess(cube, Z)
    write_synthetic(tmp_path / "ok.fits", end=7300.0)
    read_cube(tmp_path / "ok.fits", redshift=Z)
    with pytest.raises(ValueError, match=r"ok\.fits.*rest frame"):
        read_cube(tmp_path / "ok.fits", redshift=0.05)  # too red a galaxy for this cube


@pytest.mark.parametrize("bunit", ["adu", "Jy", "erg/s/cm2/A"])  # A = ampere in FITS units
def test_wrong_flux_unit(tmp_path, bunit):
    path = tmp_path / "unit.fits"
    write_synthetic(path, bunit=bunit)
    with pytest.raises(ValueError, match=r"unit\.fits: BUNIT .* not a flux density per unit wavelength"):
        read_cube(path)


def test_corrupt_truncated_and_incomplete_files(tmp_path):
    good = tmp_path / "good.fits"
    write_synthetic(good)
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ValueError, match=r"garbage\.fits: not a readable FITS file"):
        read_cube(garbage)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(ValueError, match=r"cut\.fits: truncated"):
        read_cube(cut)
    nodata = tmp_path / "nodata.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 2, 2), np.float32), name="SCI")]).writeto(nodata)
    with pytest.raises(ValueError, match=r"nodata\.fits: no DATA extension"):
        read_cube(nodata)
    nospec = tmp_path / "nospec.fits"
    with fits.open(good) as hdul:
        for h in hdul[1:]:
            h.header["CTYPE3"] = "PIXEL"  # a linear axis of unknown type: no spectral axis
        hdul.writeto(nospec)
    with pytest.raises(ValueError, match=r"nospec\.fits: DATA has no spectral axis"):
        read_cube(nospec)


# ---------------------------------------------------------------- resampling and binning


def test_rebin_matrix_is_resample():
    rng = np.random.default_rng(0)
    wave_in = 4700 + 1.25 * np.arange(2000) / 1.008
    f = rng.normal(size=(3, wave_in.size))
    w = rebin_matrix(wave_in, paper_wavelength_grid())
    assert np.allclose((w @ f.T).T, resample(wave_in, f, paper_wavelength_grid()), rtol=0, atol=1e-12)
    assert np.allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0)  # a mean: rows sum to 1


def test_deredshift_and_resample_put_lines_at_rest_wavelength(tmp_path):
    lines = [(5500.0, -40.0, 1.5), (6562.8, 300.0, 1.5)]  # an absorption and a bright emission line
    z = 0.02
    path = tmp_path / "lines.fits"
    write_synthetic(path, 2, 3, z=z, start=4800.0, end=7400.0, lines=lines)
    cube = read_cube(path, redshift=z)
    bins = preprocess(cube, z, target_snr=10.0, line_filter=False)  # S/N 70 per px: one spaxel per bin
    assert bins.n_bins == 6 and (bins.n_spaxels == 1).all()
    wave = bins.wave
    spec = bins.spectra_full[0].astype(float)
    assert np.median(spec) == pytest.approx(100.0, rel=1e-4)  # f_rest = f_obs (1 + z)
    for lam, amp, sig in lines:
        sel = np.abs(wave - lam) < 8 * sig
        excess = spec[sel] - 100.0
        centroid = np.sum(wave[sel] * excess) / np.sum(excess)
        assert centroid == pytest.approx(lam, abs=0.03)
        flux = np.sum(excess * np.gradient(wave)[sel])  # flux conserved through W
        assert flux == pytest.approx(amp * sig * np.sqrt(2 * np.pi), rel=2e-3)
    # the bright-line median filter removes H-alpha from spectra_full (not the absorption line)
    filt = preprocess(cube, z, target_snr=10.0)
    f0 = filt.spectra_full[0].astype(float)
    near = np.abs(wave - 6562.8) < 8
    noise = filt.noise_full[0][near]
    assert spec[near].max() > 100 + 40 * noise.max()  # the line was there ...
    assert (f0[near] - 100.0 < 4 * noise).all() and filt.n_filtered[0] > 0  # ... and is gone
    assert np.allclose(f0[np.abs(wave - 5500) < 10], spec[np.abs(wave - 5500) < 10])


def radial_cube(n=20, snr_centre=40.0, snr_scale=4.0, seed=2):
    y, x = np.mgrid[0:n, 0:n]
    r = np.hypot(x - (n - 1) / 2, y - (n - 1) / 2)
    snr = snr_centre * np.exp(-r / snr_scale)
    wave, flux, var = synthetic_cube(n, n, snr=snr, seed=seed)
    return Cube(wave=wave, flux=flux, var=var, wcs_celestial=celestial(n, n), bunit="10**(-20)*erg/s/cm**2/Angstrom",
                path="radial")


@pytest.fixture(scope="module")
def radial_bins():
    return preprocess(radial_cube(), Z, target_snr=30.0, min_snr=3.0)


def test_voronoi_bins_reach_the_target_snr(radial_bins):
    b = radial_bins
    target = 30.0
    multi = b.n_spaxels > 1
    assert multi.sum() >= 10 and (~multi).sum() >= 1  # single spaxels in the centre, bins outside
    assert b.snr.min() >= 0.7 * target
    assert np.mean(b.snr[multi] >= 0.8 * target) >= 0.9
    assert 0.9 * target <= np.median(b.snr[multi]) <= 1.3 * target
    # spaxels below the minimum S/N (3 per 2.48 A pixel: ~2.1 per 1.25 A pixel) are not used
    assert (b.bin_id == -1).sum() > 0 and b.bin_id[10, 10] >= 0 and b.bin_id[0, 0] == -1
    assert set(np.unique(b.bin_id[b.bin_id >= 0])) == set(range(b.n_bins))
    assert np.bincount(b.bin_id[b.bin_id >= 0]).tolist() == b.n_spaxels.tolist()


def test_write_bins_is_deterministic_and_round_trips(radial_bins, tmp_path):
    write_bins(radial_bins, tmp_path / "a.h5")
    write_bins(radial_bins, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    back = read_bins(tmp_path / "a.h5")
    for name in ("spectra_full", "noise_full", "spectra", "norm", "snr", "bin_id", "xbar", "ybar", "mask", "wave"):
        assert np.array_equal(getattr(back, name), getattr(radial_bins, name)), name
    assert back.meta == radial_bins.meta and back.wcs_header == radial_bins.wcs_header
    with pytest.raises(ValueError, match="not a bins file"):
        h5 = tmp_path / "other.h5"
        import h5py

        with h5py.File(h5, "w") as f:
            f["x"] = 1
        read_bins(h5)


# ---------------------------------------------------------------- maps


def test_write_maps_round_trip(radial_bins, tmp_path):
    b = radial_bins
    n = b.n_bins
    rng = np.random.default_rng(0)
    quantities = {
        "LOGAGE": (rng.uniform(8, 10, n), UNITS["LOGAGE"]),
        "MH": (rng.uniform(-1, 0.2, n), UNITS["MH"]),
        "AV": (rng.uniform(0, 1.5, n), UNITS["AV"]),
        "RESID_MEAN": (rng.normal(0, 0.01, n), ""),
        "RESID_STD": (rng.uniform(0.02, 0.05, n), ""),
        "SNR": (b.snr, ""),
    }
    grids = rng.dirichlet(np.ones(12), n).reshape(n, 3, 4).astype(np.float32)
    axes = (np.array([8.0, 8.5, 9.0, 9.5]), np.array([-0.4, 0.0, 0.22]))
    meta = {"specfm_version": "0.1.0", "code_digest": "c" * 64, "inputs": {"cube": "a" * 64, "model": "b" * 64}}
    kw = dict(bin_id=b.bin_id, wcs_header=b.wcs_header, quantities=quantities, grids=grids, grid_axes=axes, meta=meta)
    write_maps(tmp_path / "m1.fits", **kw)
    write_maps(tmp_path / "m2.fits", **kw)
    raw = (tmp_path / "m1.fits").read_bytes()
    assert raw == (tmp_path / "m2.fits").read_bytes()
    assert b"DATE" not in raw and b"CHECKSUM" not in raw

    m = read_maps(tmp_path / "m1.fits")
    assert list(m.images) == list(quantities)
    inside = b.bin_id >= 0
    for name, (values, unit) in quantities.items():
        img = m.images[name]
        assert img.shape == b.bin_id.shape and np.isnan(img[~inside]).all()
        assert np.allclose(img[inside], values[b.bin_id[inside]].astype(np.float32))
        assert m.units[name] == unit
    assert np.array_equal(m.bin_id, b.bin_id)
    assert np.array_equal(m.grids, grids) and np.array_equal(m.log_age, axes[0]) and np.array_equal(m.mh, axes[1])
    assert m.meta["INPUTS CUBE"] == "a" * 64 and m.meta["CODE_DIGEST"] == "c" * 64
    # WCS: every image, read by astropy alone, maps pixels to the cube's sky positions
    cube_wcs = radial_cube().wcs_celestial
    yy, xx = np.mgrid[0:20:3, 0:20:3]
    want = cube_wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
    with fits.open(tmp_path / "m1.fits") as hdul:
        assert hdul[0].data is None
        assert hdul["LOGAGE"].header["BUNIT"] == "log10(yr)" and hdul["AV"].header["BUNIT"] == "mag"
        assert hdul["GRIDS"].header["TDIM2"] == "(4,3)"
        for name in ("LOGAGE", "MH", "AV", "RESID_MEAN", "RESID_STD", "SNR", "BIN_ID"):
            got = WCS(hdul[name].header).pixel_to_world_values(xx.ravel(), yy.ravel())
            assert np.allclose(got, want, rtol=0, atol=1e-12), name
    with pytest.raises(ValueError, match="values for"):
        write_maps(tmp_path / "bad.fits", bin_id=b.bin_id, wcs_header=b.wcs_header,
                   quantities={"LOGAGE": (np.zeros(n - 1), "log10(yr)")})
