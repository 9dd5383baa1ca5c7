"""Mock DESI-like spectra with known redshift, from the real E-MILES SSPs.

A galaxy = an SFH-weighted sum of SSPs (ages younger than the Universe at its z, [M/H] between two
grid values) x O'Donnell (1994) attenuation + emission lines, seen through the three DESI arms
(their wavelength ranges, 0.8 A pixels, resolutions), with sky-dominated noise (a sky spectrum with
lines, arm throughputs falling at the edges) and masked pixels. Two populations:

* BGS-like: 0 < z < 0.6, continuum S/N set by an r magnitude (magnitude-limited), mostly weak lines;
* ELG-like: 0.6 < z < 1.6, faint continuum, strong [O II].

Generalisation: the test split's parameters come from their own random stream AND another SFH
family (delayed-tau with truncation instead of tau + burst) and shifted line-ratio ranges, so a
model cannot pass by memorising the training recipes.

Approximations (stated, not hidden): the instrument LSF and a 100 km/s stellar dispersion are one
Gaussian per arm at the arm's mean resolution applied to the SSP basis in ln(lambda) (the SSPs'
own resolution is not deconvolved); emission lines are exact pixel-integrated Gaussians at the local
resolution. The E-MILES SSPs start at 1680 A rest: observed pixels bluer than 1680 (1+z) A (z > 1.14
in the b arm) are masked as missing data and counted. Air wavelengths of the SSPs are converted to
vacuum (DESI spectra are in vacuum).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

log = logging.getLogger(__name__)

C_KMS = 299792.458
PIX = 0.8  # DESI coadd pixel, Angstrom
# arm: (first pixel, last pixel, resolution at the blue end, at the red end)
ARMS = {"b": (3600.0, 5930.0, 2000.0, 3200.0), "r": (5660.0, 7720.0, 3200.0, 4100.0),
        "z": (7470.0, 9824.0, 4100.0, 5100.0)}
# vacuum rest wavelengths, Angstrom
LINES = {"OII_3726": 3727.092, "OII_3729": 3729.875, "Hgamma": 4341.68, "Hbeta": 4862.68,
         "OIII_4959": 4960.295, "OIII_5007": 5008.240, "NII_6548": 6549.86, "Halpha": 6564.61,
         "NII_6584": 6585.27, "SII_6716": 6718.29, "SII_6731": 6732.67}
SSP_BLUE = 1680.2  # first E-MILES pixel, Angstrom (air)
# bright night-sky lines (vacuum) + a fixed pseudo-OH forest in the red (seeded, the same in every mock)
SKY_LINES = np.array([5578.89, 5891.58, 5897.56, 6302.05, 6365.54])


def air_to_vac(w):
    """Air -> vacuum wavelength (Morton 2000, as IAU/SDSS)."""
    w = np.asarray(w, float)
    s2 = (1e4 / w) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return w * n


def arm_wave(arm: str) -> np.ndarray:
    lo, hi, _, _ = ARMS[arm]
    return lo + PIX * np.arange(int(round((hi - lo) / PIX)) + 1)


def arm_resolution(arm: str, wave: np.ndarray) -> np.ndarray:
    lo, hi, r_lo, r_hi = ARMS[arm]
    return r_lo + (r_hi - r_lo) * (wave - lo) / (hi - lo)


def throughput(arm: str, wave: np.ndarray) -> np.ndarray:
    lo, hi, _, _ = ARMS[arm]
    t = np.clip((wave - lo) / (hi - lo), 0, 1)
    return 0.25 + 0.75 * np.sin(np.pi * t) ** 0.4


def sky_spectrum(arm: str, wave: np.ndarray) -> np.ndarray:
    """Sky continuum 1 + lines (pixel-integrated at the arm's resolution), arbitrary units."""
    rng = np.random.default_rng(12345)  # the same OH forest in every mock, whatever the seed
    oh = np.sort(rng.uniform(6800.0, 9900.0, 160))
    amp = np.concatenate([[40.0, 8.0, 8.0, 15.0, 5.0], 10 ** rng.uniform(0.3, 1.6, oh.size)])
    centres = np.concatenate([SKY_LINES, oh])
    sky = np.ones_like(wave)
    sig = wave / (2.355 * arm_resolution(arm, wave))
    for c, a in zip(centres, amp):
        near = np.abs(wave - c) < 6 * sig
        if near.any():
            sky[near] += a * _pixel_gauss(wave[near], c, sig[near])
    return sky


def _pixel_gauss(wave, mu, sigma, dw=PIX):
    """Mean over each pixel [w - dw/2, w + dw/2] of a unit-area Gaussian, per Angstrom."""
    s = np.sqrt(2.0) * sigma
    return (erf((wave + dw / 2 - mu) / s) - erf((wave - dw / 2 - mu) / s)) / (2 * dw)


@dataclass
class SSPBasis:
    """SSPs on a rest ln(lambda) grid, smoothed once per arm (linear in the SFH weights)."""

    ln_wave: np.ndarray  # [n_rest]
    per_arm: dict  # arm -> [n_ssp, n_rest] float32
    mh: np.ndarray  # [n_Z]
    age_gyr: np.ndarray  # [n_age]
    k_lambda: np.ndarray  # [n_rest] O'Donnell A_lambda / A_V

    @property
    def n_ssp(self):
        return self.mh.size * self.age_gyr.size


def build_basis(ssp_paths, *, dln: float = 1e-4, sigma_star_kms: float = 100.0, red: float = 9900.0) -> SSPBasis:
    import astropy.units as u
    from dust_extinction.parameter_averages import O94

    from specfm.galaxies.templates import read_ssp_grid

    grid = read_ssp_grid(ssp_paths, wave_range=(SSP_BLUE, red + 100.0))
    vac = air_to_vac(grid.wave)
    ln_wave = np.arange(np.log(vac[0]), np.log(red), dln)
    flat = grid.flux.reshape(-1, grid.wave.size)
    flat = flat / np.median(flat[:, (vac > 5400) & (vac < 5600)], axis=1, keepdims=True)  # ~1 at 5500 A
    on_ln = np.stack([np.interp(ln_wave, np.log(vac), f) for f in flat])
    per_arm = {}
    for arm in ARMS:
        r = np.mean(ARMS[arm][2:])
        sig = np.hypot(1.0 / (2.355 * r), sigma_star_kms / C_KMS) / dln
        per_arm[arm] = gaussian_filter1d(on_ln, sig, axis=1, mode="nearest").astype("f4")
    x = 1e4 / np.exp(ln_wave)  # 1/micron
    k = O94(Rv=3.1)(np.clip(x, 0.31, 9.99) / u.micron)  # A_lambda / A_V
    return SSPBasis(ln_wave=ln_wave, per_arm=per_arm, mh=grid.mh, age_gyr=grid.age_gyr, k_lambda=np.asarray(k))


# ------------------------------------------------------------------ parameters of the population


@dataclass
class MockSettings:
    n_spectra: int = 3000
    elg_fraction: float = 0.5
    bgs_z: tuple = (0.005, 0.6)
    elg_z: tuple = (0.6, 1.6)
    bgs_rmag: tuple = (16.0, 19.5)
    snr_at_19_5: float = 3.0  # BGS continuum S/N per 0.8 A r-arm pixel at r = 19.5
    elg_snr: tuple = (0.3, 1.5)  # ELG continuum S/N per pixel
    bad_pixel_fraction: float = 0.002
    block_probability: float = 0.3  # chance of one masked block (5-40 px) in one arm
    targetid_base: int = 10 ** 15


def sfh_weights(rng, ages, t_univ, family: str) -> np.ndarray:
    """Mass per age bin [n_age] (sum 1) for one galaxy: tau + burst (train/val) or truncated delayed-tau (test)."""
    edges = np.concatenate([[0.0], np.sqrt(ages[1:] * ages[:-1]), [ages[-1] * 1.25]])
    width = np.diff(edges)
    t_form = rng.uniform(0.5, max(t_univ, 0.6))
    tau = 10 ** rng.uniform(-0.5, 1.0)
    since = t_form - ages  # time since formation at each lookback age
    ok = (ages < min(t_form, t_univ))
    if family == "tau":
        sfr = np.exp(-since / tau)
        sfr = np.where(ok, sfr, 0.0) * width
        if rng.random() < 0.3:
            burst = np.argmin(np.abs(np.log(ages) - np.log(rng.uniform(0.06, 1.0))))
            sfr = sfr / max(sfr.sum(), 1e-30) * (1 - 0.1) + 0.1 * np.eye(ages.size)[burst]
    else:
        sfr = since * np.exp(-since / tau)
        if rng.random() < 0.3:  # quenched: nothing younger than a truncation age
            sfr = np.where(ages > rng.uniform(0.1, 2.0), sfr, 0.0)
        sfr = np.where(ok, sfr, 0.0) * width
    if sfr.sum() <= 0:
        sfr = np.eye(ages.size)[0]
    return sfr / sfr.sum()


@dataclass
class Params:
    z: np.ndarray
    pop: np.ndarray  # "BGS" / "ELG"
    weights: np.ndarray  # [n, n_ssp] mass weights
    av: np.ndarray
    snr: np.ndarray  # continuum S/N per pixel, r arm
    rmag: np.ndarray
    line_ew: np.ndarray  # [n, n_lines] rest equivalent widths (A, in emission > 0)
    sigma_v: np.ndarray  # line width km/s


def draw_params(rng, n: int, basis: SSPBasis, s: MockSettings, *, test: bool) -> Params:
    from astropy.cosmology import Planck18

    elg = rng.random(n) < s.elg_fraction
    z = np.where(elg, rng.uniform(*s.elg_z, n), s.bgs_z[0] + (s.bgs_z[1] - s.bgs_z[0]) * rng.beta(2.0, 4.0, n))
    t_univ = np.asarray(Planck18.age(z).value)
    family = "delayed" if test else "tau"
    n_age, n_z = basis.age_gyr.size, basis.mh.size
    weights = np.zeros((n, n_z * n_age))
    for i in range(n):
        w_age = sfh_weights(rng, basis.age_gyr, t_univ[i], family)
        mh = rng.uniform(-0.71, 0.22) if not elg[i] else rng.uniform(-1.31, 0.0)
        j = int(np.clip(np.searchsorted(basis.mh, mh) - 1, 0, n_z - 2))
        f = (mh - basis.mh[j]) / (basis.mh[j + 1] - basis.mh[j])
        weights[i, j * n_age:(j + 1) * n_age] += (1 - f) * w_age
        weights[i, (j + 1) * n_age:(j + 2) * n_age] += f * w_age
    av = np.where(elg, rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.5, n))
    rmag = np.where(elg, np.nan, rng.uniform(*s.bgs_rmag, n))
    snr = np.where(elg, rng.uniform(*s.elg_snr, n), s.snr_at_19_5 * 10 ** (-0.4 * (rmag - 19.5)))
    line_ew = _line_ews(rng, n, elg, test)
    sigma_v = np.where(elg, rng.uniform(30, 100, n), rng.uniform(40, 150, n))
    return Params(z=z, pop=np.where(elg, "ELG", "BGS"), weights=weights, av=av, snr=snr,
                  rmag=rmag, line_ew=line_ew, sigma_v=sigma_v)


def _line_ews(rng, n, elg, test) -> np.ndarray:
    """Rest EWs of LINES (order of the dict). Ratios to H-alpha / [O II]; test draws shifted ranges."""
    sh = 0.1 if test else 0.0  # test line ratios come from neighbouring, not identical, ranges
    passive = (~elg) & (rng.random(n) < 0.25)
    ha = np.where(elg, 10 ** rng.uniform(1.3, 2.3, n), np.where(passive, 0.0, 10 ** rng.uniform(-0.3, 1.8, n)))
    oii = np.where(elg, 10 ** rng.uniform(1.2, 2.2, n), ha * 10 ** rng.uniform(-0.4 + sh, 0.2 + sh, n))
    doublet = rng.uniform(0.8 + sh, 1.4 + sh, n)  # 3729 / 3726
    hb = ha / 2.86 * 10 ** rng.uniform(-0.2, 0.0, n)
    oiii = hb * np.where(elg, 10 ** rng.uniform(0.0 + sh, 0.8 + sh, n), 10 ** rng.uniform(-0.6 + sh, 0.4 + sh, n))
    nii = ha * np.where(elg, rng.uniform(0.05, 0.3 + sh, n), rng.uniform(0.25 + sh, 0.5 + sh, n))
    sii = ha * rng.uniform(0.15 + sh, 0.35 + sh, n)
    out = {"OII_3726": oii / (1 + doublet), "OII_3729": oii * doublet / (1 + doublet), "Hgamma": hb * 0.47,
           "Hbeta": hb, "OIII_4959": oiii / 2.98, "OIII_5007": oiii, "NII_6548": nii / 3.05, "Halpha": ha,
           "NII_6584": nii, "SII_6716": sii * 0.55, "SII_6731": sii * 0.45}
    return np.stack([out[k] for k in LINES], axis=1)


# ------------------------------------------------------------------ rendering


def render(basis: SSPBasis, p: Params, rng, s: MockSettings) -> dict:
    """Arms for a batch of galaxies: {arm: (flux [B, n], ivar [B, n])} + counts of masked pixels."""
    b = p.z.size
    out, counts = {}, {"masked_rest_coverage": 0, "masked_bad": 0}
    atten = 10 ** (-0.4 * p.av[:, None] * basis.k_lambda[None, :])  # [B, n_rest]
    # continuum level that sets the noise: the r-arm median of the noiseless continuum
    cont = {}
    for arm in ARMS:
        rest = (p.weights @ basis.per_arm[arm].astype(float)) * atten  # [B, n_rest]
        w = arm_wave(arm)
        c = np.empty((b, w.size))
        for i in range(b):
            c[i] = np.interp(np.log(w) - np.log1p(p.z[i]), basis.ln_wave, rest[i])
        cont[arm] = c
    rest_r = (p.weights @ basis.per_arm["r"].astype(float)) * atten
    line_rest = np.array(list(LINES.values()))
    # continuum at each line's rest wavelength (for EW -> flux)
    cline = np.stack([np.interp(np.log(line_rest), basis.ln_wave, rest_r[i]) for i in range(b)])
    for arm in ARMS:
        w = arm_wave(arm)
        f = cont[arm].copy()
        res = arm_resolution(arm, w)
        for k, lam in enumerate(line_rest):
            mu = lam * (1 + p.z)[:, None]
            sig = np.sqrt((mu * p.sigma_v[:, None] / C_KMS) ** 2 + (mu / (2.355 * res[None, :])) ** 2)
            area = (p.line_ew[:, k] * (1 + p.z) * cline[:, k])[:, None]
            near = np.abs(w[None, :] - mu) < 8 * sig
            if near.any():
                f = f + np.where(near, area * _pixel_gauss(w[None, :], mu, sig), 0.0)
        out[arm] = f
    # noise: sky-dominated, sigma(lambda) = sigma0 sqrt(sky) / throughput; sigma0 from the r-arm S/N
    wr = arm_wave("r")
    shape_r = np.sqrt(sky_spectrum("r", wr)) / throughput("r", wr)
    sigma0 = np.median(cont["r"] / shape_r[None, :], axis=1) / p.snr  # [B]
    arms = {}
    for arm in ARMS:
        w = arm_wave(arm)
        sigma = sigma0[:, None] * (np.sqrt(sky_spectrum(arm, w)) / throughput(arm, w))[None, :]
        flux = out[arm] + rng.normal(size=sigma.shape) * sigma
        ivar = 1.0 / sigma ** 2
        uncovered = w[None, :] < air_to_vac(SSP_BLUE) * (1 + p.z)[:, None]
        bad = rng.random(sigma.shape) < s.bad_pixel_fraction
        counts["masked_rest_coverage"] += int(uncovered.sum())
        ivar[uncovered | bad] = 0.0
        counts["masked_bad"] += int(bad.sum())
        arms[arm] = (flux, ivar)
    for i in np.flatnonzero(rng.random(b) < s.block_probability):  # one dead block per chosen spectrum
        arm = list(ARMS)[rng.integers(3)]
        n = arms[arm][1].shape[1]
        length = int(rng.integers(5, 41))
        start = int(rng.integers(0, n - length))
        arms[arm][1][i, start:start + length] = 0.0
        counts["masked_bad"] += length
    return {"arms": arms, "counts": counts}
