"""IFU cubes (PHANGS-MUSE DR1 or the mock) -> Voronoi-binned rest-frame spectra for GalProTE.

The cube files themselves (layout, header checks, reading in strips, writing) are `cube_io`'cfg.

Preprocessing (GalProTE Sect. 4.3: "pre-processed to correct for redshift (assuming a single redshift
per galaxy) and to filter out bright lines using median filters; major emission lines masked"):

1. de-redshift with one systemic z: lambda_rest = lambda_obs / (1+z), f_rest = f_obs (1+z);
2. each spaxel is rebinned onto the paper grid (948 px, 4749.37-7100.49 A) with the flux-conserving
   bin-overlap matrix W (the same algorithm as ``spectra.resample``); the variance goes through W**2,
   which is exact for independent input pixels and ignores the covariance that rebinning (and the
   MUSE pipeline's own resampling) creates between neighbouring pixels -- so the propagated noise
   is approximate (an underestimate of the true per-pixel noise, as usual for MUSE cubes);
   masked pixels (NaN, inf, variance <= 0) are linearly interpolated over within a spaxel when
   they are at most ``max_bad_frac`` of the pixels used; spaxels with more are excluded;
3. per spaxel signal = mean flux, noise = sqrt(mean variance) over the line-free rest window
   ``snr_window`` (default 5300-5500 A) on the paper grid (S/N per 2.48 A pixel); spaxels with
   S/N < ``min_snr`` are excluded (bin_id -1), the rest are Voronoi-binned to ``target_snr`` with
   ``vorbin`` (Cappellari & Copin 2003; WVT of Diehl & Statler 2006) and summed;
4. bright-line filtering on the *binned* spectra (higher S/N than single spaxels, so the outlier test
   is robust): inside the Table 2 regions widened by ``line_pad`` px, pixels more than
   ``clip_sigma`` noise sigma *above* a running median of ``median_width`` px are replaced by that
   median (emission lines and positive sky residuals; absorption lines are left alone). The Table 2
   pixels are then removed for the model input anyway, so the filter matters for the pixels next to
   the masks (line wings pushed out by rotation) and for ``spectra_full`` (used by pPXF and plots).
   Defaults (25 px = 62 A, pad 3 px, 4 sigma) measured on the mock: 0.3 kept pixels per bin replaced,
   0.7 % of pixels hit in a line-free test window (absorption-line structure at S/N > 35, not noise);
   at 3 sigma these are 0.9 px and 3.4 %;
5. per bin: the 948-px spectrum and noise, the median over the kept pixels (``norm``), and the
   876-px masked, median-normalised spectrum that the network reads.

Memory: ``read_cube`` + ``preprocess`` hold the cube (fine for the mock; a PHANGS mosaic is
several GB per extension). ``preprocess_file`` (used by the workflow) reads strips of spaxel rows
twice instead -- per-spaxel S/N first, per-bin sums after binning -- and gives the same bytes;
``python -m specfm.galaxies.bench_memory`` measures its peak RSS against cube size.

Resolution: the cube's LSF is MUSE's at the *observed* wavelength; after de-redshifting it is
FWHM_MUSE(lambda_rest (1+z)) / (1+z) in the rest frame, while the templates are at
FWHM_MUSE(lambda_rest). The difference is < 1 % for PHANGS redshifts (z < 0.01) and is not corrected.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from specfm.io import atomic_path

from .cube_io import Cube, FileSource, log_masked, open_cube, strip_rows
from .maps import quiet_wcs
from .preprocessing import BinSettings, Finished, RestFrame, check_coverage, finish, snr_in_window
from .spectra import paper_wavelength_grid

log = logging.getLogger(__name__)

FORMAT = "specfm.galaxies.bins/1"


# ------------------------------------------------------------------------------------- preprocess


@dataclass(frozen=True)
class Bins:
    wave: np.ndarray  # [948] Angstrom, rest frame (air)
    mask: np.ndarray  # [948] bool, True = kept (Table 2)
    spectra_full: np.ndarray  # [n_bins, 948] float32, rest frame, summed over the bin, cube units * (1+z)
    noise_full: np.ndarray  # [n_bins, 948] float32, 1-sigma, same units (approximate: see the module doc)
    spectra: np.ndarray  # [n_bins, 876] float32, spectra_full[:, mask] / norm: the model input
    norm: np.ndarray  # [n_bins] median of spectra_full over the kept pixels
    snr: np.ndarray  # [n_bins] mean flux / sqrt(mean variance) in the S/N window, per 2.48 A pixel
    bin_id: np.ndarray  # [ny, nx] int32, -1 = not used
    xbar: np.ndarray  # [n_bins] flux-weighted centroid, 0-based pixel x (column)
    ybar: np.ndarray  # [n_bins] ... y (row)
    n_spaxels: np.ndarray  # [n_bins] int32
    n_filtered: np.ndarray  # [n_bins] int32, pixels replaced by the bright-line median filter
    wcs_header: str  # celestial WCS of the cube (fits.Header.tostring(sep="\n"))
    meta: dict = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        return int(self.norm.size)

    @property
    def wcs(self) -> WCS:
        return quiet_wcs(fits.Header.fromstring(self.wcs_header, sep="\n"))


def _voronoi(x, y, signal, noise, target_snr: float, name: str) -> np.ndarray:
    """vorbin bin numbers; every spaxel its own bin when all already reach the target."""
    sn = signal / noise
    if sn.min() >= target_snr:
        log.info("%s: all %d spaxels reach S/N %.1f: no binning needed", name, sn.size, target_snr)
        return np.arange(sn.size)
    total = signal.sum() / np.sqrt(np.sum(noise**2))
    if total < target_snr:
        raise ValueError(
            f"{name}: the {sn.size} usable spaxels together reach S/N {total:.1f} < target {target_snr:g}; "
            "lower target_snr"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vorbin's deprecation notice (PowerBin) on import and call
        from vorbin.voronoi_2d_binning import voronoi_2d_binning

        out = voronoi_2d_binning(x, y, signal, noise, target_snr, cvt=True, pixelsize=1.0, plot=False,
                                 quiet=True, wvt=True)
    return np.asarray(out[0])


class _MemorySource:
    """Row strips of an in-memory ``Cube`` (views; its NaNs are the mask)."""

    def __init__(self, cube: Cube):
        if cube.var is None:
            raise ValueError(f"{cube.path}: no variance (STAT) extension: cannot compute S/N for binning")
        self.cube, self.name, self.wave, self.shape = cube, cube.path, cube.wave, cube.shape
        self.wcs_celestial, self.bunit = cube.wcs_celestial, cube.bunit

    def read(self, y0: int, y1: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.cube.flux[:, y0:y1], self.cube.var[:, y0:y1]



def preprocess(cube: Cube, redshift: float, settings: BinSettings | None = None, **overrides) -> Bins:
    """Cube -> rest-frame, Voronoi-binned, line-filtered, masked and median-normalised spectra.

    See the module docstring for each step and `BinSettings` for the knobs (``overrides``: its fields
    by keyword). ``preprocess_file`` does the same from a file, one strip of rows at a time.
    """
    return _preprocess(_MemorySource(cube), redshift, replace(settings or BinSettings(), **overrides))


def preprocess_file(path: str | Path, redshift: float, settings: BinSettings | None = None, *, margin_pix: int = 8,
                    kind: str = "phangs", **overrides) -> Bins:
    """``preprocess(read_cube(path, redshift=redshift), redshift, ...)`` without holding the cube.

    Two passes over strips of spaxel rows read from the file (``section``, no memmap, so untouched
    planes and rows are never paged in): the first computes each spaxel's masked-pixel count,
    signal and noise (only the S/N window is rebinned); after Voronoi binning the second re-reads
    the strips and adds each selected spaxel's rebinned spectrum and variance to its bin. Memory:
    one strip (``max_chunk_mb``) + per-spaxel scalars + the per-bin sums (float64 [n_bins, 948] x 2),
    not the cube (several GB for a PHANGS mosaic). The per-bin sums are added spaxel by spaxel in
    the same order as the in-memory path, so the results are the same bytes. ``kind``: "phangs" (or
    "mock", the same layout: DATA/STAT) or "manga" (a MaNGA LOGCUBE, `specfm.galaxies.manga`).
    """
    cfg = replace(settings or BinSettings(), **overrides)
    if kind == "manga":
        from .manga import MangaSource

        with MangaSource(path, redshift=redshift, wave_out=cfg.wave_out, margin_pix=margin_pix) as src:
            return _preprocess(src, redshift, cfg)
    if kind not in ("phangs", "mock"):
        raise ValueError(f"{path}: unknown cube kind {kind!r} (phangs, mock or manga)")
    cf = open_cube(path, redshift=redshift, wave_out=cfg.wave_out, margin_pix=margin_pix, memmap=False)
    with cf.hdul:
        return _preprocess(FileSource(cf), redshift, cfg)


def _preprocess(src, redshift: float, cfg: BinSettings) -> Bins:
    """The steps of the module docstring over a source of row strips (`_MemorySource`,
    `cube_io.FileSource`, `manga.MangaSource`): one code path, so a cube binned from memory and one
    binned from its file in strips give the same bytes."""
    wave_out = paper_wavelength_grid() if cfg.wave_out is None else np.asarray(cfg.wave_out, dtype=float)
    rf, win_rows = _rest_frame(src, redshift, wave_out, cfg.snr_window)
    rows = min(strip_rows(src.wave.size, src.shape[1], cfg.max_chunk_mb), src.shape[0])
    nbad, signal_all, noise_all = _spaxel_snr(src, rf, win_rows, rows, cfg)
    idx, signal, noise, counts = _select_spaxels(src.name, nbad, signal_all, noise_all, rf.used.size, cfg)
    inv = _bin_numbers(src.name, idx, signal, noise, src.shape[1], cfg.target_snr)
    full, full_var = _bin_sums(src, rf, rows, nbad, idx, inv, cfg.chunk, wave_out.size)
    done = finish(full, full_var, wave_out, cfg)
    done, full_var, idx, inv, signal = _drop_unnormalisable(src.name, done, full_var, idx, inv, signal)
    bin_id, n_in, xbar, ybar = _bin_geometry(idx, inv, signal, src.shape, done.norm.size)
    snr = snr_in_window(done.full, full_var, wave_out, cfg.snr_window)
    _log_bins(src.name, n_in, snr, cfg.target_snr)
    return Bins(
        wave=wave_out,
        mask=done.mask,
        spectra_full=done.full.astype(np.float32),
        noise_full=done.noise.astype(np.float32),
        spectra=(done.full[:, done.mask] / done.norm[:, None]).astype(np.float32),
        norm=done.norm.astype(np.float64),
        snr=snr.astype(np.float64),
        bin_id=bin_id,
        xbar=xbar,
        ybar=ybar,
        n_spaxels=n_in.astype(np.int32),
        n_filtered=done.hit.sum(axis=1).astype(np.int32),
        wcs_header=src.wcs_celestial.to_header().tostring(sep="\n"),
        meta=_meta(src, redshift, cfg, counts),
    )


def _rest_frame(src, redshift: float, wave_out: np.ndarray, snr_window) -> tuple[RestFrame, tuple]:
    """The de-redshift + rebin operator and its S/N-window rows, checked before any pixel is read
    (a cube that misses the grid, or a window outside it, fails at once)."""
    check_coverage(src.wave, redshift, src.name, wave_out)
    rf = RestFrame(src.wave, redshift, wave_out)
    win = (wave_out >= snr_window[0]) & (wave_out <= snr_window[1])
    if not win.any():
        raise ValueError(f"snr_window {snr_window} holds no pixel of the output grid")
    return rf, rf.rows(win)


def _strips(src, rows: int, first: bool):
    """(flat index of the strip's first spaxel, reader) per strip of ``rows`` rows; the reader is
    called only when the strip is needed, so pass 2 never reads a strip without a binned spaxel."""
    ny, nx = src.shape
    for y0 in range(0, ny, rows):
        y1 = min(y0 + rows, ny)
        yield y0 * nx, lambda y0=y0, y1=y1: src.read(y0, y1, first)


def _spaxel_snr(src, rf: RestFrame, win_rows, rows: int, cfg: BinSettings):
    """Pass 1, per spaxel: masked-pixel count, signal and noise in the S/N window.

    Only the window's rows of W are applied: the spectra are rebinned in full only once the bins
    are known (pass 2), so this pass costs a small part of the rebinning."""
    n_wave, n_spax = src.wave.size, src.shape[0] * src.shape[1]
    nbad, signal, noise = np.zeros(n_spax, np.int64), np.zeros(n_spax), np.zeros(n_spax)
    for base, read in _strips(src, rows, first=True):
        f3, v3 = read()
        flux2d, var2d = f3.reshape(n_wave, -1), v3.reshape(n_wave, -1)
        end = base + flux2d.shape[1]
        _strip_snr(rf, flux2d, var2d, win_rows, cfg, nbad[base:end], signal[base:end], noise[base:end])
        del f3, v3, flux2d, var2d
    if hasattr(src, "n_bad"):  # read from a file: counted while reading
        log.info("%s: %d x %d spaxels x %d planes (%.1f-%.1f A) read in strips of %d rows", src.name, *src.shape,
                 n_wave, src.wave[0], src.wave[-1], rows)
        log_masked(src.name, src.n_bad, src.n_pix, src.n_empty, n_spax)
    return nbad, signal, noise


def _strip_snr(rf: RestFrame, flux2d, var2d, win_rows, cfg: BinSettings, nbad, signal, noise) -> None:
    """Pass 1 on one strip, into views of the per-spaxel arrays; spaxels that will be excluded for
    masked pixels are not rebinned (their signal and noise stay 0)."""
    ns = flux2d.shape[1]
    for s0 in range(0, ns, cfg.chunk):
        sl = slice(s0, min(s0 + cfg.chunk, ns))
        nbad[sl] = rf.count_bad(flux2d[:, sl], var2d[:, sl])
    ok = np.flatnonzero(nbad <= cfg.max_bad_frac * rf.used.size)
    ok = ok[nbad[ok] < rf.used.size]
    for c0 in range(0, ok.size, cfg.chunk):
        cols = ok[c0 : c0 + cfg.chunk]
        spec, var = rf.rebin(flux2d, var2d, cols, nbad[cols], *win_rows)
        signal[cols] = spec.mean(axis=1, dtype=np.float64)
        noise[cols] = np.sqrt(var.mean(axis=1, dtype=np.float64))


def _select_spaxels(name: str, nbad, signal_all, noise_all, n_used: int, cfg: BinSettings):
    """The spaxels that enter the binning: (flat indices, signal, noise, counts of the excluded).

    Empty spaxels, those with more than ``max_bad_frac`` masked pixels and those below ``min_snr``
    are left out (bin_id -1); the counts go to the log and to the bins' meta, so a user can see why
    a region has no bins."""
    state = np.where(nbad == n_used, 1, np.where(nbad > cfg.max_bad_frac * n_used, 2, 0)).astype(np.int8)
    ok_idx = np.flatnonzero(state == 0)
    signal, noise = signal_all[ok_idx], noise_all[ok_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        sn = np.where(noise > 0, signal / noise, 0.0)
    good_ok = np.flatnonzero(np.isfinite(sn) & (sn >= cfg.min_snr) & (signal > 0))
    counts = {
        "n_spaxels": int(nbad.size),
        "n_empty": int((state == 1).sum()),
        "n_too_many_masked": int((state == 2).sum()),
        "n_below_min_snr": int(ok_idx.size - good_ok.size),
        "n_pixels_interpolated": int(nbad[ok_idx].sum()),
    }
    log.info("%s: %d spaxels; excluded %d empty, %d with > %.0f%% masked pixels, %d below S/N %.1f; "
             "%d masked pixels interpolated", name, nbad.size, counts["n_empty"], counts["n_too_many_masked"],
             100 * cfg.max_bad_frac, counts["n_below_min_snr"], cfg.min_snr, counts["n_pixels_interpolated"])
    if good_ok.size == 0:
        raise ValueError(f"{name}: no spaxel has S/N >= {cfg.min_snr:g} in "
                         f"{cfg.snr_window[0]:.0f}-{cfg.snr_window[1]:.0f} A")
    return ok_idx[good_ok], signal[good_ok], noise[good_ok], counts


def _bin_numbers(name: str, idx, signal, noise, nx: int, target_snr: float) -> np.ndarray:
    """Voronoi bin of each selected spaxel, renumbered 0..n_bins-1 in vorbin's order."""
    yy, xx = np.divmod(idx, nx)
    classes = _voronoi(xx.astype(float), yy.astype(float), signal, noise, target_snr, name)
    _, inv = np.unique(classes, return_inverse=True)
    return inv


def _bin_sums(src, rf: RestFrame, rows: int, nbad, idx, inv, chunk: int, n_out: int):
    """Pass 2: per-bin sums of the rebinned spectra and variances (float64 [n_bins, n_out] each).

    Spaxel by spaxel in index order (np.add.at adds in order, as a CSR product would), whatever the
    strip size: the reason the strip path gives the in-memory path's bytes."""
    n_wave, n_spax, nx = src.wave.size, src.shape[0] * src.shape[1], src.shape[1]
    bin_of = np.full(n_spax, -1, np.int64)
    bin_of[idx] = inv
    n_bins = int(inv.max()) + 1
    full, full_var = np.zeros((n_bins, n_out)), np.zeros((n_bins, n_out))
    for base, read in _strips(src, rows, first=False):
        sel = np.flatnonzero(bin_of[base : base + min(rows * nx, n_spax - base)] >= 0)
        if sel.size == 0:
            continue
        f3, v3 = read()
        flux2d, var2d = f3.reshape(n_wave, -1), v3.reshape(n_wave, -1)
        for c0 in range(0, sel.size, chunk):
            cols = sel[c0 : c0 + chunk]
            spec, var = rf.rebin(flux2d, var2d, cols, nbad[base + cols])
            np.add.at(full, bin_of[base + cols], spec.astype(np.float64))
            np.add.at(full_var, bin_of[base + cols], var.astype(np.float64))
        del f3, v3, flux2d, var2d
    return full, full_var


def _drop_unnormalisable(name: str, done: Finished, full_var, idx, inv, signal):
    """Bins whose median flux over the kept pixels is <= 0 (or NaN) cannot be median-normalised for
    the model: dropped, their spaxels set to -1 and the other bins renumbered in order."""
    keep = np.isfinite(done.norm) & (done.norm > 0)
    if keep.all():
        return done, full_var, idx, inv, signal
    log.warning("%s: %d bins with median flux <= 0 dropped", name, int((~keep).sum()))
    new = np.cumsum(keep) - 1
    inv_new = np.where(keep[inv], new[inv], -1)
    sel = inv_new >= 0
    done = replace(done, full=done.full[keep], noise=done.noise[keep], hit=done.hit[keep], norm=done.norm[keep])
    return done, full_var[keep], idx[sel], inv_new[sel], signal[sel]


def _bin_geometry(idx, inv, signal, shape: tuple[int, int], n_bins: int):
    """(bin_id map, spaxels per bin, xbar, ybar): where each bin lies, its centroid weighted by the
    spaxels' signal, for the maps."""
    ny, nx = shape
    bin_id = np.full(ny * nx, -1, np.int32)
    bin_id[idx] = inv
    n_in = np.bincount(inv, minlength=n_bins)
    yy, xx = np.divmod(idx, nx)
    tot = np.bincount(inv, weights=signal, minlength=n_bins)
    xbar = np.bincount(inv, weights=signal * xx, minlength=n_bins) / tot
    ybar = np.bincount(inv, weights=signal * yy, minlength=n_bins) / tot
    return bin_id.reshape(ny, nx), n_in, xbar, ybar


def _log_bins(name: str, n_in, snr, target_snr: float) -> None:
    """How close the multi-spaxel bins came to the target: the check a user makes first."""
    multi = n_in > 1
    log.info("%s: %d bins (%d single spaxels); S/N of multi-spaxel bins: median %.1f, min %.1f (target %.1f)",
             name, n_in.size, int((~multi).sum()), float(np.median(snr[multi])) if multi.any() else float("nan"),
             float(snr[multi].min()) if multi.any() else float("nan"), target_snr)


def _meta(src, redshift: float, cfg: BinSettings, counts: dict) -> dict:
    """What made these bins, stored with them: the settings, the units and the exclusion counts."""
    return {
        "format": FORMAT,
        "source": Path(src.name).name,
        "redshift": float(redshift),
        "target_snr": float(cfg.target_snr),
        "min_snr": float(cfg.min_snr),
        "snr_window": [float(cfg.snr_window[0]), float(cfg.snr_window[1])],
        "max_bad_frac": float(cfg.max_bad_frac),
        "line_filter": {"enabled": bool(cfg.line_filter), "median_width_px": int(cfg.median_width),
                        "pad_px": int(cfg.line_pad), "clip_sigma": float(cfg.clip_sigma),
                        "rule": "positive outliers above a running median inside Table 2 regions + pad"},
        "bunit": f"({src.bunit}) rest frame: f_obs * (1+z) per rest Angstrom",
        "variance": "W**2 propagation, covariance ignored (approximate)",
        "counts": counts,
    }


# ---------------------------------------------------------------------------------------- bins IO

_BIN_ARRAYS = {
    "wave": np.float64, "mask": np.bool_, "spectra_full": np.float32, "noise_full": np.float32,
    "spectra": np.float32, "norm": np.float64, "snr": np.float64, "bin_id": np.int32, "xbar": np.float64,
    "ybar": np.float64, "n_spaxels": np.int32, "n_filtered": np.int32,
}


def write_bins(bins: Bins, path: str | Path) -> None:
    """HDF5, one dataset per array + attributes ``format``, ``wcs_header``, ``meta`` (sorted JSON).

    No object timestamps and a fixed layout, so the same bins always give the same bytes; atomic.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            for name, dtype in _BIN_ARRAYS.items():
                h5.create_dataset(name, data=np.asarray(getattr(bins, name), dtype=dtype), track_times=False)
            h5.attrs["format"] = FORMAT
            h5.attrs["wcs_header"] = bins.wcs_header
            h5.attrs["meta"] = json.dumps(bins.meta, sort_keys=True)


def read_bins(path: str | Path) -> Bins:
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from exc
    with h5:
        fmt = h5.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(f"{path}: not a bins file of format {FORMAT} (found {fmt!r})")
        arrays = {name: h5[name][()] for name in _BIN_ARRAYS}
        wcs_header = h5.attrs["wcs_header"]
        meta = json.loads(h5.attrs["meta"])
    arrays["mask"] = arrays["mask"].astype(bool)
    return Bins(wcs_header=str(wcs_header), meta=meta, **arrays)


__all__ = ["BinSettings", "Bins", "preprocess", "preprocess_file", "read_bins", "write_bins"]
