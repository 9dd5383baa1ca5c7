"""The FITS user grid (kind fits): the documented layout reads into the same Grid as the hdf5 kind and
builds; each bad input is an error naming the file and the extension."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy.io import fits

from fakes import REPO
from specfm.config import ConfigError, load
from specfm.emulator import grid as G
from specfm.emulator.fits_grid import read_fits_grid
from specfm.emulator.steps import build_grid

N, M = 4, 60


def write_fits_grid(path, *, ids=None, teff=None, wave=None, flux=None, error=True, medium="air"):
    ids = ids if ids is not None else [f"s{i}" for i in range(N)]
    teff = teff if teff is not None else np.linspace(5000, 6000, len(ids))
    labels = fits.BinTableHDU.from_columns([
        fits.Column(name="ID", format="16A", array=np.array(ids)),
        fits.Column(name="TEFF", format="D", unit="K", array=teff),
        fits.Column(name="LOGG", format="D", unit="dex", array=np.full(len(teff), 4.4)),
    ], name="LABELS")
    w = fits.ImageHDU(wave if wave is not None else np.linspace(3900, 5100, M), name="WAVELENGTH")
    w.header["BUNIT"], w.header["MEDIUM"] = "Angstrom", medium
    f = flux if flux is not None else 1e-13 * (1 + np.arange(N)[:, None] * 0.01) * np.ones((N, M))
    hdus = [fits.PrimaryHDU(), labels, w, fits.ImageHDU(f.astype(np.float32), name="FLUX")]
    if error:
        hdus.append(fits.ImageHDU((0.01 * f).astype(np.float32), name="FLUX_ERROR"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_a_good_fits_grid_reads_and_builds(tmp_path):
    path = write_fits_grid(tmp_path / "grid.fits", medium="vacuum")
    raw = read_fits_grid(path)
    assert list(raw.ids) == ["s0", "s1", "s2", "s3"]
    assert raw.label_names == ["teff", "logg"] and raw.label_units == ["K", "dex"]
    assert raw.labels[:, 0].tolist() == np.linspace(5000, 6000, 4).tolist()
    assert raw.flux.shape == (N, M) and raw.flux_error.shape == (N, M) and raw.attrs["medium"] == "vacuum"
    out = tmp_path / "grid.h5"
    counts = build_grid("fits", [str(path)], out, window=[4000, 5000], margin=0, continuum={},
                        max_bad_fraction=0.01, split={"val": 0.1, "test": 0.15}, normalised=True)
    g = G.read(out)
    assert counts["ok"] == N and g.attrs["flux_error_kind"] == "given" and g.attrs["medium"] == "vacuum"
    # normalised: true, so the flux is kept as given and the given errors (1 % of it) are kept too
    assert np.allclose(g.flux_error / g.flux, 0.01, rtol=1e-5)


def _nan_flux():
    f = np.ones((N, M))
    f[2, 7] = np.nan
    return f


@pytest.mark.parametrize("kwargs, message", [
    ({"flux": np.ones((N + 1, M))}, r"FLUX has 5 rows but LABELS has 4 \(labels and fluxes of different lengths\)"),
    ({"wave": np.linspace(3900, 5100, M + 3)}, r"FLUX has shape \(4, 60\), expected \(n_ids=4, n_wave=63\)"),
    ({"flux": _nan_flux()}, r"NaN/inf flux in 1 spectra \(first id 's2'\)"),
    ({"ids": ["a", "b", "a", "c"]}, r"duplicated ids in LABELS.ID: \['a'\]"),
    ({"wave": np.r_[np.linspace(3900, 4500, 30), np.linspace(4400, 5100, 30)]}, "WAVELENGTH is not strictly increasing"),
    ({"medium": "water"}, "WAVELENGTH MEDIUM 'water' is not 'air' or 'vacuum'"),
])
def test_bad_fits_grids_are_refused_naming_the_file(tmp_path, kwargs, message):
    path = write_fits_grid(tmp_path / "bad.fits", **kwargs)
    with pytest.raises(G.GridError, match=message) as err:
        read_fits_grid(path)
    assert str(path) in str(err.value)


def test_a_fits_file_without_the_layout_is_named(tmp_path):
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones(5)).writeto(path)
    with pytest.raises(G.GridError, match=r"plain.fits: no LABELS extension"):
        read_fits_grid(path)
    (tmp_path / "text.fits").write_text("not fits")
    with pytest.raises(G.GridError, match=r"text.fits: not a readable FITS file"):
        read_fits_grid(tmp_path / "text.fits")


@pytest.mark.parametrize("grid, message", [
    ({"kind": "fits"}, "'emulator.grid.path': required for kind 'fits'"),
    ({"kind": "phoenix", "source": "mangadap_wheel"}, "kind phoenix needs an http_grid source, 'mangadap_wheel' is registry"),
    ({"kind": "phoenix", "source": "nowhere"}, "'emulator.grid.source': unknown source 'nowhere'"),
    ({"n_pixels": 5}, "n_pixels"),
])
def test_grid_kinds_need_their_keys(tmp_path, grid, message):
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({"emulator": {"grid": grid}}))
    with pytest.raises(ConfigError, match=message):
        load(REPO / "config/config.yaml", tmp_path / "over.yaml")
    assert load(REPO / "config/config.yaml")["emulator"]["grid"]["n_pixels"] is None  # default: native
