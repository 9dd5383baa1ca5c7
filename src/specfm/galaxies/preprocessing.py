"""The preprocessing that every galaxy spectrum goes through before GalProTE or pPXF reads it.

One module for the cube bins (`specfm.galaxies.cube`, PHANGS / mock / MaNGA cubes) and for a user's
single spectra (`specfm.galaxies.single`), so that both are the same function of their input:

1. masked pixels (non-finite flux or variance, variance <= 0, a survey's mask bits) -> NaN (``mask_bad``);
2. de-redshift with one systemic z: lambda_rest = lambda_obs / (1+z), f_rest = f_obs (1+z), and
   rebin onto the template grid with the flux-conserving bin-overlap matrix W (``RestFrame``;
   variance through W**2); masked pixels are linearly interpolated over first (``fill_masked``);
3. bright-line median filter inside the Table 2 regions and median normalisation over the kept
   pixels (``finish``): the 876-px masked, normalised spectrum the network reads.

Vacuum wavelengths (MaNGA, SDSS) are converted to air (the templates' frame) with ``vacuum_to_air``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .spectra import PAPER_MASK_REGIONS, bin_edges, emission_mask, paper_wavelength_grid

SNR_WINDOW = (5300.0, 5500.0)  # A rest: no strong emission or sky line for z < 0.01 (5577 sky -> 5533 A)


@dataclass(frozen=True)
class BinSettings:
    """Every knob of the preprocessing, its default written here once.

    The cube entry points (`cube.preprocess`, `cube.preprocess_file`) and a user's spectra
    (`single.prepare`) all read one of these, so their defaults cannot drift apart; each takes the
    fields as keyword overrides too. ``target_snr`` 35 is the PHANGS-MUSE binning target (GalProTE
    Sect. 3.2, after Pessa et al. 2023), S/N per output pixel in ``snr_window``; ``wave_out`` None
    means the paper grid. ``chunk`` (spaxels per rebinning product) and ``max_chunk_mb`` (one strip
    of a cube file) bound memory only: they never change the result.
    """

    target_snr: float = 35.0
    min_snr: float = 3.0
    snr_window: tuple[float, float] = SNR_WINDOW
    wave_out: np.ndarray | None = None
    max_bad_frac: float = 0.2
    line_filter: bool = True
    median_width: int = 25  # px of the running median
    line_pad: int = 3  # px added to each side of the Table 2 regions
    clip_sigma: float = 4.0
    chunk: int = 4096
    max_chunk_mb: float = 256.0


def vacuum_to_air(wave_vac) -> np.ndarray:
    """Air wavelengths [A] of vacuum ones: lambda_air = lambda_vac / n, with the refractive index of
    Ciddor (1996, Applied Optics 35, 1566, eq. 1; standard air, 15 C, 101325 Pa, 450 ppm CO2):
    n - 1 = 5.792105e-2 / (238.0185 - s^2) + 1.67917e-3 / (57.362 - s^2), s = 1e4 / lambda_vac [um^-1].

    The formula pPXF's ``vac_to_air`` uses (same arithmetic, so the same numbers), and the one the
    SDSS/MaNGA documentation points to. H-alpha: 6564.61 A vacuum -> 6562.80 A air."""
    lam = np.asarray(wave_vac, dtype=float)
    sigma2 = (1e4 / lam) ** 2
    fact = 1 + 5.792105e-2 / (238.0185 - sigma2) + 1.67917e-3 / (57.362 - sigma2)
    return lam / fact


def rest_edges(wave_out=None) -> tuple[float, float]:
    """Rest-frame wavelength interval [A] that the output grid needs (its outer pixel edges)."""
    edges = bin_edges(paper_wavelength_grid() if wave_out is None else wave_out)
    return float(edges[0]), float(edges[-1])


def check_coverage(wave_obs, redshift: float, name: str, wave_out=None) -> None:
    """ValueError naming ``name`` unless the observed grid covers the output grid at ``redshift``."""
    lo, hi = rest_edges(wave_out)
    e = bin_edges(wave_obs)
    have_lo, have_hi = e[0] / (1 + redshift), e[-1] / (1 + redshift)
    if have_lo > lo + 1e-6 or have_hi < hi - 1e-6:
        raise ValueError(
            f"{name}: observed wavelengths {e[0]:.1f}-{e[-1]:.1f} A cover {have_lo:.1f}-{have_hi:.1f} A in the "
            f"rest frame at z = {redshift:g}, not the required {lo:.1f}-{hi:.1f} A"
        )


def mask_bad(flux: np.ndarray, var: np.ndarray | None, block: int = 64) -> int:
    """Set masked pixels to NaN in place (in blocks of planes, to bound the temporaries); return their count."""
    n_bad = 0
    for i in range(0, flux.shape[0], block):
        f = flux[i : i + block]
        bad = ~np.isfinite(f)
        if var is not None:
            v = var[i : i + block]
            bad |= ~np.isfinite(v) | (v <= 0)
            v[bad] = np.nan
        f[bad] = np.nan
        n_bad += int(bad.sum())
    return n_bad


def rebin_matrix(wave_in, wave_out) -> sp.csr_matrix:
    """Sparse [n_out, n_in] flux-conserving rebinning matrix: W @ f == spectra.resample(wave_in, f, wave_out).

    W[j, k] = overlap(out pixel j, in pixel k) / width(out pixel j): each output pixel is the mean of
    the piecewise-constant input over it. Pixel edges are the midpoints between centres.
    """
    ein, eout = bin_edges(wave_in), bin_edges(wave_out)
    if eout[0] < ein[0] - 1e-9 or eout[-1] > ein[-1] + 1e-9:
        raise ValueError(
            f"rebin: output {eout[0]:.2f}-{eout[-1]:.2f} A is outside the input {ein[0]:.2f}-{ein[-1]:.2f} A"
        )
    lo, hi = eout[:-1], eout[1:]
    k0 = np.clip(np.searchsorted(ein, lo, side="right") - 1, 0, ein.size - 2)
    k1 = np.clip(np.searchsorted(ein, hi, side="left"), 1, ein.size - 1)  # exclusive
    rows, cols, vals = [], [], []
    for d in range(int(np.max(k1 - k0))):
        k = k0 + d
        ok = k < k1
        j = np.flatnonzero(ok)
        kk = k[ok]
        overlap = np.minimum(hi[j], ein[kk + 1]) - np.maximum(lo[j], ein[kk])
        keep = overlap > 0
        rows.append(j[keep])
        cols.append(kk[keep])
        vals.append(overlap[keep] / (hi[j[keep]] - lo[j[keep]]))
    rows, cols, vals = (np.concatenate(a) for a in (rows, cols, vals))
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(lo), len(ein) - 1))


def fill_masked(f: np.ndarray, v: np.ndarray, x: np.ndarray, cols: np.ndarray) -> None:
    """Linear interpolation over NaN pixels along axis 0 for the given columns, in place."""
    for c in cols:
        bad = np.isnan(f[:, c]) | np.isnan(v[:, c])
        good = ~bad
        f[bad, c] = np.interp(x[bad], x[good], f[good, c])
        v[bad, c] = np.interp(x[bad], x[good], v[good, c])


def filter_bright_lines(spec, noise, wave, *, regions=PAPER_MASK_REGIONS, width=BinSettings.median_width,
                        pad=BinSettings.line_pad, clip_sigma=BinSettings.clip_sigma):
    """Replace bright-line pixels by a running median (see the module doc, step 4).

    ``spec``, ``noise`` [n, n_pix]. Returns (filtered copy, bool [n, n_pix] of replaced pixels).
    """
    from scipy.ndimage import binary_dilation, median_filter

    spec = np.asarray(spec, dtype=float)
    zone = ~emission_mask(wave, regions)
    if pad:
        zone = binary_dilation(zone, iterations=int(pad))
    med = median_filter(spec, size=(1, int(width)), mode="nearest")
    hit = zone[None, :] & (spec - med > clip_sigma * np.asarray(noise, dtype=float))
    return np.where(hit, med, spec), hit


class RestFrame:
    """De-redshift + rebin of observed pixels onto the template grid, for many spectra at once.

    ``w`` [n_out, n_used] is ``rebin_matrix(wave_obs / (1+z), wave_out)`` restricted to the
    observed pixels ``used`` that overlap the output grid; ``w2`` its square (variance)."""

    def __init__(self, wave_obs, redshift: float, wave_out):
        self.wave_obs = np.asarray(wave_obs, dtype=float)
        self.zp1 = 1.0 + float(redshift)
        w_full = rebin_matrix(self.wave_obs / self.zp1, wave_out)
        self.used = np.flatnonzero(w_full.getnnz(axis=0) > 0)
        self.w = w_full[:, self.used].tocsr()
        self.w2 = self.w.multiply(self.w).tocsr()
        self.x_used = self.wave_obs[self.used]

    def rows(self, keep: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(W, W**2) for the output pixels ``keep`` only (e.g. the S/N window)."""
        idx = np.flatnonzero(keep)
        return self.w[idx], self.w2[idx]

    def count_bad(self, flux2d, var2d) -> np.ndarray:
        """Masked (NaN) used pixels per column of ``flux2d`` / ``var2d`` [n_wave, n]."""
        return np.count_nonzero(np.isnan(flux2d[self.used]) | np.isnan(var2d[self.used]), axis=0)

    def rebin(self, flux2d, var2d, cols, nbad_cols, wf=None, wv=None) -> tuple[np.ndarray, np.ndarray]:
        """float32 rest-frame (spectrum, variance) [len(cols), rows of wf] of columns ``cols`` of
        ``flux2d`` / ``var2d`` [n_wave, n] (NaN = masked, interpolated over where ``nbad_cols`` > 0)."""
        wf = self.w if wf is None else wf
        wv = self.w2 if wv is None else wv
        f = flux2d[np.ix_(self.used, cols)].astype(np.float64)
        v = var2d[np.ix_(self.used, cols)].astype(np.float64)
        fill_masked(f, v, self.x_used, np.flatnonzero(np.asarray(nbad_cols) > 0))
        return ((wf @ f).T * self.zp1).astype(np.float32), ((wv @ v).T * self.zp1**2).astype(np.float32)


@dataclass(frozen=True)
class Finished:
    full: np.ndarray  # [n, n_out] float64, bright lines filtered
    noise: np.ndarray  # [n, n_out] float64, sqrt of the rest-frame variance
    hit: np.ndarray  # [n, n_out] bool, pixels the filter replaced
    mask: np.ndarray  # [n_out] bool, True = kept (Table 2)
    norm: np.ndarray  # [n] median of ``full`` over the kept pixels


def finish(full, full_var, wave_out, settings: BinSettings = BinSettings()) -> Finished:
    """Rest-frame spectra [n, n_out] + variance -> bright lines filtered, Table 2 mask, median norm."""
    noise = np.sqrt(full_var)
    mask = emission_mask(wave_out)
    if settings.line_filter:
        full, hit = filter_bright_lines(full, noise, wave_out, width=settings.median_width, pad=settings.line_pad,
                                        clip_sigma=settings.clip_sigma)
    else:
        hit = np.zeros(np.shape(full), bool)
    norm = np.median(full[:, mask], axis=1)
    return Finished(full=full, noise=noise, hit=hit, mask=mask, norm=norm)


def snr_in_window(full, full_var, wave_out, window) -> np.ndarray:
    """Mean flux / sqrt(mean variance) over ``window`` (A rest), per output pixel."""
    win = (wave_out >= window[0]) & (wave_out <= window[1])
    return full[:, win].mean(axis=1) / np.sqrt(full_var[:, win].mean(axis=1))


__all__ = ["BinSettings", "Finished", "RestFrame", "SNR_WINDOW", "check_coverage", "fill_masked", "filter_bright_lines",
           "finish", "mask_bad", "rebin_matrix", "rest_edges", "snr_in_window", "vacuum_to_air"]
