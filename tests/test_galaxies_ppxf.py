"""pPXF baseline (two-fit PHANGS recipe), the model/pPXF comparison products and the speed benchmark.

The fits run on a toy template grid (2 [M/H] x 3 ages, analytic spectra with age- and metallicity-
sensitive absorption lines and an age-dependent continuum) on the paper's wavelength grid, so every
fit takes a fraction of a second. A bin is made from known light weights, A_V (O'Donnell 1994), a
velocity and a dispersion, with Gaussian noise at S/N 50 per pixel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.wcs import WCS

from specfm.galaxies.compare import (compare_maps, per_bin, plot_map_panels, plot_residual_histograms,
                                     plot_running_differences, running_stats)
from specfm.galaxies.cube import Bins
from specfm.galaxies.maps import Maps, read_maps
from specfm.galaxies.ppxf_fit import QUANTITIES, fit_bins, prepare, write_ppxf_maps
from specfm.galaxies.spectra import attenuate, emission_mask, paper_wavelength_grid
from specfm.galaxies.template_table import FORMAT as TEMPLATE_FORMAT
from specfm.galaxies.template_table import TemplateGrid

C_KMS = 299792.458
LOG_AGE = np.array([8.5, 9.3, 10.0])
MH = np.array([-0.4, 0.1])
LINE_SIGMA = 3.0  # A, intrinsic width of the toy lines (sampled by the 2.48 A pixels)
_rng = np.random.default_rng(20240607)
LINES_YOUNG = np.sort(_rng.uniform(4800, 7050, 10))  # deep in young populations
LINES_OLD = np.sort(_rng.uniform(4800, 7050, 10))  # deep in old populations
LINES_METAL = np.sort(_rng.uniform(4800, 7050, 10))  # deep at high [M/H]
DEPTH_YOUNG = (0.45, 0.25, 0.08)
DEPTH_OLD = (0.05, 0.2, 0.4)
DEPTH_METAL = (0.1, 0.35)
SLOPE = (-1.2, -0.2, 0.7)  # continuum power-law index in lambda per age


def toy_flux(wave, iz, ia, *, vel=0.0, sigma=0.0):
    """Analytic toy SSP: power-law continuum times Gaussian absorption lines (EW kept when broadened)."""
    cont = (wave / 5500.0) ** SLOPE[ia]
    absorb = np.zeros_like(wave)
    for centres, depth in ((LINES_YOUNG, DEPTH_YOUNG[ia]), (LINES_OLD, DEPTH_OLD[ia]), (LINES_METAL, DEPTH_METAL[iz])):
        for lam in centres:
            c = lam * (1 + vel / C_KMS)
            s = np.hypot(LINE_SIGMA, sigma * c / C_KMS)
            absorb += depth * LINE_SIGMA / s * np.exp(-0.5 * ((wave - c) / s) ** 2)
    return cont * np.clip(1.0 - absorb, 0.05, None)


def toy_templates() -> TemplateGrid:
    wave = paper_wavelength_grid()
    mask = emission_mask(wave)
    flux = np.array([[toy_flux(wave, iz, ia) for ia in range(LOG_AGE.size)] for iz in range(MH.size)])
    norm = np.median(flux[..., mask], axis=-1)
    return TemplateGrid(wave=wave, flux=(flux / norm[..., None]).astype(np.float32), log_age=LOG_AGE, mh=MH,
                        mask=mask, norm=norm, meta={"format": TEMPLATE_FORMAT, "toy": True})


def toy_spectrum(templates, weights, av, *, vel=60.0, sigma=80.0, snr=50.0, scale=1e3, rng=None):
    """(spectrum, noise) of the light-weight mix ``weights`` [2, 3] of the median-normalised toy templates."""
    wave = templates.wave
    spec = np.zeros_like(wave)
    for iz in range(MH.size):
        for ia in range(LOG_AGE.size):
            if weights[iz, ia]:
                spec += weights[iz, ia] * toy_flux(wave, iz, ia, vel=vel, sigma=sigma) / templates.norm[iz, ia]
    spec = scale * attenuate(wave, spec, av)
    noise = spec / snr
    rng = rng or np.random.default_rng(0)
    return spec + noise * rng.standard_normal(wave.size), noise


def celestial_header(ny, nx) -> str:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.crval = [184.70675, 14.41641]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w.to_header().tostring(sep="\n")


def make_bins(templates, spectra, noises, bin_id) -> Bins:
    spectra, noises = np.asarray(spectra, np.float32), np.asarray(noises, np.float32)
    mask = templates.mask
    with np.errstate(all="ignore"):
        norm = np.median(spectra[:, mask], axis=1)
    n = spectra.shape[0]
    return Bins(wave=templates.wave, mask=mask, spectra_full=spectra, noise_full=noises,
                spectra=(spectra[:, mask] / norm[:, None]).astype(np.float32), norm=norm.astype(float),
                snr=np.full(n, 50.0), bin_id=np.asarray(bin_id, np.int32), xbar=np.zeros(n), ybar=np.zeros(n),
                n_spaxels=np.ones(n, np.int32), n_filtered=np.zeros(n, np.int32),
                wcs_header=celestial_header(*np.shape(bin_id)), meta={})


TRUE_WEIGHTS = [
    np.array([[0.6, 0.0, 0.0], [0.0, 0.0, 0.4]]),  # young metal-poor + old metal-rich
    np.array([[0.0, 0.3, 0.0], [0.0, 0.7, 0.0]]),  # intermediate age
]
TRUE_AV = [0.3, 1.0]


@pytest.fixture(scope="module")
def toy():
    templates = toy_templates()
    rng = np.random.default_rng(11)
    pairs = [toy_spectrum(templates, w, av, rng=rng) for w, av in zip(TRUE_WEIGHTS, TRUE_AV)]
    spectra = [p[0] for p in pairs] + [np.full(templates.wave.size, np.nan)]  # bin 2: all NaN
    noises = [p[1] for p in pairs] + [np.full(templates.wave.size, np.nan)]
    bins = make_bins(templates, spectra, noises, [[0, 0, 1], [2, -1, 1]])
    result = fit_bins(bins, templates, progress=False)
    return {"templates": templates, "bins": bins, "result": result}


def test_log_rebinning_setup_is_consistent():
    templates = toy_templates()
    s = prepare(templates, velscale_ratio=2)
    assert s.lam.size == templates.wave.size  # the galaxy keeps its 948 pixels
    dlam = (templates.wave[-1] - templates.wave[0]) / 947
    edges = templates.wave[[0, -1]] + np.array([-0.5, 0.5]) * dlam
    assert s.velscale == pytest.approx(C_KMS * np.log(edges[1] / edges[0]) / 948, rel=1e-9)  # 127.3 km/s
    assert s.templates.shape[0] in (2 * 948 - 1, 2 * 948)  # velscale / 2 for the templates
    assert abs(s.vsyst) < 0.05 * s.velscale  # same rest-frame start: no systemic offset
    # goodpixels: no log pixel touching a Table 2 pixel, and the velocity margins at both ends
    good_lam = s.lam[s.good_base]
    for lo, hi in [(4853.64, 4866.06), (6546.85, 6589.05)]:
        assert not np.any((good_lam > lo - 2.5) & (good_lam < hi + 2.5))
    assert good_lam[0] > templates.wave[0] * np.exp(1000 / C_KMS) - 1.3
    assert good_lam[-1] < templates.wave[-1] * np.exp(-1000 / C_KMS) + 1.3
    assert 800 < s.good_base.sum() < 876


def test_fit_bins_recovers_av_age_and_kinematics(toy):
    r, templates = toy["result"], toy["templates"]
    for i, (w, av) in enumerate(zip(TRUE_WEIGHTS, TRUE_AV)):
        assert r["OK"][i]
        true_age = w.sum(axis=0) @ LOG_AGE
        true_mh = w.sum(axis=1) @ MH
        # tolerances ~5-6x the scatter over 40 noise realisations of these two bins (std: A_V 0.017 mag,
        # log age 0.014 dex, [M/H] 0.011 dex, V 2.8 km/s, sigma 5.5 km/s with a +3 km/s bias)
        assert r["AV"][i] == pytest.approx(av, abs=0.1)
        assert r["LOGAGE"][i] == pytest.approx(true_age, abs=0.08)
        assert r["MH"][i] == pytest.approx(true_mh, abs=0.06)
        assert r["VEL"][i] == pytest.approx(60.0, abs=15.0)
        assert r["SIGMA"][i] == pytest.approx(80.0, abs=30.0)
        assert r["weights"][i].sum() == pytest.approx(1.0)
        assert np.all(r["weights"][i] >= 0)
        # residuals in units of the median-normalised spectrum: mean ~0, std ~0.015 (1/SNR = 0.02 per
        # linear pixel, averaged down by the log-rebinning); chi2/DOF ~1 with the propagated variance
        assert abs(r["RESID_MEAN"][i]) < 0.003
        assert 0.01 < r["RESID_STD"][i] < 0.025
        assert 0.6 < r["CHI2"][i] < 1.5
        assert r["SECONDS"][i] > 0
    assert r["weights"].shape == (3, 2, 3)


def test_failed_bin_gets_nans_and_is_counted(toy, caplog):
    r = toy["result"]
    assert not r["OK"][2]
    for q in QUANTITIES[:-1]:
        assert np.isnan(r[q][2])
    assert np.all(np.isnan(r["weights"][2]))
    assert r["meta"]["n_failed"] == 1 and r["meta"]["failed_bins"] == [2]
    assert "invalid" in r["meta"]["errors"]["2"]
    assert np.isfinite(r["meta"]["seconds_per_spectrum"])


def test_ppxf_maps_round_trip_and_compare_with_truth(toy, tmp_path):
    bins, templates, r = toy["bins"], toy["templates"], toy["result"]
    path = tmp_path / "ppxf_maps.fits"
    write_ppxf_maps(path, bins, templates, r, meta={"galaxy": "toy"})
    maps = read_maps(path)
    assert set(QUANTITIES) <= set(maps.images)
    np.testing.assert_allclose(per_bin(maps, "AV"), r["AV"].astype(np.float32), equal_nan=True)
    assert maps.grids.shape == (3, 2, 3)
    truth = {"LOGAGE": np.array([w.sum(axis=0) @ LOG_AGE for w in TRUE_WEIGHTS] + [9.0]),
             "MH": np.array([w.sum(axis=1) @ MH for w in TRUE_WEIGHTS] + [0.0]),
             "AV": np.array(TRUE_AV + [0.5])}
    m = compare_maps(maps, maps, truth, timing={"model": 1.0, "ppxf": 1.0})
    assert m["ppxf"]["n_failed"] == 1
    assert m["ppxf"]["vs_truth"]["AV"]["n"] == 2
    assert abs(m["ppxf"]["vs_truth"]["AV"]["bias"]) < 0.05


# ------------------------------------------------------------------------------- compare_maps by hand


def hand_maps():
    """4 bins on a 2 x 3 grid; the model is truth + [0.1, 0.2, 0.3, -0.2], pPXF truth - 0.1, in each quantity."""
    bin_id = np.array([[0, 0, 1], [2, 3, -1]], np.int32)
    truth = {"LOGAGE": np.array([9.0, 9.5, 10.0, 8.5]), "MH": np.array([0.0, -0.2, 0.1, -0.5]),
             "AV": np.array([0.2, 0.5, 1.0, 0.0])}
    d_model = np.array([0.1, 0.2, 0.3, -0.2])

    def maps(offset):
        images = {q: np.where(bin_id >= 0, (truth[q] + offset)[bin_id], np.nan).astype(np.float32) for q in truth}
        images["RESID_MEAN"] = np.where(bin_id >= 0, np.array([0.01, -0.01, 0.01, -0.01])[bin_id], np.nan)
        images["RESID_STD"] = np.where(bin_id >= 0, 0.03, np.nan)
        return Maps(images=images, units={}, bin_id=bin_id, wcs_header=celestial_header(2, 3))

    return maps(d_model), maps(-0.1), truth


def test_compare_maps_by_hand():
    model, ppxf, truth = hand_maps()
    m = compare_maps(model, ppxf, truth, timing={"model": 0.004, "ppxf": 11.0})
    assert m["reference"] == "truth" and m["n_bins"] == 4
    scatter = np.sqrt((0.0**2 + 0.1**2 + 0.2**2 + 0.3**2) / 4)  # deviations of d_model from its mean 0.1
    for q in ("LOGAGE", "MH", "AV"):
        assert m["model"]["vs_truth"][q]["bias"] == pytest.approx(0.1, abs=1e-6)
        assert m["model"]["vs_truth"][q]["scatter"] == pytest.approx(scatter, abs=1e-6)
        assert m["ppxf"]["vs_truth"][q]["bias"] == pytest.approx(-0.1, abs=1e-6)
        assert m["ppxf"]["vs_truth"][q]["scatter"] == pytest.approx(0.0, abs=1e-6)
        assert m["model_vs_ppxf"][q]["bias"] == pytest.approx(0.2, abs=1e-6)
        assert m["model_vs_ppxf"][q]["scatter"] == pytest.approx(scatter, abs=1e-6)
        assert m["model_vs_ppxf"][q]["n"] == 4
    assert m["model"]["resid_mean"] == pytest.approx(0.0, abs=1e-9)
    assert m["model"]["resid_std"] == pytest.approx(np.sqrt(0.03**2 + 0.01**2))
    assert m["speed_ratio"] == pytest.approx(2750.0)
    assert m["ppxf"]["n_failed"] == 0
    json.dumps(m)  # JSON-ready

    real = compare_maps(model, ppxf, None, timing={"model_seconds_per_spectrum": 0.01,
                                                   "ppxf_seconds_per_spectrum": 5.0})
    assert real["reference"] == "ppxf" and real["model"]["vs_truth"] is None
    assert real["model_vs_ppxf"]["AV"]["bias"] == pytest.approx(0.2, abs=1e-6)
    assert real["speed_ratio"] == pytest.approx(500.0)

    other = Maps(images=ppxf.images, units={}, bin_id=np.zeros((2, 3), np.int32), wcs_header=ppxf.wcs_header)
    with pytest.raises(ValueError, match="BIN_ID"):
        compare_maps(model, other, None)


def test_running_stats():
    x = np.repeat(np.arange(4.0), 50)
    y = np.tile(np.linspace(-1, 1, 50), 4) + x
    cx, med, p16, p84, n = running_stats(x, y, n_bins=4)
    np.testing.assert_allclose(med, np.arange(4.0), atol=1e-9)
    assert np.all(p16 < med) and np.all(p84 > med) and np.all(n == 50)


def test_plots_write_deterministic_pngs(tmp_path):
    model, ppxf, truth = hand_maps()
    for name, call in {
        "panels.png": lambda p: plot_map_panels(model, ppxf, p),
        "panels_truth.png": lambda p: plot_map_panels(model, ppxf, p, truth=truth),
        "running.png": lambda p: plot_running_differences(model, ppxf, p, truth=truth),
        "running_real.png": lambda p: plot_running_differences(model, ppxf, p),
        "resid.png": lambda p: plot_residual_histograms(model, ppxf, p),
    }.items():
        call(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plot_map_panels(model, ppxf, tmp_path / "again.png", truth=truth)
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "panels_truth.png").read_bytes()


# -------------------------------------------------------------------------------------- benchmark


def test_benchmark_cli_writes_the_speed_record(toy, tmp_path):
    import torch  # a hard dependency: never skip for want of it
    from specfm.galaxies import bench
    from specfm.galaxies.cube import write_bins
    from specfm.galaxies.model import GalProTE, GalProTEConfig
    from specfm.galaxies.template_table import write_template_table
    from specfm.galaxies.training import MODEL_FORMAT
    from specfm.train import save_final

    templates, bins = toy["templates"], toy["bins"]
    torch.manual_seed(0)
    cfg = GalProTEConfig(n_z=2, n_age=3, kernels=(11,), channels=6, n_heads=3, d_attn=8, pool=8)
    model = GalProTE(cfg, LOG_AGE, MH, np.round(np.linspace(0, 1.5, 16), 12))
    save_final(model, tmp_path / "model.pt", {"format": MODEL_FORMAT, "config": cfg.to_dict(),
                                               "log_age": LOG_AGE.tolist(), "mh": MH.tolist(),
                                               "av_levels": np.linspace(0, 1.5, 16).tolist()})
    write_template_table(templates, tmp_path / "templates.h5")
    write_bins(bench.subset_bins(bins, [0, 1]), tmp_path / "bins.h5")
    out = tmp_path / "bench" / "speed.json"
    (tmp_path / "bench").mkdir()
    assert bench.main(["--model", str(tmp_path / "model.pt"), "--templates", str(tmp_path / "templates.h5"),
                       "--bins", str(tmp_path / "bins.h5"), "--out", str(out), "--n-ppxf", "2",
                       "--batch-size", "8", "--n-model", "16", "--variants", "eager", "onnx"]) == 0
    rec = json.loads(out.read_text())
    assert rec["model"]["backend"] == "openvino" and rec["model_eager"]["n_spectra"] == 16  # the default path
    assert rec["speed_ratio_eager"] == pytest.approx(rec["ppxf_seconds_per_spectrum"] /
                                                     rec["model_eager"]["seconds_per_spectrum"])
    assert set(rec["variants"]) == {"eager", "onnx"} and rec["variants"]["onnx"]["accuracy"]["within_tolerance"]
    assert rec["model"]["n_spectra"] == 16 and rec["ppxf"]["n_spectra"] == 2 and rec["ppxf"]["n_failed"] == 0
    assert rec["ppxf"]["blas_threads"] == 1
    assert rec["speed_ratio"] == pytest.approx(rec["ppxf_seconds_per_spectrum"] / rec["model_seconds_per_spectrum"])
    assert rec["projection"]["model_seconds"] == pytest.approx(65000 * rec["model_seconds_per_spectrum"])
    assert rec["machine"]["torch_threads"] >= 1 and rec["machine"]["cpus_available"] >= 1
    assert set(rec["inputs"]) == {"model", "templates", "bins"}


def test_threads_per_job_never_oversubscribes():
    from specfm.galaxies.ppxf_fit import threads_per_job

    for cores in (1, 2, 3, 16):
        for n_jobs in (1, 2, 3, 8, 32):
            t = threads_per_job(n_jobs, cores)
            assert t >= 1 and (n_jobs * t <= cores or t == 1)
    assert threads_per_job(2, 16) == 8 and threads_per_job(3, 2) == 1


def test_ppxf_workers_are_limited_to_their_blas_threads():
    """A forked worker inherits the parent's BLAS pool size (here raised to 3 on purpose); the
    pool's initializer must bring it down to the threads it was given."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from specfm.galaxies.ppxf_fit import _blas_threads, prepare, worker_pool

    if not any(p["user_api"] == "blas" for p in threadpool_info()):
        pytest.fail("no BLAS library found by threadpoolctl: numpy should always bring one")
    setup = prepare(toy_templates())
    with threadpool_limits(limits=3):
        assert _blas_threads() == 3  # what an unlimited worker would inherit
        with worker_pool(setup, 2, threads=1) as pool:
            seen = [f.result() for f in [pool.submit(_blas_threads) for _ in range(4)]]
    assert seen == [1, 1, 1, 1]
