"""Continuum normalisation, the same recipe for every star of a grid.

An emulator learns normalised flux; the continuum of an observed star (MILES fluxes are relative
flux-calibrated, so its shape carries the instrument and extinction) is divided out by an
iteratively clipped low-order Legendre fit to the upper envelope: fit, reject pixels more than
`lower` sigma below the fit (absorption lines) or `upper` sigma above (cosmic rays), refit, until
nothing changes. A fit rather than a running quantile because it is exact for a smooth continuum
with narrow lines and has no edge effects; it is done on the window plus a margin so that the
polynomial's ends fall outside the emulated range. Cool stars whose whole window is covered by
molecular bands get a continuum below the true one: every star is treated alike, so the emulator
sees one consistent definition (the same caveat applies to The Payne's training sets).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre


def fit_continuum(wave: np.ndarray, flux: np.ndarray, *, degree: int = 3, lower: float = 1.0,
                  upper: float = 3.0, max_iter: int = 20, good: np.ndarray | None = None) -> np.ndarray:
    """The continuum of one spectrum at `wave` (same shape as `flux`); `good` marks usable pixels."""
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1  # Legendre domain [-1, 1]
    use = np.isfinite(flux) if good is None else good & np.isfinite(flux)
    if use.sum() <= degree + 1:
        raise ValueError(f"continuum fit: {use.sum()} usable pixels for a degree-{degree} fit")
    keep = use.copy()
    for _ in range(max_iter):
        coef = legendre.legfit(x[keep], flux[keep], degree)
        fit = legendre.legval(x, coef)
        resid = flux - fit
        sigma = np.std(resid[keep])
        new = use & (resid > -lower * sigma) & (resid < upper * sigma)
        if new.sum() <= degree + 1 or np.array_equal(new, keep):
            break
        keep = new
    return fit


def normalise(wave: np.ndarray, flux: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(flux / continuum, continuum) for one spectrum."""
    cont = fit_continuum(wave, flux, **kwargs)
    if np.any(cont <= 0):
        raise ValueError("continuum fit: non-positive continuum (flux too low or too few pixels)")
    return flux / cont, cont


def der_snr_noise(flux: np.ndarray, quantile: float = 0.75, min_windows: int = 20) -> float:
    """Noise of a normalised spectrum from itself (DER_SNR, Stoehr et al. 2008): 1.482602/sqrt(6)
    times the median of |2 f_i - f_(i-2) - f_(i+2)|, taken over the 5-pixel runs that lie above
    the flux's `quantile` (the continuum between lines; all pixels if fewer than `min_windows`
    runs qualify). The second difference cancels signal linear over five pixels, but at MILES's
    2.5 A FWHM on 0.9 A pixels line wings still add to it: an upper bound on the noise, so the
    chi^2 against it is a lower bound."""
    f = flux[np.isfinite(flux)]
    if f.size < 5:
        return float("nan")
    d = np.abs(2 * f[2:-2] - f[:-4] - f[4:])
    hi = f > np.quantile(f, quantile)
    runs = hi[:-4] & hi[1:-3] & hi[2:-2] & hi[3:-1] & hi[4:]
    return float(1.482602 / np.sqrt(6.0) * np.median(d[runs] if runs.sum() >= min_windows else d))
