"""Emulation scores on held-out spectra (the paper's Sect. 3.3) and the noise-floor comparison.

MAQE_0.95 is the mean of the largest 5 % of the absolute errors over all spectra and pixels
(ceil(0.05 n) of them): MAE and MSE are dominated by the continuum, this one by the lines.
chi^2 per pixel uses the grid's flux errors (inf = masked pixel, left out): 1 means the emulator
is as close as the data's noise allows.
"""

from __future__ import annotations

import math

import numpy as np


def maqe(abs_err: np.ndarray, q: float = 0.95) -> float:
    a = np.sort(np.ravel(abs_err))
    if a.size == 0:
        return float("nan")
    k = max(1, math.ceil(round((1 - q) * a.size, 9)))
    return float(a[-k:].mean())


def scores(pred: np.ndarray, flux: np.ndarray, err: np.ndarray | None = None,
           mask: np.ndarray | None = None) -> dict:
    """MSE, MAE, MAQE_0.95, residual percentiles and chi^2 per pixel of pred vs flux (n, m)."""
    res = (pred - flux).astype(np.float64)
    use = np.ones(res.shape, bool) if mask is None else ~mask
    r = res[use]
    out = {"n_spectra": int(res.shape[0]), "mse": float(np.mean(r ** 2)), "mae": float(np.mean(np.abs(r))),
           "maqe_0.95": maqe(np.abs(r)), "residual_p50": float(np.median(r)),
           "residual_p16": float(np.percentile(r, 16)), "residual_p84": float(np.percentile(r, 84))}
    if err is not None:
        ok = use & np.isfinite(err) & (err > 0)
        out["chi2_per_pixel"] = float(np.mean((res[ok] / err[ok]) ** 2)) if ok.any() else None
        out["median_flux_error"] = float(np.median(err[ok])) if ok.any() else None
    return out
