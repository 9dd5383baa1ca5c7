"""emulator.grid.n_pixels: the log-uniform grid, flux-conserving rebinning when downsampling and
interpolation when upsampling, errors and masks carried along; every number checkable by hand."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.emulator.build import finish
from specfm.emulator.grid import Grid, GridError
from specfm.emulator.resample import is_downsampling, log_grid, resample


def test_the_papers_22315_pixels_are_a_constant_resolving_power_of_1e5():
    w = log_grid([4000, 5000], 22315)
    assert len(w) == 22315 and w[0] == 4000.0 and w[-1] == 5000.0
    step = np.diff(np.log(w))
    assert np.allclose(step, step[0], rtol=1e-6) and step[0] == pytest.approx(1.0e-5, rel=2e-5)  # R = 99,998


def test_aligned_bins_are_the_mean_of_their_pixels_and_the_error_falls_as_sqrt_n():
    wave = np.arange(0.5, 12.0, 1.0)            # 12 native pixels, edges 0, 1, ..., 12
    flux = np.arange(12.0)[None]                # 0, 1, ..., 11
    new = np.array([2.0, 6.0, 10.0])            # 3 pixels of width 4: edges 0, 4, 8, 12
    assert is_downsampling(wave, new)
    f, e, bad = resample(wave, flux, np.full((1, 12), 0.2), np.zeros((1, 12), bool), new, "test")
    assert f[0].tolist() == [1.5, 5.5, 9.5]     # (0+1+2+3)/4, (4+..+7)/4, (8+..+11)/4
    assert np.allclose(e[0], 0.2 / 2)           # sqrt(4 * 0.2^2) / 4
    assert not bad.any()


def test_a_masked_native_pixel_masks_only_the_new_pixel_it_falls_in():
    wave = np.arange(0.5, 12.0, 1.0)
    err = np.full((1, 12), 0.2)
    mask = np.zeros((1, 12), bool)
    mask[0, 5] = True                           # pixel 5.5 lies in the second new pixel (4-8)
    f, e, bad = resample(wave, np.ones((1, 12)), np.where(mask, np.inf, err), mask,
                         np.array([2.0, 6.0, 10.0]), "test")
    assert bad[0].tolist() == [False, True, False] and e[0, 1] == np.inf and np.isfinite(e[0, [0, 2]]).all()
    assert np.allclose(f, 1.0)


def test_upsampling_interpolates_and_combines_the_two_neighbours_errors():
    wave = np.array([1.0, 2.0, 3.0, 4.0])
    new = np.array([1.5, 2.0, 2.5, 3.0, 3.5])   # half-width pixels: upsampling, so interpolation
    assert not is_downsampling(wave, new)
    f, e, bad = resample(wave, np.array([[10.0, 20.0, 30.0, 40.0]]), np.full((1, 4), 1.0),
                         np.zeros((1, 4), bool), new, "test")
    assert f[0].tolist() == [15.0, 20.0, 25.0, 30.0, 35.0]
    s = np.sqrt(0.5)                            # sqrt(0.5^2 + 0.5^2) * 1 half way; 1 on a native pixel
    assert np.allclose(e[0], [s, 1.0, s, 1.0, s])


@pytest.mark.parametrize("native_step, n", [(0.01, 500), (0.9, 22315)])  # PHOENIX-like down, MILES-like up
def test_a_linear_spectrum_stays_linear_with_exact_ends_and_no_nan(native_step, n):
    wave = np.arange(3950.0, 5050.0, native_step)
    line = lambda w: 1.0 + 1e-4 * (w - 4500.0)  # noqa: E731
    new = log_grid([4000, 5000], n)
    f, e, bad = resample(wave, line(wave)[None], np.full((1, len(wave)), 0.01),
                         np.zeros((1, len(wave)), bool), new, "test")
    assert f.shape == (1, n) and np.isfinite(f).all() and np.isfinite(e).all() and not bad.any()
    assert np.abs(f[0] - line(new)).max() < 1e-6


def test_rebinning_needs_native_pixels_past_the_window_edges():
    wave = np.arange(4000.0, 5000.01, 0.01)     # no margin: the first new pixel's edge is outside
    with pytest.raises(GridError, match="raise emulator.grid.margin"):
        resample(wave, np.ones((1, len(wave))), np.ones((1, len(wave))), np.zeros((1, len(wave)), bool),
                 log_grid([4000, 5000], 100), "grid.h5")


def test_finish_with_n_pixels_gives_n_log_uniform_pixels():
    wave = np.arange(3900.0, 5100.0, 0.05)
    flux = (1.0 - 0.5 * np.exp(-0.5 * ((wave - 4500.0) / 0.5) ** 2))[None].repeat(3, 0) * 2.0
    raw = Grid(ids=np.array(["a", "b", "c"], dtype=object), labels=np.ones((3, 1)), label_names=["teff"],
               label_units=["K"], wavelength=wave, flux=flux, flux_error=0.01 * flux)
    g = finish(raw, window=[4000, 5000], margin=50, continuum=None, max_bad_fraction=0.01,
               split={"val": 0.1, "test": 0.15}, error_kind="given", source="test", kind="hdf5", n_pixels=2000)
    assert g.flux.shape == (3, 2000) and g.wavelength[0] == 4000.0 and g.wavelength[-1] == 5000.0
    assert np.isfinite(g.flux).all() and np.isfinite(g.flux_error).all()
    assert g.attrs["sampling"] == "2000 pixels uniform in ln(lambda)"
    # flux conserved: the line's equivalent width (0.5 * 0.5 * sqrt(2 pi) = 0.627 A) survives rebinning
    dw = np.diff(np.r_[g.wavelength, g.wavelength[-1]])
    ew = np.sum((1 - g.flux[0] / 2.0) * dw)
    assert ew == pytest.approx(0.5 * 0.5 * np.sqrt(2 * np.pi), rel=1e-2)
