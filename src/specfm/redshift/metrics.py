"""Redshift scores: NMAD (paper eq. 4), outlier fraction eta (|dz|/(1+z) > 0.15), bias, R^2, binned.

dz = z_pred - z_true (the sign of the bias: positive = predicted too high); eq. 4 uses |dz| so the
sign does not matter there.
"""

from __future__ import annotations

import numpy as np

OUTLIER = 0.15


def scores(z_pred, z_true) -> dict:
    """{n, nmad, eta, bias (median dz/(1+z)), mean, std, r2} over the finite pairs (n = how many)."""
    zp, zt = np.asarray(z_pred, float), np.asarray(z_true, float)
    ok = np.isfinite(zp) & np.isfinite(zt)
    zp, zt = zp[ok], zt[ok]
    if zp.size == 0:
        return {"n": 0, "nmad": None, "eta": None, "bias": None, "mean": None, "std": None, "r2": None}
    r = (zp - zt) / (1 + zt)
    ss_tot = np.sum((zt - zt.mean()) ** 2)
    r2 = 1 - np.sum((zp - zt) ** 2) / ss_tot if ss_tot > 0 else None
    return {"n": int(zp.size), "nmad": float(1.48 * np.median(np.abs(r))), "eta": float(np.mean(np.abs(r) > OUTLIER)),
            "bias": float(np.median(r)), "mean": float(np.mean(r)), "std": float(np.std(r)),
            "r2": None if r2 is None else float(r2)}


def binned(z_pred, z_true, by, edges) -> list[dict]:
    """scores() per bin of `by` (e.g. z_true for Fig. 13, or S/N): [{lo, hi, **scores}]."""
    by = np.asarray(by, float)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (by >= lo) & (by < hi)
        out.append({"lo": float(lo), "hi": float(hi), **scores(np.asarray(z_pred)[sel], np.asarray(z_true)[sel])})
    return out
