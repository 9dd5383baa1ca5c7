"""One wavelength grid for every spectrum: arms merged by inverse variance, masks, normalisation, split.

Resampling and arm merging are one operation. Every input pixel (of every arm) is a bin
[edge_j, edge_j+1]; W[i, j] is the fraction of input pixel j that falls inside output pixel i. The
output flux is the inverse-variance weighted mean of the overlapping inputs,

    f_i = sum_j W_ij iv_j f_j / sum_j W_ij iv_j,      iv_i = (sum_j W_ij iv_j)^2 / sum_j W_ij^2 iv_j,

which is the variance of that weighted mean. Two arms that overlap are then merged by inverse
variance for free (their pixels are just more inputs), a coarser output grid averages pixels, and
a masked input pixel (iv = 0) drops out. An output pixel no unmasked input reaches gets iv = 0:
it is masked, never filled.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp


def make_grid(wmin: float, wmax: float, dw: float) -> np.ndarray:
    """Pixel centres wmin, wmin + dw, ... <= wmax (the paper: 3600-9824 A at 0.8 A, 7,781 px)."""
    if not (wmax > wmin and dw > 0):
        raise ValueError(f"wavelength grid: need wmax > wmin and dw > 0, got {wmin}, {wmax}, {dw}")
    n = int(np.floor((wmax - wmin) / dw + 1e-6)) + 1
    return wmin + dw * np.arange(n)


def edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges of a monotonic grid of pixel centres: midpoints, the ends mirrored."""
    c = np.asarray(centres, float)
    if c.size < 2 or np.any(np.diff(c) <= 0):
        raise ValueError("a wavelength grid must have >= 2 strictly increasing pixels")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def overlap_matrix(in_centres: np.ndarray, out_centres: np.ndarray) -> sp.csr_matrix:
    """W [n_out, n_in]: fraction of each input pixel inside each output pixel."""
    ein, eout = edges(in_centres), edges(out_centres)
    rows, cols, vals = [], [], []
    lo_idx = np.searchsorted(eout, ein[:-1], side="right") - 1  # first output bin touched
    hi_idx = np.searchsorted(eout, ein[1:], side="left") - 1  # last output bin touched
    width = np.diff(ein)
    for j in range(in_centres.size):
        for i in range(max(lo_idx[j], 0), min(hi_idx[j], eout.size - 2) + 1):
            ov = min(ein[j + 1], eout[i + 1]) - max(ein[j], eout[i])
            if ov > 0:
                rows.append(i), cols.append(j), vals.append(ov / width[j])
    return sp.csr_matrix((vals, (rows, cols)), shape=(out_centres.size, in_centres.size))


class Merger:
    """Resamples and merges a fixed set of arm grids onto `out_wave` (W built once, reused per batch)."""

    def __init__(self, arm_waves: list[np.ndarray], out_wave: np.ndarray, *, name: str = "spectra"):
        self.out_wave = np.asarray(out_wave, float)
        lo, hi = min(w[0] for w in arm_waves), max(w[-1] for w in arm_waves)
        de = edges(self.out_wave)
        if lo > de[1] or hi < de[-2]:
            raise ValueError(f"{name}: arms cover {lo:.1f}-{hi:.1f} A, which does not cover the configured "
                             f"grid {self.out_wave[0]:.1f}-{self.out_wave[-1]:.1f} A")
        self.sizes = [w.size for w in arm_waves]
        self.W = sp.hstack([overlap_matrix(np.asarray(w, float), self.out_wave) for w in arm_waves]).tocsr()
        self.W2 = self.W.multiply(self.W).tocsr()

    def __call__(self, fluxes: list[np.ndarray], ivars: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Arms [B, n_arm_px] each -> (flux [B, n_out], ivar [B, n_out]); ivar 0 where nothing reached."""
        f = np.concatenate([np.asarray(a, float) for a in fluxes], axis=1)
        iv = np.concatenate([np.asarray(a, float) for a in ivars], axis=1)
        bad = ~np.isfinite(f) | ~np.isfinite(iv) | (iv < 0)
        iv = np.where(bad, 0.0, iv)
        f = np.where(bad, 0.0, f)
        num = (self.W @ (iv * f).T).T
        den = (self.W @ iv.T).T
        den2 = (self.W2 @ iv.T).T
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(den > 0, num / den, 0.0)
            ivar = np.where(den2 > 0, den ** 2 / den2, 0.0)
        return flux, ivar


def median_normalise(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Divide each spectrum by the median of its unmasked pixels (ivar scaled by median^2).

    Returns (flux, ivar, median); a spectrum whose median is not positive (all masked, all NaN, or
    pure noise) gets median NaN and is the caller's to drop and count.
    """
    good = ivar > 0
    masked = np.where(good, flux, np.nan)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(masked, axis=1)
    med = np.where(np.isfinite(med) & (med > 0), med, np.nan)
    scale = np.where(np.isfinite(med), med, 1.0)[:, None]
    return (np.where(good, flux / scale, 0.0).astype(np.float32),
            (ivar * scale ** 2).astype(np.float32), med)


SPLITS = ("train", "val", "test")


def hash_unit(targetids) -> np.ndarray:
    """A stable number in [0, 1) per TARGETID (blake2b of its 8 little-endian bytes): same id, same split,
    whatever the file order, sample size or machine."""
    out = np.empty(len(targetids))
    for k, t in enumerate(np.asarray(targetids, dtype=np.int64)):
        h = hashlib.blake2b(int(t).to_bytes(8, "little", signed=True), digest_size=8).digest()
        out[k] = int.from_bytes(h, "little") / 2.0 ** 64
    return out


def split_of(u: np.ndarray, fractions=(0.70, 0.15, 0.15)) -> np.ndarray:
    """train / val / test from the hash (test = the lowest `fractions[2]`, fixed across folds)."""
    test, val = fractions[2], fractions[1]
    return np.where(u < test, "test", np.where(u < test + val, "val", "train"))


def fold_part(u: np.ndarray, folds: int, test_fraction: float = 0.15) -> np.ndarray:
    """For k-fold training: which of the `folds` parts a non-test spectrum is in (-1 for test).
    Fold k validates on part k and trains on the others; the test set never moves."""
    part = np.floor((u - test_fraction) / (1.0 - test_fraction) * folds).astype(int)
    return np.where(u < test_fraction, -1, np.clip(part, 0, folds - 1))
