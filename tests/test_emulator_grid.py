"""The emulator's grid: continuum normalisation, the HDF5 layout and its reader, splits, domain
filters, and the named errors for bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from specfm.emulator import grid as G
from specfm.emulator.build import finish, repair_pixels
from specfm.emulator.continuum import der_snr_noise, fit_continuum, normalise
from specfm.emulator.miles import read_params

WAVE = np.arange(3900.0, 5100.0, 0.9)


def lines(wave, centres, depth=0.5, sigma=1.0):
    prof = np.ones_like(wave)
    for c in centres:
        prof *= 1 - depth * np.exp(-0.5 * ((wave - c) / sigma) ** 2)
    return prof


def test_a_linear_continuum_with_narrow_lines_is_divided_out_exactly():
    cont = 2.0 + 0.001 * (WAVE - 4000)  # by hand: 2.0 at 4000 A, 3.0 at 5000 A
    flux = cont * lines(WAVE, np.arange(4010, 5000, 40))
    fit = fit_continuum(WAVE, flux, degree=3)
    far = lines(WAVE, np.arange(4010, 5000, 40)) > 0.9999  # pixels away from every line
    assert np.allclose(fit[far], cont[far], rtol=1e-4)
    norm, _ = normalise(WAVE, flux, degree=3)
    assert np.allclose(norm[far], 1.0, atol=1e-4)
    assert norm.min() == pytest.approx(0.5, abs=0.01)  # line depth 0.5 survives


def test_der_snr_recovers_white_noise_on_a_flat_spectrum():
    rng = np.random.default_rng(1)
    f = 1 + 0.01 * rng.standard_normal(20000)
    assert der_snr_noise(f) == pytest.approx(0.01, rel=0.1)  # upper quartile runs: biased low a bit
    assert der_snr_noise(f, quantile=0.0) == pytest.approx(0.01, rel=0.03)


def test_bad_pixels_are_interpolated_over():
    f = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    assert repair_pixels(f, ~np.isfinite(f)).tolist() == [1, 2, 3, 4, 5]


def raw_grid(n=20, labels=None):
    rng = np.random.default_rng(0)
    flux = (1.5 + 0.0005 * (WAVE - 4000))[None] * lines(WAVE, [4300, 4600])[None] * np.ones((n, 1))
    flux = flux * (1 + 0.001 * rng.standard_normal(flux.shape))
    lab = labels if labels is not None else np.column_stack([np.linspace(4000, 6000, n), np.linspace(1, 5, n),
                                                               np.zeros(n)])
    return G.Grid(ids=np.array([f"s{i:03d}" for i in range(n)], dtype=object), labels=lab,
                  label_names=["teff", "logg", "feh"], label_units=["K", "dex", "dex"],
                  wavelength=WAVE.copy(), flux=flux)


def build(raw, **kw):
    args = dict(window=(4000, 5000), margin=50, continuum={"degree": 3}, max_bad_fraction=0.01,
                split={"val": 0.2, "test": 0.2}, error_kind=None, source="test", kind="test")
    return finish(raw, **{**args, **kw})


def test_missing_labels_and_bad_pixels_are_kept_counted_and_excluded(tmp_path):
    raw = raw_grid()
    raw.labels[3, 1] = np.nan
    raw.flux[5, 300:340] = np.nan  # 40 bad pixels of ~1111: more than 1 %
    raw.flux[7, 500] = -1.0  # one bad pixel: repaired, masked, error inf
    g = build(raw)
    assert g.status[3] == "missing_labels" and g.status[5] == "bad_pixels" and g.status[7] == "ok"
    assert g.split[3] == g.split[5] == "excluded"
    assert g.attrs["counts"] == {**g.attrs["counts"], "spectra": 20, "ok": 18, "missing_labels": 1,
                                 "bad_pixels": 1, "repaired_pixels": 1, "excluded": 2}
    px = np.argmin(np.abs(g.wavelength - WAVE[500]))
    assert g.pixel_mask[7, px] and np.isinf(g.flux_error[7, px])
    assert g.wavelength[0] >= 4000 and g.wavelength[-1] <= 5000
    ok = g.status == "ok"
    assert np.median(g.flux[ok]) == pytest.approx(1.0, abs=0.01)  # continuum divided out
    path = tmp_path / "grid.h5"
    G.write(g, path)
    back = G.read(path)
    assert back.ids.tolist() == g.ids.tolist() and back.label_units == ["K", "dex", "dex"]
    assert np.array_equal(back.split, g.split) and back.attrs["counts"]["ok"] == 18
    assert np.allclose(back.flux, g.flux)


def test_the_split_is_a_stable_hash_of_the_id():
    a = G.stable_split(["m0001", "m0002", "m0003"], 0.1, 0.15)
    b = G.stable_split(["m0003", "m0001"], 0.1, 0.15)
    assert a[0] == b[1] and a[2] == b[0]
    big = G.stable_split([f"x{i}" for i in range(20000)], 0.1, 0.15)
    assert (big == "test").mean() == pytest.approx(0.15, abs=0.01)
    assert (big == "val").mean() == pytest.approx(0.10, abs=0.01)


def write_user(path, *, ids=None, labels=None, wave=None, flux=None):
    n, m = 4, 50
    with h5py.File(path, "w") as h5:
        h5["ids"] = np.array(ids if ids is not None else [f"a{i}" for i in range(n)], dtype=object).astype("S")
        lab = h5.create_dataset("labels", data=labels if labels is not None else np.ones((n, 2)))
        lab.attrs["names"], lab.attrs["units"] = ["teff", "logg"], ["K", "dex"]
        h5["wavelength"] = wave if wave is not None else np.linspace(4000, 5000, m)
        h5["flux"] = flux if flux is not None else np.ones((n, m))
    return path


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": np.ones((3, 2))}, "labels has 3 rows but /ids has 4"),
    ({"flux": np.ones((5, 50))}, "different lengths"),
    ({"flux": np.where(np.arange(50) == 7, np.nan, 1.0)[None].repeat(4, 0)}, "NaN/inf flux in 4 spectra"),
    ({"ids": ["a", "b", "a", "c"]}, "duplicated ids"),
    ({"wave": np.r_[np.linspace(4000, 4500, 25), np.linspace(4400, 5000, 25)]}, "not strictly increasing"),
])
def test_bad_user_grids_are_refused_naming_the_file(tmp_path, kwargs, message):
    path = write_user(tmp_path / "user.h5", **kwargs)
    with pytest.raises(G.GridError, match=message) as err:
        G.read(path, require_split=False)
    assert str(path) in str(err.value)


def test_a_good_user_grid_reads_and_builds(tmp_path):
    path = write_user(tmp_path / "user.h5")
    raw = G.read(path, require_split=False)
    g = build(raw, continuum=None, margin=0)
    assert g.flux.shape == (4, 50) and (g.status == "ok").all()


def test_domain_filter_and_training_sizes_fail_clearly():
    g = build(raw_grid(40))
    rows = g.rows("train")
    sel = G.domain_rows(g, rows, {"teff": [4000, 5000]}, "emulator.pretraining.domain")
    assert (g.labels[sel, 0] <= 5000).all() and len(sel) < len(rows)
    with pytest.raises(G.GridError, match="emulator.pretraining.domain: the domain .* selects no spectrum"):
        G.domain_rows(g, rows, {"teff": [9000, 9500]}, "emulator.pretraining.domain")
    with pytest.raises(G.GridError, match="unknown label 'vmic'"):
        G.domain_rows(g, rows, {"vmic": [0, 1]}, "emulator.pretraining.domain")
    with pytest.raises(G.GridError, match="training size 1000 is larger than the training split"):
        G.training_rows(g, 1000, seed=0)
    small, large = G.training_rows(g, 5, seed=3), G.training_rows(g, 10, seed=3)
    assert set(small) <= set(large) and len(G.training_rows(g, "all", 3)) == len(rows)


def test_miles_params_sentinels_become_nan(tmp_path):
    db = tmp_path / "MILES_params.db"
    db.write_text("#MILES  Teff  log g   [Fe/H]\n#s????\n  0001  5000   4.50    -0.10\n"
                  "  0002 99999   9999     9999\n  0003 16905   4.20     0.77\n")
    p = read_params(db)
    assert p["0001"].tolist() == [5000, 4.5, -0.1] and np.isnan(p["0002"]).all()
    assert p["0003"][0] == 16905  # hot stars are real, not the sentinel
    db.write_text("  0001  5000   4.50\n")
    with pytest.raises(G.GridError, match="MILES_params.db:1"):
        read_params(db)
