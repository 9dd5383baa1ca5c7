"""Published PHANGS maps: unit conversions, the reader on fakes in the real MAPS layout, the per-bin
mapping onto our bins, the metrics, and a fake PHANGS galaxy built offline through the workflow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy.io import fits

from fakes import FAKE_AGES, FAKE_MH, OFFLINE_CONFIG, fake_name, offline_workflow, write_fake_ssp
from specfm.galaxies.compare import compare_maps
from specfm.galaxies.maps import Maps
from specfm.galaxies.mock_cube import make_mock_cube, read_truth
from specfm.galaxies.phangs import (
    NoStellarPopulations,
    convert,
    published_per_bin,
    read_published_maps,
    write_phangs_maps,
)
from test_galaxies_cube import celestial

BIN = os.path.dirname(sys.executable)
DR1_EXTRA = ("V_STARS", "FORM_ERR_V_STARS", "SIGMA_STARS", "HA6562_FLUX", "HA6562_FLUX_ERR")


def dr1_extensions(shape, seed=0):
    """Extensions of the public DR1 MAPS layout (kinematics, one line), random but finite."""
    rng = np.random.default_rng(seed)
    units = {"V_STARS": "km/s", "FORM_ERR_V_STARS": "km/s", "SIGMA_STARS": "km/s",
             "HA6562_FLUX": "10**(-20)*erg/s/cm**2", "HA6562_FLUX_ERR": "10**(-20)*erg/s/cm**2"}
    return {e: (rng.normal(size=shape), units[e]) for e in DR1_EXTRA}


def block_bins(shape, size=2):
    """A DAP-like binning: square blocks of ``size`` spaxels."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    nbx = -(-shape[1] // size)
    return (yy // size) * nbx + xx // size


def paint_block_means(img, bin_id):
    ids = bin_id.ravel()
    means = np.bincount(ids, weights=img.ravel()) / np.bincount(ids)
    return means[bin_id]


def write_ssp_maps(path, logage, mh, av, wcs, *, bin_id=None, age_unit="Gyr", ebv=True):
    """Stellar-population extensions as the PHANGS DAP writes them, plus the DR1 ones."""
    age = {"Gyr": 10 ** (logage - 9), "log10(yr)": logage, "yr": 10**logage}[age_unit]
    images = {"AGE_LW": (age, age_unit), "AGE_MW": (age * 1.2, age_unit), "Z_LW": (mh, "dex"), "Z_MW": (mh, "dex")}
    images["EBV_STARS" if ebv else "AV_STARS"] = ((av / 3.1 if ebv else av), "mag")
    write_phangs_maps(path, images, wcs, bin_id=bin_id, extra=dr1_extensions(logage.shape))


# ------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize("unit,values,expected", [
    ("Gyr", [1.0, 10.0], [9.0, 10.0]),
    ("Myr", [100.0], [8.0]),
    ("yr", [3.0e9], [np.log10(3.0e9)]),
    ("log10(Gyr)", [0.5], [9.5]),
    ("log(yr)", [9.25], [9.25]),
    ("dex(yr)", [8.0], [8.0]),
])
def test_age_units(unit, values, expected):
    assert convert("LOGAGE", values, unit, "AGE_LW") == pytest.approx(expected)


def test_ebv_to_av_and_other_units():
    assert convert("AV", [0.1, 0.2], "mag", "EBV_STARS") == pytest.approx([0.31, 0.62])
    assert convert("AV", [0.1], "mag", "EBV_STARS", rv=4.05) == pytest.approx([0.405])
    assert convert("AV", [0.5], "", "AV_STARS") == pytest.approx([0.5])  # A_V itself is not scaled
    assert convert("MH", [-0.3], "", "Z_LW") == pytest.approx([-0.3])


def test_bad_units_are_named():
    with pytest.raises(ValueError, match=r"m\.fits\[AGE_LW\]: no BUNIT"):
        convert("LOGAGE", [1.0], "", "AGE_LW", where="m.fits")
    with pytest.raises(ValueError, match=r"age unit 'fortnight'"):
        convert("LOGAGE", [1.0], "fortnight", "AGE_LW")
    with pytest.raises(ValueError, match=r"metallicity unit 'Zsun'"):
        convert("MH", [1.0], "Zsun", "Z_LW")
    # log10(yr) values declared as yr (9.5 yr) are caught by the range check
    with pytest.raises(ValueError, match=r"outside 6..10.5: the declared unit is probably wrong"):
        convert("LOGAGE", [9.5], "yr", "AGE_LW")
    with pytest.raises(ValueError, match=r"ages <= 0"):
        convert("LOGAGE", [0.0, 1.0], "Gyr", "AGE_LW")


# ----------------------------------------------------------------------------------------- reader


def test_reader_on_the_real_layout(tmp_path):
    shape = (6, 8)
    rng = np.random.default_rng(1)
    logage, mh, av = rng.uniform(8.5, 10.1, shape), rng.uniform(-1, 0.2, shape), rng.uniform(0, 1.2, shape)
    logage[0, 0] = np.nan  # a spaxel outside the DAP's bins
    path = tmp_path / "NGC0000_MAPS_native.fits"
    write_ssp_maps(path, logage, mh, av, celestial(*shape), bin_id=block_bins(shape))
    pub = read_published_maps(path)
    assert set(pub.images) == {"LOGAGE", "MH", "AV"}
    assert np.allclose(pub.images["LOGAGE"], logage, atol=2e-6, equal_nan=True)  # float32 in the file
    assert np.allclose(pub.images["AV"], av, atol=1e-6)
    assert pub.extensions["AV"] == {"extension": "EBV_STARS", "unit": "mag"}
    # the unit of an extension without BUNIT comes from config
    with fits.open(path) as hdul:
        del hdul["AGE_LW"].header["BUNIT"]
        hdul.writeto(tmp_path / "nounit.fits")
    with pytest.raises(ValueError, match=r"nounit\.fits\[AGE_LW\]: no BUNIT"):
        read_published_maps(tmp_path / "nounit.fits")
    got = read_published_maps(tmp_path / "nounit.fits", units={"AGE_LW": "Gyr"})
    assert np.allclose(got.images["LOGAGE"], pub.images["LOGAGE"], equal_nan=True)


def test_dr1_maps_without_stellar_populations_and_corrupt_files(tmp_path):
    shape = (4, 5)
    path = tmp_path / "NGC4254_MAPS_native.fits"
    write_phangs_maps(path, dr1_extensions(shape), celestial(*shape), bin_id=block_bins(shape))
    with pytest.raises(NoStellarPopulations, match=r"NGC4254_MAPS_native\.fits: no stellar-population map.*V_STARS"):
        read_published_maps(path)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a fits file" * 100)
    with pytest.raises(ValueError, match=r"bad\.fits: not a readable FITS file"):
        read_published_maps(bad)


# --------------------------------------------------------------------------------- per bin, metrics


def our_maps(bin_id, wcs, values):
    images = {q: np.where(bin_id >= 0, np.asarray(v)[np.maximum(bin_id, 0)], np.nan) for q, v in values.items()}
    return Maps(images=images, units={}, bin_id=bin_id.astype(np.int32),
                wcs_header=wcs.to_header().tostring(sep="\n"))


def test_published_per_bin_same_grid_and_shifted_grid(tmp_path):
    shape = (4, 6)
    logage = np.arange(24, dtype=float).reshape(shape) * 0.05 + 8.5
    mh, av = np.zeros(shape), np.full(shape, 0.31)
    path = tmp_path / "m.fits"
    write_ssp_maps(path, logage, mh, av, celestial(*shape), age_unit="log10(yr)")
    pub = read_published_maps(path)
    ours = np.array([[0, 0, 1, 1, -1, -1]] * 4)
    maps = our_maps(ours, celestial(*shape), {"LOGAGE": [0, 0]})
    per = published_per_bin(pub, maps)
    assert per["LOGAGE"] == pytest.approx([logage[:, :2].mean(), logage[:, 2:4].mean()], abs=1e-6)
    assert per["AV"] == pytest.approx([0.31, 0.31], abs=1e-6)
    # our grid one spaxel to the east (smaller x in the published grid): sampled through the WCSs
    w = celestial(*shape)
    w.wcs.crpix = [w.wcs.crpix[0] - 1, w.wcs.crpix[1]]
    shifted = published_per_bin(pub, our_maps(ours, w, {"LOGAGE": [0, 0]}))
    assert shifted["LOGAGE"][1] == pytest.approx(logage[:, 3:5].mean(), abs=1e-6)
    assert shifted["LOGAGE"][0] == pytest.approx(logage[:, 1:3].mean(), abs=1e-6)


def test_metrics_with_published_maps():
    shape = (2, 3)
    bin_id = np.arange(6).reshape(shape)
    rng = np.random.default_rng(4)
    model = {q: rng.normal(size=6) + 9 for q in ("LOGAGE", "MH", "AV")}
    ppxf = {q: v - 0.2 for q, v in model.items()}
    m = our_maps(bin_id, celestial(*shape), model)
    p = our_maps(bin_id, celestial(*shape), ppxf)
    published = {"available": True, "source": "x.fits", "values": {"LOGAGE": model["LOGAGE"] - 0.1,
                                                                   "AV": model["AV"] + 0.05}}
    out = compare_maps(m, p, published=published)
    block = out["published"]
    assert block["available"] and block["source"] == "x.fits" and "values" not in block
    assert set(block["model_vs_published"]) == {"LOGAGE", "AV"}  # no MH in that file
    assert block["model_vs_published"]["LOGAGE"]["bias"] == pytest.approx(0.1)
    assert block["ppxf_vs_published"]["LOGAGE"]["bias"] == pytest.approx(-0.1)
    assert block["model_vs_published"]["AV"]["bias"] == pytest.approx(-0.05)
    assert block["model_vs_published"]["AV"]["scatter"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(out)
    assert compare_maps(m, p)["published"] is None
    none = compare_maps(m, p, published={"available": False, "reason": "r"})["published"]
    assert none["available"] is False and none["model_vs_published"] == {}


def test_published_maps_of_another_field_are_refused(tmp_path):
    from specfm.galaxies.steps import published_for

    shape = (4, 6)
    write_ssp_maps(tmp_path / "elsewhere.fits", np.full(shape, 9.5), np.zeros(shape), np.zeros(shape),
                   celestial(*shape, ra=10.0, dec=-30.0))
    bin_id = np.arange(24).reshape(shape)
    maps = our_maps(bin_id, celestial(*shape), {"LOGAGE": np.zeros(24)})
    with pytest.raises(ValueError, match=r"elsewhere\.fits: the published maps have no value on any of our bins"):
        published_for(tmp_path / "elsewhere.fits", maps)
    write_ssp_maps(tmp_path / "here.fits", np.full(shape, 9.5), np.zeros(shape), np.zeros(shape), celestial(*shape))
    got = published_for(tmp_path / "here.fits", maps)
    assert got["n_bins_covered"] == {"LOGAGE": 24, "MH": 24, "AV": 24}
    assert got["values"]["LOGAGE"] == pytest.approx(np.full(24, 9.5), abs=1e-6)
    dr1 = tmp_path / "dr1.fits"
    write_phangs_maps(dr1, dr1_extensions(shape), celestial(*shape))
    none = published_for(dr1, maps)
    assert none["available"] is False and "no stellar-population map" in none["reason"] and "values" not in none


# ----------------------------------------------------------------------- through the workflow


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_fake_phangs_galaxy_metrics_built_offline(tmp_path):
    """A fake PHANGS galaxy (real-format cube + MAPS with stellar populations), fetched from file://
    mirrors: the workflow builds its metrics with the published comparison."""
    z = 0.008
    ssp_dir = tmp_path / "ssp"
    ssp_dir.mkdir()
    paths = []
    for age in FAKE_AGES:
        for zname, mh in FAKE_MH.items():
            p = ssp_dir / fake_name(zname, age)
            write_fake_ssp(p, mh, float(age), crval=4600.0, n=5400)
            paths.append(p)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cube = mirror / "NGC9999_PHANGS_DATACUBE_native.fits"
    make_mock_cube(paths, cube, tmp_path / "truth.fits", shape=(8, 8), seed=5, redshift=z)
    truth = read_truth(tmp_path / "truth.fits")
    dap_bins = block_bins((8, 8))
    tm = {q: paint_block_means(truth.maps[q], dap_bins) for q in ("LOGAGE", "MH", "AV")}
    maps = mirror / "NGC9999_MAPS_native.fits"
    write_ssp_maps(maps, tm["LOGAGE"], tm["MH"], tm["AV"], truth.wcs.celestial, bin_id=dap_bins)

    wf = offline_workflow(tmp_path)
    override = yaml.safe_load((wf / OFFLINE_CONFIG).read_text())
    for name, f in (("fake_cube", cube), ("fake_maps", maps)):
        override["sources"][name] = {"kind": "http", "urls": [f.as_uri()], "filename": f.name,
                                     "sha256": sha256(f), "licence": "test fake"}
    tiny = yaml.safe_load((wf / "tests/config/tiny.yaml").read_text())["galaxies"]  # the galaxies part only
    override["galaxies"] = {
        **tiny, "trainset": {"size_factor": 0.5},  # 6 fake SSPs: 0.2 leaves a split empty
        "targets": {"fakephangs": {"kind": "phangs", "cube": "fake_cube", "maps": "fake_maps", "redshift": z}},
        "build": ["fakephangs"], "bench": {"n_ppxf": 2, "target": "fakephangs"},
        "train": {**tiny["train"], "epochs": 1},
    }
    (wf / OFFLINE_CONFIG).write_text(yaml.safe_dump(override))
    metrics_path = "results/galaxies/fakephangs_metrics.json"
    cmd = [f"{BIN}/snakemake", "--cores", "2", metrics_path, "--configfile", "config/config.yaml", OFFLINE_CONFIG]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((wf / metrics_path).read_text())
    assert metrics["reference"] == "ppxf"
    pub = metrics["published"]
    assert pub["available"] and pub["source"] == maps.name and pub["rv"] == 3.1
    assert pub["extensions"]["LOGAGE"] == {"extension": "AGE_LW", "unit": "Gyr"}
    for key in ("model_vs_published", "ppxf_vs_published"):
        assert set(pub[key]) == {"LOGAGE", "MH", "AV"}
        for stats in pub[key].values():
            assert stats["n"] == metrics["n_bins"] and np.isfinite(stats["scatter"])
    # pPXF fitted the same spectra the published maps describe: its ages follow them
    assert abs(pub["ppxf_vs_published"]["LOGAGE"]["bias"]) < 0.5
    assert (wf / "results/galaxies/figures/fakephangs_panels.png").stat().st_size > 10_000
    prov = json.loads((wf / (metrics_path + ".prov.json")).read_text())
    assert "published" in json.dumps(prov["inputs"])
