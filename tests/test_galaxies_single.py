"""A user's own spectra (`specfm galaxies predict`): read in every supported layout, preprocessed exactly
as a cube bin is, predicted into a table; bad files are named errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from specfm import cli
from specfm.galaxies.cube import preprocess_file
from specfm.galaxies.model import GalProTE, GalProTEConfig
from specfm.galaxies.preprocessing import vacuum_to_air
from specfm.galaxies.single import COLUMNS, PPXF_COLUMNS, prepare, read_spectra
from specfm.galaxies.spectra import av_levels, paper_wavelength_grid
from specfm.galaxies.template_table import write_template_table
from specfm.galaxies.training import MODEL_FORMAT
from specfm.train import save_final
from test_galaxies_cube import Z, write_synthetic
from test_galaxies_model import TINY_ARCH, tiny_grid

WAVE_OUT = paper_wavelength_grid()


def test_vacuum_to_air_by_hand():
    # H-alpha and [O III] 5008: vacuum (NIST) -> air (standard tables), to 0.01 A
    np.testing.assert_allclose(vacuum_to_air([6564.61, 5008.24]), [6562.80, 5006.84], atol=0.01)
    from ppxf.ppxf_util import vac_to_air  # the cube path used pPXF's before: same numbers

    w = np.linspace(3600.0, 10400.0, 777)
    np.testing.assert_array_equal(vacuum_to_air(w), vac_to_air(w))


def single_spaxel_bins(tmp_path):
    """A cube whose spaxels all reach the target S/N (so each is its own bin), with lines to filter."""
    path = tmp_path / "cube.fits"
    snr = np.full((2, 2), 30.0)
    wave, flux, var = write_synthetic(path, 2, 2, snr=snr, seed=4,
                                      lines=[(6563.0, 400.0, 2.0), (5007.0, 150.0, 2.0), (5200.0, -20.0, 3.0)])
    bins = preprocess_file(path, Z, target_snr=10.0)
    assert bins.n_bins == 4 and np.all(bins.n_spaxels == 1)
    return bins, wave, flux, var


def test_a_spectrum_is_preprocessed_exactly_like_a_single_spaxel_bin(tmp_path):
    bins, wave, flux, var = single_spaxel_bins(tmp_path)
    b = int(bins.bin_id[1, 0])
    csv = tmp_path / "spaxel.csv"
    Table({"wavelength": wave, "flux": flux[:, 1, 0], "var": var[:, 1, 0]}).write(csv, format="ascii.csv")
    # csv round trip of float32 values: repr keeps every digit, so the spectrum is the cube's bytes
    one = prepare(read_spectra(csv), Z, wave_out=WAVE_OUT)
    for name in ("spectra", "spectra_full", "noise_full", "norm", "snr", "n_filtered"):
        np.testing.assert_array_equal(getattr(one, name)[0], getattr(bins, name)[b], err_msg=name)
    assert bins.n_filtered[b] > 0  # the bright-line filter did something, identically


def write_1d(path, wave, flux, err, *, ctype="AWAV", err_ext="ERROR"):
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CUNIT1"], hdr["CRVAL1"], hdr["CRPIX1"] = ctype, "Angstrom", float(wave[0]), 1.0
    hdr["CDELT1"] = float(wave[1] - wave[0])
    hdus = [fits.PrimaryHDU(np.asarray(flux, np.float32), header=hdr)]
    if err_ext:
        hdus.append(fits.ImageHDU(np.asarray(err, np.float32), name=err_ext))
    fits.HDUList(hdus).writeto(path)


def test_1d_fits_air_and_vacuum(tmp_path):
    wave = 4750.0 + 1.25 * np.arange(2041)
    flux, err = np.full(wave.size, 10.0), np.full(wave.size, 0.5)
    write_1d(tmp_path / "air.fits", wave, flux, err)
    write_1d(tmp_path / "vac.fits", wave, flux, err, ctype="WAVE", err_ext="IVAR")
    air, = read_spectra(tmp_path / "air.fits")
    np.testing.assert_allclose(air.wave, wave, rtol=1e-12)
    np.testing.assert_allclose(air.var, 0.25)
    assert air.frame == "air"
    vac, = read_spectra(tmp_path / "vac.fits")
    assert vac.frame == "vacuum"
    np.testing.assert_allclose(vac.wave, vacuum_to_air(wave), rtol=1e-12)
    np.testing.assert_allclose(vac.var, 2.0)  # IVAR 0.5
    forced, = read_spectra(tmp_path / "air.fits", frame="vacuum")  # the caller knows better
    np.testing.assert_allclose(forced.wave, vacuum_to_air(wave), rtol=1e-12)
    csv = tmp_path / "t.csv"
    Table({"Wave": wave, "FLUX": flux, "err": err}).write(csv, format="ascii.csv")
    t, = read_spectra(csv)
    assert t.frame == "air" and np.allclose(t.wave, wave)
    t, = read_spectra(csv, frame="vacuum")
    np.testing.assert_allclose(t.wave, vacuum_to_air(wave), rtol=1e-12)


def test_bad_spectra_are_named_errors(tmp_path):
    wave = 4750.0 + 1.25 * np.arange(2041)
    flux, err = np.full(wave.size, 10.0), np.full(wave.size, 0.5)
    t = tmp_path / "noerr.csv"
    Table({"wavelength": wave, "flux": flux}).write(t, format="ascii.csv")
    with pytest.raises(ValueError, match=r"noerr.csv: no error column \(looked for error, .*; found wavelength, flux\)"):
        read_spectra(t)
    t = tmp_path / "noflux.csv"
    Table({"wavelength": wave, "f": flux, "error": err}).write(t, format="ascii.csv")
    with pytest.raises(ValueError, match="noflux.csv: no flux column"):
        read_spectra(t)
    t = tmp_path / "nowave.parquet"
    Table({"x": wave, "flux": flux, "error": err}).write(t)
    with pytest.raises(ValueError, match="nowave.parquet: no wavelength column"):
        read_spectra(t)
    t = tmp_path / "nan.csv"
    Table({"wavelength": wave, "flux": np.full(wave.size, np.nan), "error": err}).write(t, format="ascii.csv")
    with pytest.raises(ValueError, match="nan.csv: the flux is NaN, infinite or masked at every pixel"):
        read_spectra(t)
    write_1d(tmp_path / "noext.fits", wave, flux, err, err_ext=None)
    with pytest.raises(ValueError, match="noext.fits: no error extension"):
        read_spectra(tmp_path / "noext.fits")
    write_1d(tmp_path / "ok.fits", wave, flux, err)
    spec = read_spectra(tmp_path / "ok.fits")
    with pytest.raises(ValueError, match=r"ok.fits: observed wavelengths 4749.4-7300.6 A cover 4401.6-6766.1 A in "
                                         r"the rest frame at z = 0.079, not the required 4748.1-7101.7 A"):
        prepare(spec, 0.079, wave_out=WAVE_OUT)
    half = flux.copy()
    half[300:900] = np.nan
    write_1d(tmp_path / "holes.fits", wave, half, err)
    with pytest.raises(ValueError, match=r"holes.fits: 600 of \d+ pixels in the template window are masked"):
        prepare(read_spectra(tmp_path / "holes.fits"), Z, wave_out=WAVE_OUT)
    with pytest.raises(ValueError, match="missing.fits: no such spectrum file"):
        read_spectra(tmp_path / "missing.fits")
    (tmp_path / "junk.fits").write_bytes(b"not fits at all")
    with pytest.raises(ValueError, match="junk.fits: not a readable FITS file or table"):
        read_spectra(tmp_path / "junk.fits")


# ------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """An untrained GalProTE (the tiny test sizes) and the tiny template grid, as the workflow writes them."""
    import torch

    d = tmp_path_factory.mktemp("single_model")
    from dataclasses import replace

    from specfm.galaxies.template_table import FORMAT

    grid = tiny_grid()
    write_template_table(replace(grid, meta={"format": FORMAT}), d / "templates.h5")
    cfg = GalProTEConfig(n_z=grid.flux.shape[0], n_age=grid.flux.shape[1], **TINY_ARCH)
    torch.manual_seed(0)
    model = GalProTE(cfg, grid.log_age, grid.mh, av_levels())
    save_final(model, d / "galprote.pt", {"format": MODEL_FORMAT, "config": cfg.to_dict(),
                                          "log_age": grid.log_age.tolist(), "mh": grid.mh.tolist(),
                                          "av_levels": av_levels().tolist()})
    return d / "galprote.pt", d / "templates.h5"


@pytest.mark.parametrize("suffix", [".parquet", ".fits", ".csv"])
def test_cli_predict_writes_one_row_per_spectrum(tmp_path, model_files, suffix, capsys):
    model, templates = model_files
    wave = 4700.0 + 1.25 * np.arange(2200)
    paths = []
    for i, slope in enumerate((0.0, 0.3)):
        flux = 10.0 * (1 + slope * (wave - 6000.0) / 1000.0)
        write_1d(tmp_path / f"s{i}.fits", wave, flux, np.full(wave.size, 0.2))
        paths.append(str(tmp_path / f"s{i}.fits"))
    out = tmp_path / f"table{suffix}"
    args = ["galaxies", "predict", "--model", str(model), "--templates", str(templates), "--z", "0.004,0.006",
            "--out", str(out), *paths]
    assert cli.main(args + (["--ppxf", "--ppxf-degree", "4"] if suffix == ".fits" else [])) == 0
    assert "wrote" in capsys.readouterr().out
    table = Table.read(out, format="ascii.csv") if suffix == ".csv" else Table.read(out)
    expected = list(COLUMNS) + (list(PPXF_COLUMNS) if suffix == ".fits" else [])
    assert table.colnames == expected and len(table) == 2
    assert list(table["spectrum"]) == ["s0.fits", "s1.fits"]
    np.testing.assert_allclose(table["redshift"], [0.004, 0.006])
    for col in ("log_age", "mh", "av", "resid_std", "snr"):
        assert np.all(np.isfinite(np.asarray(table[col], float))), col
    assert np.all((table["log_age"] >= 8.0) & (table["log_age"] <= 10.1))  # within the tiny grid's ages
    record = json.loads(out.with_name(out.name + ".prov.json").read_text())
    assert record["step"] == "galaxies_predict_spectra" and set(record["inputs"]) >= {"model", "templates"}
    if suffix == ".fits":
        assert fits.getheader(out, "GALPROTE")["TUNIT5"] == "log10(yr)"
        assert np.all(table["ppxf_ok"])


def test_cli_errors_are_one_line_and_exit_2(tmp_path, model_files, capsys):
    model, templates = model_files
    wave = 4700.0 + 1.25 * np.arange(2200)
    write_1d(tmp_path / "s.fits", wave, np.ones(wave.size), np.full(wave.size, 0.1))
    base = ["galaxies", "predict", "--model", str(model), "--templates", str(templates), "--out",
            str(tmp_path / "t.csv")]
    assert cli.main(base + ["--z", "0.3", str(tmp_path / "s.fits")]) == 2
    assert "s.fits: observed wavelengths" in capsys.readouterr().err
    assert cli.main(base + ["--z", "0.1,0.2", str(tmp_path / "s.fits")]) == 2
    assert "2 redshifts for 1 spectra" in capsys.readouterr().err
    assert cli.main(base + ["--z-from-file", str(tmp_path / "s.fits")]) == 2
    assert "s.fits: no redshift in the file" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_sdss_example_table_with_inverse_variance(tmp_path):
    """The layout of the SDSS spectra in the pPXF sdist (the sdss3 target): wavelength, flux,
    inverse_variance columns, a model column to ignore; ivar 0 is a masked pixel."""
    wave = 3800.0 * 10 ** (1e-4 * np.arange(3000))
    ivar = np.full(wave.size, 4.0)
    ivar[100:110] = 0.0
    t = tmp_path / "sdss.fits"
    Table({"flux": np.full(wave.size, 10.0), "best_fit": np.zeros(wave.size), "wavelength": wave,
           "and_mask": np.zeros(wave.size, np.int32), "inverse_variance": ivar}).write(t)
    (spec,) = read_spectra(t, frame="vacuum")
    np.testing.assert_allclose(spec.var[:100], 0.25)
    assert np.isnan(spec.var[100:110]).all() and np.isnan(spec.flux[100:110]).all()
    np.testing.assert_allclose(spec.wave, vacuum_to_air(wave))


def test_source_members_are_checked_and_named(tmp_path):
    import tarfile

    from specfm.fetch.sources import sha256_file, unpack_source
    from specfm.galaxies.steps import source_members

    for name in ("a.fits", "b.fits", "c.txt"):
        (tmp_path / name).write_bytes(name.encode())
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("a.fits", "b.fits", "c.txt"):
            tar.add(tmp_path / name, arcname=f"pkg-1.0/spectra/{name}")
    manifest = tmp_path / "src" / "manifest.json"
    unpack_source(archive, ["*/spectra/*.fits"], manifest, sha256=sha256_file(archive), what="test pin")
    assert [p.name for p in source_members(manifest, ["b.fits", "a.fits"])] == ["b.fits", "a.fits"]
    with pytest.raises(ValueError, match=r"manifest.json: lists 0 files named 'c.txt'"):
        source_members(manifest, ["c.txt"])
    (manifest.parent / "files" / "a.fits").write_bytes(b"changed")
    with pytest.raises(Exception, match="a.fits"):
        source_members(manifest, ["a.fits"])
