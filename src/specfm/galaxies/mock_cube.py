"""A mock MUSE cube with known stellar-population maps, in the PHANGS-MUSE DR1 file format.

Purpose: score the galaxies stage against truth without PHANGS data. It is deliberately *not* the
training-set generator (``trainset``: 1-5 random SSPs, one A_V of 16 levels, Gaussian noise on
normalised spectra), so it tests generalisation:

* star-formation histories are continuous: a delayed-tau SFH, SFR(t) ~ t exp(-t/tau), started
  ``t_start`` ago, with tau rising smoothly from the centre outwards (inside-out growth), plus a burst
  (Gaussian in log age, 0.08 dex) whose mass fraction follows two logarithmic spiral arms and whose
  age is a smooth random field (log-uniform in ``burst_age_gyr``). The mass formed in each SSP age bin
  (edges at the geometric midpoints) is the exact integral of the SFR over the bin;
* metallicity is continuous: [M/H](R) = mh_center + mh_gradient R + a smooth random field, with an
  age-metallicity relation (older stars poorer by ``amr_slope`` dex per dex of age); the mass at a
  given [M/H] is split linearly between the two bracketing SSP metallicities;
* A_V is a smooth random field drawn independently of everything else, mapped to uniform 0..av_max;
  O'Donnell (1994), R_V = 3.1 screen on the whole stellar spectrum;
* kinematics: a rotating disc (arctan rotation curve, inclination and PA), |v_los| <= ``vmax_kms``
  on top of the systemic ``redshift``; stellar dispersion from ``sigma_center_kms`` to
  ``sigma_outer_kms``; the gas rotates 10 % faster with 25 km/s dispersion;
* resolution: the E-MILES SSPs (2.51 A FWHM, Vazdekis+16) are matched to the MUSE LSF at the
  *observed* wavelength (Bacon+17; in the rest frame FWHM_MUSE(lambda (1+z)) / (1+z)), then broadened
  by the stellar dispersion and shifted by the velocity in ln(lambda) (an exact Fourier-space
  Gaussian, as ppxf does, on a 20 km/s grid), then rebinned (flux-conserving) onto the 1.25 A MUSE
  grid. As in the template pipeline, the pixel boxes of the rebinning steps are not subtracted from
  the target (they add ~0.2 A^2 of variance, ~+7 % FWHM at 5500 A, small next to the 25-70 km/s
  dispersion). Where MUSE is sharper than E-MILES (red of ~6800 A observed) the SSPs keep their own
  resolution;
* emission lines (H-beta, [O III] 4959, 5007, [O I] 6300, [N II] 6548, 6583, H-alpha, [S II] 6716,
  6731) with an H-alpha equivalent width from diffuse gas, the spiral arms and random H II regions,
  radially varying line ratios and a Balmer decrement attenuated by the local A_V;
* noise: the continuum follows an exponential disc, so S/N falls outward; variance = Poisson-like
  term (flux / g) + a sky term (wavelength dependent, higher at sky lines), set so that the central
  spaxel has ``snr_center`` per 1.25 A pixel in 5300-5500 A rest with ``sky_fraction`` of its
  variance from the sky; residuals of sky subtraction at 5577 and 6300 A observed (a common part
  plus a per-spaxel part, in units of the local sky noise); the first and last ``nan_planes``
  wavelength planes are NaN, as in MUSE cubes.

Truth (``out_truth``): image extensions LOGAGE and MH (light-weighted, see below), AV, VEL (stellar
line-of-sight velocity relative to systemic, km/s), SIGMA, LOGAGE_MW (mass-weighted), LIGHT, SNR,
EW_HA, each with the cube's celestial WCS; WEIGHTS [n_Z, n_age, ny, nx] (light fractions) and a
GRID_AXES table. Light weights follow the model's definition: the templates are median-normalised
(median over the Table 2 kept pixels of the 4749-7100 A paper grid at the MUSE LSF, i.e. the
``norm`` of ``template_table.prepare_templates``), so the weight of SSP ij is
w_ij = m_ij norm_ij / sum(m norm), intrinsic (before attenuation, as in ``trainset``). LIGHT is the
median over the kept pixels of the noiseless, attenuated rest-frame stellar spectrum (the cube's
units times (1+z), as ``cube.preprocess`` produces): the weight of a spaxel inside a Voronoi bin
(``truth_per_bin``).

Everything random comes from ``numpy.random.SeedSequence(seed)`` children, one per component, so the
same arguments give the same bytes.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from dust_extinction.parameter_averages import O94
from scipy.ndimage import gaussian_filter
from scipy.special import erf, ndtr

from specfm.io import atomic_path

from .cube_io import FLUX_UNIT_PHANGS, write_cube
from .maps import header_meta, image_hdu, meta_cards, primary_hdu, quiet_wcs
from .spectra import (
    C_KMS,
    FWHM_TO_SIGMA,
    bin_edges,
    emiles_fwhm,
    emission_mask,
    fourier_losvd,
    ln_grid_inside,
    match_lsf,
    muse_lsf_fwhm,
    paper_wavelength_grid,
    resample,
)
from .templates import SSPGrid, read_ssp_grid

log = logging.getLogger(__name__)

FORMAT = "specfm.galaxies.mock_truth/1"
EMISSION_LINES = (  # air wavelengths, A
    ("Hbeta", 4861.33), ("[OIII]4959", 4958.91), ("[OIII]5007", 5006.84), ("[OI]6300", 6300.30),
    ("[NII]6548", 6548.05), ("Halpha", 6562.80), ("[NII]6583", 6583.45), ("[SII]6716", 6716.44),
    ("[SII]6731", 6730.82),
)
SKY_RESIDUAL_LINES = (5577.34, 6300.30)  # [O I] night-sky lines, air, observed frame
SKY_VARIANCE_LINES = ((5577.34, 30.0), (5889.95, 6.0), (5895.92, 4.0), (6300.30, 10.0), (6363.78, 4.0))
TEMPLATE_EDGE = 50.0  # A, as template_table.EDGE_MARGIN: the norms are computed exactly as there
LOG_STEP_KMS = 20.0  # ln-lambda pixel for the velocity shift and dispersion
NORM_WINDOW = (5300.0, 5500.0)  # A rest: where sb_center and snr_center are defined
TRUTH_UNITS = {"LOGAGE": "log10(yr)", "MH": "dex", "AV": "mag", "VEL": "km/s", "SIGMA": "km/s",
               "LOGAGE_MW": "log10(yr)", "SNR": "", "EW_HA": "Angstrom"}


@dataclass(frozen=True)
class MockParams:
    """Every knob of the mock (stored in the cube's and the truth's primary headers)."""

    wave_start: float = 4750.0  # A observed, first pixel centre (MUSE WFM nominal range)
    wave_end: float = 9350.0
    wave_step: float = 1.25
    pixscale_arcsec: float = 0.2
    ra: float = 184.70675  # deg, NGC 4254's centre (only sets the WCS)
    dec: float = 14.41641
    inclination_deg: float = 40.0
    pa_deg: float = 60.0  # major axis, from +x towards +y in pixel space
    disc_scale: float = 0.22  # exponential scale length, fraction of min(ny, nx), deprojected
    sb_center: float = 1000.0  # central continuum, BUNIT (1e-20 erg/s/cm2/A per spaxel), NORM_WINDOW rest
    snr_center: float = 40.0  # central S/N per 1.25 A pixel in NORM_WINDOW
    sky_fraction: float = 0.3  # share of the central variance due to the sky
    vmax_kms: float = 150.0  # max |stellar v_los|
    turnover: float = 0.12  # rotation-curve turnover radius, fraction of min(ny, nx)
    sigma_center_kms: float = 70.0
    sigma_outer_kms: float = 25.0
    av_max: float = 1.5
    field_scale: float = 0.15  # correlation length of the random fields, fraction of min(ny, nx)
    t_start_gyr: float = 12.5
    tau_inner_gyr: float = 1.0
    tau_outer_gyr: float = 8.0
    burst_frac_max: float = 0.05  # mass fraction of the burst on the spiral arms
    burst_age_min_gyr: float = 0.08
    burst_age_max_gyr: float = 2.0
    mh_center: float = 0.15
    mh_gradient: float = -0.6  # dex per unit R / min(ny, nx)
    mh_scatter: float = 0.08
    amr_slope: float = 0.15  # dex of [M/H] lost per dex of age (older = poorer)
    emission: bool = True
    ew_halpha_diffuse: float = 3.0  # A
    ew_halpha_arms: float = 20.0
    ew_halpha_hii: float = 60.0
    sky_residuals: bool = True
    sky_residual_sigma: float = 3.0  # residual peak, in units of the local sky noise per pixel
    nan_planes: int = 2


@dataclass(frozen=True)
class Truth:
    maps: dict  # NAME -> [ny, nx] float
    units: dict  # NAME -> BUNIT
    weights: np.ndarray  # [n_Z, n_age, ny, nx] light fractions (sum 1 per spaxel)
    log_age: np.ndarray  # [n_age]
    mh: np.ndarray  # [n_Z]
    wcs_header: str
    meta: dict = field(default_factory=dict)

    @property
    def wcs(self) -> WCS:
        return quiet_wcs(fits.Header.fromstring(self.wcs_header, sep="\n"))


# ---------------------------------------------------------------------------------------- fields


def _smooth_field(rng: np.random.Generator, shape, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~``scale_px``."""
    g = gaussian_filter(rng.standard_normal(shape), sigma=max(scale_px, 0.5), mode="reflect")
    g -= g.mean()
    sd = g.std()
    return g / sd if sd > 0 else g


def _geometry(ny: int, nx: int, p: MockParams):
    """Deprojected radius (units of min(ny, nx)) and azimuth in the disc plane."""
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    dx, dy = x - (nx - 1) / 2, y - (ny - 1) / 2
    pa, inc = math.radians(p.pa_deg), math.radians(p.inclination_deg)
    xm = dx * math.cos(pa) + dy * math.sin(pa)
    ym = (-dx * math.sin(pa) + dy * math.cos(pa)) / math.cos(inc)
    size = float(min(ny, nx))
    return np.hypot(xm, ym) / size, np.arctan2(ym, xm)


def _fields(shape, p: MockParams, rngs) -> dict:
    ny, nx = shape
    r, theta = _geometry(ny, nx, p)
    scale = p.field_scale * min(ny, nx)
    g_tau, g_mh, g_av, g_burst, g_hii = (_smooth_field(rng, shape, scale) for rng in rngs[:5])
    rel = np.clip(r / 0.7, 0.0, 1.0)
    tau = (p.tau_inner_gyr + (p.tau_outer_gyr - p.tau_inner_gyr) * rel) * np.exp(0.15 * g_tau)
    pitch = math.radians(20.0)
    arm = 0.5 * (1.0 + np.cos(2.0 * theta - np.log(r + 0.05) / math.tan(pitch)))
    arm3 = arm**3 * np.clip(r / 0.15, 0.0, 1.0)  # no arms in the bulge
    burst_frac = p.burst_frac_max * arm3
    lo, hi = math.log10(p.burst_age_min_gyr), math.log10(p.burst_age_max_gyr)
    burst_age = 10.0 ** (lo + (hi - lo) * ndtr(g_burst))
    mh0 = p.mh_center + p.mh_gradient * r + p.mh_scatter * g_mh
    av = p.av_max * ndtr(g_av)  # uniform marginal on 0..av_max, independent draw
    vrot = np.arctan(r / max(p.turnover, 1e-3))
    v = vrot * np.cos(theta)
    v = p.vmax_kms * v / max(np.abs(v).max(), 1e-12)
    sigma = p.sigma_outer_kms + (p.sigma_center_kms - p.sigma_outer_kms) * np.exp(-r / 0.1)
    # H II regions: bright blobs preferentially on the arms.
    rng = rngs[5]
    n_hii = max(1, ny * nx // 60)
    prob = (arm3 + 1e-3).ravel() / (arm3 + 1e-3).sum()
    centres = rng.choice(ny * nx, size=n_hii, replace=False, p=prob)
    amp = rng.uniform(0.3, 1.0, n_hii)
    yy, xx = np.mgrid[0:ny, 0:nx]
    hii = np.zeros(shape)
    for c, a in zip(centres, amp):
        cy, cx = divmod(int(c), nx)
        hii += a * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / 1.2**2)
    ew_ha = p.ew_halpha_diffuse * (1 + 0.2 * g_hii).clip(0.2) + p.ew_halpha_arms * arm3 + p.ew_halpha_hii * hii
    return dict(r=r, theta=theta, tau=tau, burst_frac=burst_frac, burst_age=burst_age, mh0=mh0, av=av,
                vel=v, sigma=sigma, ew_ha=ew_ha, arm=arm3)


def _age_bin_edges(age_gyr: np.ndarray) -> np.ndarray:
    mid = np.sqrt(age_gyr[1:] * age_gyr[:-1])
    return np.concatenate([[0.0], mid, [age_gyr[-1] * math.sqrt(age_gyr[-1] / age_gyr[-2])]])


def sfh_mass(age_gyr, t_start, tau, burst_frac, burst_age) -> np.ndarray:
    """Mass fractions [n, n_age] formed in each SSP age bin (delayed tau + log-normal burst).

    Delayed tau in look-back time a: SFR(a) = u exp(-u / tau), u = t_start - a >= 0; its integral
    F(u) = -tau exp(-u/tau) (u + tau) gives the exact mass in each bin. The burst is a Gaussian in
    log10(age) (sigma 0.08 dex) evaluated on the bin centres.
    """
    age_gyr = np.asarray(age_gyr, float)
    edges = _age_bin_edges(age_gyr)
    tau = np.asarray(tau, float)[:, None]
    t0 = np.broadcast_to(np.asarray(t_start, float), tau.shape[:1])[:, None]
    u_hi = np.clip(t0 - edges[None, :-1], 0.0, None)  # u at the young edge of each bin
    u_lo = np.clip(t0 - edges[None, 1:], 0.0, None)

    def big_f(uu):
        return -tau * np.exp(-uu / tau) * (uu + tau)

    mass = big_f(u_hi) - big_f(u_lo)
    mass /= mass.sum(axis=1, keepdims=True)
    lg = np.log10(age_gyr)[None, :]
    b = np.exp(-0.5 * ((lg - np.log10(np.asarray(burst_age, float))[:, None]) / 0.08) ** 2)
    b /= b.sum(axis=1, keepdims=True)
    f = np.asarray(burst_frac, float)[:, None]
    return (1 - f) * mass + f * b


def _split_metallicity(mass, mh_star, mh_grid) -> np.ndarray:
    """[n, n_age] mass at [n, n_age] metallicities -> [n, n_Z, n_age], linear split between neighbours."""
    mh_star = np.clip(mh_star, mh_grid[0], mh_grid[-1])
    k = np.clip(np.searchsorted(mh_grid, mh_star, side="right") - 1, 0, mh_grid.size - 2)
    frac = (mh_star - mh_grid[k]) / (mh_grid[k + 1] - mh_grid[k])
    out = np.zeros((mass.shape[0], mh_grid.size, mass.shape[1]))
    n_idx, a_idx = np.indices(mass.shape)
    np.add.at(out, (n_idx, k, a_idx), (1 - frac) * mass)
    np.add.at(out, (n_idx, k + 1, a_idx), frac * mass)
    return out


def _template_norms(raw: SSPGrid) -> np.ndarray:
    """[n_Z, n_age] medians of the processed templates, exactly as template_table.prepare_templates."""
    paper = paper_wavelength_grid()
    sel = (raw.wave >= paper[0] - TEMPLATE_EDGE) & (raw.wave <= paper[-1] + TEMPLATE_EDGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MUSE sharper than E-MILES red of ~6800 A
        smooth = match_lsf(raw.wave[sel], raw.flux[..., sel], emiles_fwhm, muse_lsf_fwhm)
    flux = resample(raw.wave[sel], smooth, paper)
    return np.median(flux[..., emission_mask(paper)], axis=-1)


def _line_profiles(out, wave_edges, centre, sigma, flux, half_width=10.0):
    """Add pixel-integrated Gaussians (flux [n] at centre [n], sigma [n] A) to out [n, n_pix] in place."""
    lo = int(np.searchsorted(wave_edges, centre.min() - half_width * sigma.max())) - 1
    hi = int(np.searchsorted(wave_edges, centre.max() + half_width * sigma.max())) + 1
    lo, hi = max(lo, 0), min(hi, wave_edges.size - 1)
    if hi <= lo:
        return
    e = wave_edges[lo : hi + 1][None, :]
    cdf = 0.5 * (1 + erf((e - centre[:, None]) / (math.sqrt(2) * sigma[:, None])))
    out[:, lo:hi] += flux[:, None] * np.diff(cdf, axis=1) / np.diff(e, axis=1)


# ------------------------------------------------------------------------------------------ main


@dataclass(frozen=True)
class _Setup:
    """The settings of one mock build, shared by its passes: the knobs, the spaxel grid, the systemic
    redshift and the random streams (one per component, so that a pass draws the same numbers
    whatever the other passes do)."""

    p: MockParams
    ny: int
    nx: int
    seed: int
    redshift: float
    streams: tuple

    @property
    def zp1(self) -> float:
        return 1.0 + self.redshift

    @property
    def n_spax(self) -> int:
        return self.ny * self.nx

    @property
    def v_edge(self) -> float:
        """km/s: the largest shift plus broadening a spectrum gets, which sets the SSP range and padding."""
        return 1.2 * self.p.vmax_kms + 6 * max(self.p.sigma_center_kms, self.p.sigma_outer_kms, 25.0)


def make_mock_cube(
    ssps: Iterable[str | Path] | SSPGrid,
    out_cube: str | Path,
    out_truth: str | Path,
    *,
    shape: tuple[int, int] = (40, 40),
    seed: int = 0,
    redshift: float = 0.008,
    params: MockParams | None = None,
    **overrides,
) -> Truth:
    """Build the mock cube (PHANGS-MUSE DR1 layout, see ``cube_io.write_cube``) and its truth file.

    ``ssps``: E-MILES SSP files (any complete grid ``read_ssp_grid`` accepts) or an ``SSPGrid`` on a
    uniform wavelength grid covering the rest-frame range of the cube. ``shape`` = (ny, nx).
    ``redshift`` is the systemic z (default 0.008, about NGC 4254's, which puts the 5577 / 6300 A sky
    residuals inside Table 2's two sky regions after de-redshifting). Other knobs: ``MockParams``
    fields as keyword arguments. Returns the truth (also written to ``out_truth``).
    """
    ny, nx = (int(s) for s in shape)
    m = _Setup(p=replace(params or MockParams(), **overrides), ny=ny, nx=nx, seed=seed, redshift=redshift,
               streams=tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(10)))
    raw = _ssp_range(ssps, m)
    ssp_lsf = _lsf_matched(raw, m.zp1)
    f = _fields((ny, nx), m.p, m.streams)
    mass, weights = _populations(raw, f, m.p)
    rest, sb = _rest_spectra(raw.wave, mass, ssp_lsf, f, m.p)
    paper = paper_wavelength_grid()
    on_paper = resample(raw.wave, rest, paper)
    wave_log, spec_log = _kinematics(raw.wave, rest, f, m.v_edge)
    n_obs = int(round((m.p.wave_end - m.p.wave_start) / m.p.wave_step)) + 1
    wave_obs = m.p.wave_start + m.p.wave_step * np.arange(n_obs)
    model = resample(wave_log * m.zp1, spec_log, wave_obs) / m.zp1  # [n, n_obs], f_obs = f_rest / (1+z)
    stellar_only = model.copy()
    if m.p.emission:
        _add_emission_lines(model, wave_obs, on_paper[:, (paper > 6480) & (paper < 6540)], f, m)
    var, sky = _variance(model, wave_obs, sb, m)
    if m.p.sky_residuals:
        _add_sky_residuals(model, wave_obs, sky, m)
    data, stat = _noisy_planes(model, var, m)
    win_o = (wave_obs >= NORM_WINDOW[0] * m.zp1) & (wave_obs <= NORM_WINDOW[1] * m.zp1)
    snr_map = (stellar_only[:, win_o].mean(axis=1) / np.sqrt(var[:, win_o].mean(axis=1))).reshape(ny, nx)
    cel, meta = _celestial_header(m), {"mock": {"seed": int(seed), "redshift": float(redshift), "ny": ny, "nx": nx,
                                                **asdict(m.p)}, "ssp family": raw.family}
    _write_mock_cube(out_cube, data, stat, cel, meta, m.p)
    t_light = np.median(on_paper[:, emission_mask(paper)], axis=1)
    truth = _truth(raw, mass, weights, f, t_light, snr_map, cel, meta, m)
    write_truth(truth, out_truth)
    log.info("mock: %d x %d spaxels x %d planes; LOGAGE %.2f-%.2f, MH %+.2f..%+.2f, AV %.2f-%.2f, "
             "|VEL| <= %.0f km/s, central S/N %.1f per pixel", ny, nx, n_obs, truth.maps["LOGAGE"].min(),
             truth.maps["LOGAGE"].max(), truth.maps["MH"].min(), truth.maps["MH"].max(), f["av"].min(),
             f["av"].max(), np.abs(f["vel"]).max(), snr_map.max())
    return truth


def _ssp_range(ssps, m: _Setup) -> SSPGrid:
    """The SSPs on their native grid, cut to the rest-frame range the observed cube needs (with the
    largest velocity shift and broadening, plus a margin), so that no later pass runs off an edge."""
    p, zp1, v_edge = m.p, m.zp1, m.v_edge
    lo_r = p.wave_start / (zp1 * (1 + v_edge / C_KMS)) - 40.0
    hi_r = p.wave_end / (zp1 * (1 - v_edge / C_KMS)) + 40.0
    if not isinstance(ssps, SSPGrid):
        return read_ssp_grid(ssps, wave_range=(lo_r, hi_r))
    if ssps.wave[0] > lo_r or ssps.wave[-1] < hi_r:
        raise ValueError(
            f"SSP grid covers {ssps.wave[0]:.0f}-{ssps.wave[-1]:.0f} A; the mock needs {lo_r:.0f}-{hi_r:.0f} A"
        )
    sel = (ssps.wave >= lo_r) & (ssps.wave <= hi_r)
    return replace(ssps, wave=ssps.wave[sel], flux=ssps.flux[..., sel])


def _lsf_matched(raw: SSPGrid, zp1: float) -> np.ndarray:
    """The SSPs at MUSE's LSF at the *observed* wavelength, expressed in the rest frame (the pixel
    boxes of the later rebinning steps are not subtracted, as the template pipeline does not
    subtract its own)."""
    target = muse_lsf_fwhm(raw.wave * zp1) / zp1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ssp_lsf = match_lsf(raw.wave, raw.flux, emiles_fwhm, target)
    if caught:
        log.info("mock: %s", str(caught[0].message).replace("match_lsf: ", "LSF: "))
    return ssp_lsf


def _populations(raw: SSPGrid, f: dict, p: MockParams) -> tuple[np.ndarray, np.ndarray]:
    """Mass fractions [n, n_Z, n_age] from each spaxel's SFH and [M/H], and the light weights the
    model is scored against (mass times the templates' median norm, so the model's definition)."""
    log_age = np.log10(raw.age_gyr * 1e9)
    mh_star = f["mh0"].ravel()[:, None] - p.amr_slope * (log_age[None, :] - 9.0)
    mass_age = sfh_mass(raw.age_gyr, p.t_start_gyr, f["tau"].ravel(), f["burst_frac"].ravel(), f["burst_age"].ravel())
    mass = _split_metallicity(mass_age, mh_star, raw.mh)  # [n, n_Z, n_age], sums to 1
    light = mass * _template_norms(raw)[None]
    return mass, light / light.sum(axis=(1, 2), keepdims=True)


def _rest_spectra(wave_r, mass, ssp_lsf, f: dict, p: MockParams) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame stellar spectra on the SSP grid, attenuated, scaled to the exponential disc (the
    surface brightness ``sb`` that makes S/N fall outward); returns (spectra [n, n_wave], sb [n])."""
    n_spax = mass.shape[0]
    a_rel = O94(Rv=3.1)(wave_r * u.AA)
    rest = mass.reshape(n_spax, -1) @ ssp_lsf.reshape(mass.shape[1] * mass.shape[2], -1)
    rest *= 10.0 ** (-0.4 * f["av"].ravel()[:, None] * a_rel[None, :])
    win_r = (wave_r >= NORM_WINDOW[0]) & (wave_r <= NORM_WINDOW[1])
    sb = p.sb_center * np.exp(-f["r"].ravel() / p.disc_scale)
    rest *= (sb / rest[:, win_r].mean(axis=1))[:, None]
    return rest, sb


def _kinematics(wave_r, rest, f: dict, v_edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocity shift and dispersion on a ln(lambda) grid, exact in Fourier space (as ppxf does):
    no interpolation error in the line profiles the model and pPXF are scored on."""
    wave_log = ln_grid_inside(wave_r, LOG_STEP_KMS)
    spec_log = resample(wave_r, rest, wave_log)
    pad = int(np.ceil(v_edge / LOG_STEP_KMS)) + 16
    return wave_log, fourier_losvd(spec_log, f["vel"].ravel(), f["sigma"].ravel(), LOG_STEP_KMS, pad)


def _add_emission_lines(model, wave_obs, ha_window, f: dict, m: _Setup) -> None:
    """Gas lines (1.1 x the stellar rotation, 25 km/s) added to ``model`` in place, in the observed
    frame: H-alpha from the EW map on the local continuum (``ha_window``: the paper-grid pixels next
    to it), the others by radially varying ratios and a Balmer decrement attenuated by the local A_V."""
    p, zp1, av, r = m.p, m.zp1, f["av"].ravel(), f["r"].ravel()
    ha_cont = np.median(ha_window, axis=1) / zp1
    f_ha = f["ew_ha"].ravel() * ha_cont * zp1  # EW in the rest frame -> observed flux
    k = O94(Rv=3.1)(np.array([4861.33, 6562.80]) * u.AA)
    decrement = 2.86 * 10.0 ** (0.4 * av * (k[0] - k[1]))
    n2 = 0.45 - 0.2 * np.clip(r, 0, 1)
    o3 = 0.4 + 1.0 * np.clip(r, 0, 1)
    s2 = 0.15 + 0.1 * np.clip(r, 0, 1)
    hb = f_ha / decrement
    fluxes = {"Hbeta": hb, "[OIII]5007": o3 * hb, "[OIII]4959": o3 * hb / 2.98, "[OI]6300": 0.04 * f_ha,
              "Halpha": f_ha, "[NII]6583": n2 * f_ha, "[NII]6548": n2 * f_ha / 3.05,
              "[SII]6716": s2 * f_ha, "[SII]6731": 0.75 * s2 * f_ha}
    v_gas = 1.1 * f["vel"].ravel()
    for name, lam in EMISSION_LINES:
        centre = lam * zp1 * (1 + v_gas / C_KMS)
        sigma_a = np.sqrt((muse_lsf_fwhm(centre) / FWHM_TO_SIGMA) ** 2 - p.wave_step**2 / 12
                          + (25.0 * centre / C_KMS) ** 2)
        _line_profiles(model, bin_edges(wave_obs), centre, sigma_a, fluxes[name])


@dataclass(frozen=True)
class _Sky:
    shape: np.ndarray  # [n_obs] relative sky variance (rising to the red, peaks at sky lines)
    bg2: float  # sky variance per unit of ``shape``
    lsf_sig: np.ndarray  # [n_obs] MUSE LSF sigma, A


def _variance(model, wave_obs, sb, m: _Setup) -> tuple[np.ndarray, _Sky]:
    """Poisson-like (flux / gain) + sky variance, normalised so that the central spaxel has
    ``snr_center`` in NORM_WINDOW with ``sky_fraction`` of its variance from the sky."""
    p, zp1 = m.p, m.zp1
    sky_shape = 1.0 + 0.6 * (wave_obs - wave_obs[0]) / (wave_obs[-1] - wave_obs[0])
    lsf_sig = muse_lsf_fwhm(wave_obs) / FWHM_TO_SIGMA
    for lam, amp in SKY_VARIANCE_LINES:
        sky_shape = sky_shape + amp * np.exp(-0.5 * ((wave_obs - lam) / lsf_sig) ** 2)
    win_o = (wave_obs >= NORM_WINDOW[0] * zp1) & (wave_obs <= NORM_WINDOW[1] * zp1)
    f_c = model[int(np.argmax(sb)), win_o].mean()
    var_c = (f_c / p.snr_center) ** 2
    bg2 = p.sky_fraction * var_c / sky_shape[win_o].mean()
    inv_gain = (1 - p.sky_fraction) * var_c / f_c
    var = inv_gain * np.clip(model, 0.0, None) + bg2 * sky_shape[None, :]
    return var, _Sky(shape=sky_shape, bg2=bg2, lsf_sig=lsf_sig)


def _add_sky_residuals(model, wave_obs, sky: _Sky, m: _Setup) -> None:
    """Sky-subtraction residuals at the [O I] night-sky lines, added to ``model`` in place: a part
    common to the cube plus one per spaxel, in units of the local sky noise."""
    p, n_spax, rng = m.p, m.n_spax, m.streams[6]
    e_obs = bin_edges(wave_obs)
    for lam in SKY_RESIDUAL_LINES:
        i = int(np.argmin(np.abs(wave_obs - lam)))
        sky_sigma = math.sqrt(sky.bg2 * sky.shape[i])
        peak = sky_sigma * (rng.normal(0.0, p.sky_residual_sigma) + rng.normal(0.0, p.sky_residual_sigma, n_spax))
        s_a = np.full(n_spax, math.sqrt(max(sky.lsf_sig[i] ** 2 - p.wave_step**2 / 12, 1e-6)))
        _line_profiles(model, e_obs, np.full(n_spax, lam), s_a, peak * math.sqrt(2 * math.pi) * s_a)


def _noisy_planes(model, var, m: _Setup) -> tuple[np.ndarray, np.ndarray]:
    """DATA and STAT planes [n_obs, ny, nx] float32: Gaussian noise drawn, the first and last
    ``nan_planes`` planes NaN as in MUSE cubes."""
    n_obs = model.shape[1]
    noise = m.streams[7].standard_normal((m.n_spax, n_obs))
    data = (model + np.sqrt(var) * noise).T.reshape(n_obs, m.ny, m.nx).astype(np.float32)
    stat = var.T.reshape(n_obs, m.ny, m.nx).astype(np.float32)
    if m.p.nan_planes:
        for a in (data, stat):
            a[: m.p.nan_planes] = np.nan
            a[-m.p.nan_planes :] = np.nan
    return data, stat


def _celestial_header(m: _Setup) -> fits.Header:
    """A TAN celestial WCS centred on the grid at (ra, dec), CD matrix, as MUSE cubes carry."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(m.nx + 1) / 2, (m.ny + 1) / 2]
    wcs.wcs.crval = [m.p.ra, m.p.dec]
    wcs.wcs.cd = np.array([[-m.p.pixscale_arcsec / 3600, 0.0], [0.0, m.p.pixscale_arcsec / 3600]])
    wcs.wcs.radesys = "ICRS"
    return wcs.to_header()


def _write_mock_cube(out_cube, data, stat, cel, meta: dict, p: MockParams) -> None:
    """The cube file, its primary header carrying every knob (``meta``) so that a cube says how it was made."""
    cards = [("OBJECT", "MOCK", "specfm mock MUSE cube"), ("TELESCOP", "ESO-VLT-U4", ""), ("INSTRUME", "MUSE", ""),
             ("RA", float(p.ra), "[deg]"), ("DEC", float(p.dec), "[deg]")]
    cards += [(k.replace("HIERARCH ", ""), v, "") for k, v in meta_cards(meta)]
    write_cube(out_cube, p.wave_start, p.wave_step, data, stat, cel, bunit=FLUX_UNIT_PHANGS, primary_cards=cards)


def _truth(raw: SSPGrid, mass, weights, f: dict, t_light, snr_map, cel, meta: dict, m: _Setup) -> Truth:
    """The truth maps (light- and mass-weighted age, [M/H], A_V, kinematics, LIGHT, S/N, EW) and the
    weight grids, on the cube's spaxel grid."""
    ny, nx, n_z, n_age = m.ny, m.nx, *raw.flux.shape[:2]
    log_age = np.log10(raw.age_gyr * 1e9)
    maps = {
        "LOGAGE": np.einsum("nza,a->n", weights, log_age).reshape(ny, nx),
        "MH": np.einsum("nza,z->n", weights, raw.mh).reshape(ny, nx), "AV": f["av"], "VEL": f["vel"],
        "SIGMA": f["sigma"], "LOGAGE_MW": np.einsum("nza,a->n", mass, log_age).reshape(ny, nx),
        "LIGHT": t_light.reshape(ny, nx), "SNR": snr_map,
        "EW_HA": f["ew_ha"] if m.p.emission else np.zeros((ny, nx)),
    }
    units = dict(TRUTH_UNITS, LIGHT=f"({FLUX_UNIT_PHANGS}) * (1+z)")
    return Truth(maps=maps, units=units, weights=np.moveaxis(weights.reshape(ny, nx, n_z, n_age), (2, 3), (0, 1)),
                 log_age=log_age, mh=raw.mh.astype(float), wcs_header=cel.tostring(sep="\n"), meta=meta)


def write_truth(truth: Truth, path: str | Path) -> None:
    hdus = [primary_hdu(truth.meta, fmt=FORMAT)]
    for name, image in truth.maps.items():
        hdus.append(image_hdu(name, np.asarray(image, dtype=np.float64), truth.wcs_header, truth.units.get(name, "")))
    w = fits.ImageHDU(np.asarray(truth.weights, dtype=np.float32), name="WEIGHTS")
    w.header["COMMENT"] = "light fractions [n_Z, n_age, ny, nx] (numpy order); pixel grid of LOGAGE"
    axes = fits.BinTableHDU.from_columns(
        [fits.Column("LOGAGE", f"{truth.log_age.size}D", unit="log10(yr)", array=truth.log_age[None]),
         fits.Column("MH", f"{truth.mh.size}D", unit="dex", array=truth.mh[None])],
        name="GRID_AXES",
    )
    with atomic_path(path) as tmp:
        fits.HDUList(hdus + [w, axes]).writeto(tmp, overwrite=True)


def read_truth(path: str | Path) -> Truth:
    with fits.open(path, memmap=False) as hdul:
        if hdul[0].header.get("FORMAT") != FORMAT:
            raise ValueError(f"{path}: not a mock truth file of format {FORMAT}")
        maps, units = {}, {}
        for hdu in hdul[1:]:
            if isinstance(hdu, fits.ImageHDU) and hdu.name != "WEIGHTS":
                maps[hdu.name] = np.asarray(hdu.data, dtype=float)
                units[hdu.name] = str(hdu.header.get("BUNIT", ""))
        wcs = quiet_wcs(hdul["LOGAGE"].header).celestial
        return Truth(maps=maps, units=units, weights=np.asarray(hdul["WEIGHTS"].data, dtype=float),
                     log_age=np.asarray(hdul["GRID_AXES"].data["LOGAGE"][0], float),
                     mh=np.asarray(hdul["GRID_AXES"].data["MH"][0], float),
                     wcs_header=wcs.to_header().tostring(sep="\n"), meta=header_meta(hdul[0].header))


def truth_per_bin(truth: Truth, bin_id: np.ndarray) -> dict:
    """Truth of each Voronoi bin: LIGHT-weighted means of the maps and of the weight grids.

    A bin's median-normalised spectrum is ~ sum_s LIGHT_s (spectrum_s / LIGHT_s) / sum LIGHT, so each
    spaxel enters with its LIGHT (median rest-frame, attenuated flux over the kept pixels).
    Returns {NAME: [n_bins]} for every map except LIGHT (summed instead) and 'WEIGHTS' [n_bins, n_Z, n_age].
    """
    bin_id = np.asarray(bin_id)
    inside = bin_id >= 0
    ids = bin_id[inside]
    n_bins = int(ids.max()) + 1
    lw = truth.maps["LIGHT"][inside]
    tot = np.bincount(ids, weights=lw, minlength=n_bins)
    out = {}
    for name, image in truth.maps.items():
        if name == "LIGHT":
            out[name] = tot
        else:
            out[name] = np.bincount(ids, weights=lw * image[inside], minlength=n_bins) / tot
    w = truth.weights[:, :, inside]  # [n_Z, n_age, n_in]
    grid = np.zeros((n_bins, *w.shape[:2]))
    np.add.at(grid, ids, np.moveaxis(w * lw, -1, 0))
    out["WEIGHTS"] = grid / tot[:, None, None]
    return out


def plot_truth(truth: Truth, path: str | Path, *, bins=None, bin_index: int | None = None) -> None:
    """Quick-look PNG: the truth maps and, with ``bins``, one binned spectrum (scratch / checks)."""
    from matplotlib.figure import Figure

    names = ["LOGAGE", "MH", "AV", "VEL", "SIGMA", "SNR", "EW_HA", "LIGHT"]
    extra = bins is not None
    fig = Figure(figsize=(14, 7.5 if not extra else 10.5), dpi=90, layout="constrained")
    grid = fig.add_gridspec(3 if extra else 2, 4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // 4, i % 4])
        img = truth.maps[name]
        cmap = "RdBu_r" if name == "VEL" else "viridis"
        im = ax.imshow(np.log10(img) if name == "LIGHT" else img, origin="lower", cmap=cmap)
        unit = "log10" if name == "LIGHT" else truth.units.get(name, "")
        ax.set_title(f"{name} [{unit}]" if unit else name, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if extra:
        ax = fig.add_subplot(grid[2, :])
        k = int(np.argmax(bins.n_spaxels)) if bin_index is None else int(bin_index)
        ax.plot(bins.wave, bins.spectra_full[k] / bins.norm[k], lw=0.7, color="k", label=f"bin {k} / norm")
        ax.plot(bins.wave, bins.noise_full[k] / bins.norm[k], lw=0.7, color="r", label="noise / norm")
        kept = np.where(bins.mask, bins.spectra_full[k] / bins.norm[k], np.nan)
        ax.plot(bins.wave, kept + 0.5, lw=0.7, color="C0", label="model input (masked) + 0.5")
        ax.set(xlabel="rest wavelength [A]", ylabel="flux / median",
               title=f"bin {k}: {bins.n_spaxels[k]} spaxels, S/N {bins.snr[k]:.1f}, {bins.n_filtered[k]} px filtered")
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


__all__ = ["MockParams", "Truth", "make_mock_cube", "plot_truth", "read_truth", "sfh_mass", "truth_per_bin",
           "write_truth"]
