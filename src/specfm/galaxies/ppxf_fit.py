"""The pPXF baseline: the PHANGS-MUSE two-fit recipe on the same bins with the same templates.

GalProTE Sect. 4.3 (after Emsellem et al. 2022): "pPXF in the PHANGS-MUSE pipeline is run twice: the
first iteration determines extinction, which is then fixed in the second iteration for extracting
stellar properties. A multiplicative polynomial is applied in this step ... and does not employ
regularization." Here, per Voronoi bin:

* inputs: ``Bins.spectra_full`` / ``noise_full`` (rest frame, 948 px on the paper grid, bright lines
  median-filtered), divided by ``Bins.norm`` (their median over the Table 2 kept pixels), so the
  galaxy is median-normalised exactly like the templates of ``TemplateGrid`` (median-normalised at the
  MUSE LSF). The template weights are then light fractions in the model's sense;
* log-rebinning (``ppxf.ppxf_util.log_rebin``): the galaxy keeps its 948 pixels, which fixes
  ``velscale`` = c ln(lambda_max / lambda_min) / 948 = 127.3 km/s (the 2.48 A pixels are 157 km/s at
  4750 A and 105 km/s at 7100 A); the templates are log-rebinned at ``velscale / velscale_ratio``
  (default ratio 2: 64 km/s, so the LOSVD is applied at a finer sampling than the galaxy pixels, then
  integrated over them, which is what ``velscale_ratio`` is for). The variance goes through the
  squared overlap matrix of the same rebinning (var_log = W**2 @ var, W[j, k] = overlap of log pixel j
  with linear pixel k / width of j; exact for independent pixels, ignoring the correlation the
  rebinning creates, as ``cube.preprocess`` does for the MUSE noise);
* ``vsyst``: templates and galaxy are both rest frame and start at the same wavelength, so ``vsyst``
  is c ln(<lam_temp[:ratio]> / lam_gal[0]) (pPXF's own formula, ~0) computed here rather than by
  passing ``lam_temp``: with ``lam_temp`` pPXF insists that the templates extend >= |V| + 900 km/s beyond
  the fitted range, which templates cut to the same 4749-7100 A grid cannot do;
* ``goodpixels``: log pixels that overlap no Table 2 pixel (the same 72 masked pixels as the model),
  no invalid input pixel, and lie more than ``edge_kms`` (default 1000 km/s: 16 A blue, 24 A red, ~16
  px) inside both ends, where the FFT convolution of the templates with the LOSVD would reach the
  zero padding beyond the template range;
* fit 1 (attenuation): kinematics (V, sigma; ``moments=2``) free, no additive (``degree=-1``) and no
  multiplicative polynomial, A_V free in ``av_bounds``. Attenuation through pPXF's ``dust`` keyword
  with a callable O'Donnell (1994), R_V = 3.1 curve from ``dust_extinction`` (``O94Attenuation``):
  the law the GalProTE training set and the mock cube use, so A_V means the same in all three. Not the
  ``reddening`` keyword: pPXF 9 documents it as obsolete, and it builds the same ``dust`` entry
  internally anyway (Calzetti 2000 unless a function is given); ``dust`` states the law, the bound
  and the fixing explicitly;
* fit 2 (populations): the same templates, A_V fixed at fit 1's value (``dust[...]["fixed"]``), a
  multiplicative Legendre polynomial of degree ``degree`` (12, as PHANGS), no additive polynomial,
  kinematics refitted from fit 1's solution, regularisation off (``regul=0``) unless asked.

Outputs per bin (fit 2 unless stated): light weights [n_Z, n_age] (pPXF's template weights,
normalised to sum 1), light-weighted log age and [M/H], A_V (fit 1), the mean and std of the residual
galaxy - bestfit on the good pixels (in units of the median-normalised spectrum), V and sigma (km/s,
relative to the systemic redshift used to de-redshift the cube), chi2/DOF, and the wall seconds the
two fits took. A bin whose fit raises (or whose data are unusable) gets NaNs, ``OK = False`` and its
error in the log; the map goes on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from dust_extinction.parameter_averages import O94

from .cube import Bins
from .template_table import TemplateGrid

log = logging.getLogger(__name__)

C_KMS = 299792.458
QUANTITIES = ("LOGAGE", "MH", "AV", "RESID_MEAN", "RESID_STD", "VEL", "SIGMA", "CHI2", "SECONDS")
UNITS = {"LOGAGE": "log10(yr)", "MH": "dex", "AV": "mag", "RESID_MEAN": "", "RESID_STD": "", "VEL": "km/s",
         "SIGMA": "km/s", "CHI2": "", "SECONDS": "s"}


class O94Attenuation:
    """pPXF ``dust`` function: f(lam [A], a_v) = 10^(-0.4 a_v A(lam)/A(V)), O'Donnell 1994 with R_V.

    A(lam)/A(V) does not depend on a_v, so it is computed once per wavelength vector and cached
    (pPXF calls the function with the same ``lam`` at every iteration).
    """

    def __init__(self, rv: float = 3.1):
        self.rv = float(rv)
        self._law = O94(Rv=self.rv)
        self._key = None
        self._k = None

    def curve(self, lam) -> np.ndarray:
        lam = np.asarray(lam, dtype=float)
        key = (lam.shape, float(lam.flat[0]), float(lam.flat[-1]))
        if key != self._key:
            self._k = np.asarray(self._law(lam * u.AA), dtype=float)
            self._key = key
        return self._k

    def __call__(self, lam, a_v):
        return 10.0 ** (-0.4 * a_v * self.curve(lam))

    def __getstate__(self):  # picklable for worker processes: the cache is rebuilt there
        return {"rv": self.rv}

    def __setstate__(self, state):
        self.__init__(state["rv"])


@dataclass
class PPXFSetup:
    """Everything shared by the per-bin fits (log-rebinned templates, grids, masks, options)."""

    wave: np.ndarray  # [n_lin] linear rest-frame grid of the bins and templates
    ln_lam: np.ndarray  # [n_log] galaxy log grid
    lam: np.ndarray  # exp(ln_lam)
    velscale: float  # km/s per galaxy pixel
    velscale_ratio: int
    vsyst: float  # km/s
    templates: np.ndarray  # [n_log_t, n_Z * n_age] log-rebinned, column iz * n_age + ia
    templates_rfft: np.ndarray
    shape: tuple  # (n_Z, n_age)
    log_age: np.ndarray
    mh: np.ndarray
    var_matrix: np.ndarray  # [n_log, n_lin] W**2: variance propagation of the galaxy log-rebinning
    mask_lin: np.ndarray  # [n_lin] True = kept (Table 2)
    good_base: np.ndarray  # [n_log] bool: Table 2 and the edge margins
    dust_func: O94Attenuation
    options: dict


def overlap_matrix(edges_in, edges_out) -> np.ndarray:
    """Dense [n_out, n_in] W: W[j, k] = overlap(out pixel j, in pixel k) / width(out pixel j)."""
    ein, eout = np.asarray(edges_in, float), np.asarray(edges_out, float)
    lo = np.maximum(eout[:-1, None], ein[None, :-1])
    hi = np.minimum(eout[1:, None], ein[None, 1:])
    return np.clip(hi - lo, 0.0, None) / np.diff(eout)[:, None]


def prepare(templates: TemplateGrid, wave=None, *, velscale_ratio: int = 2, edge_kms: float = 1000.0,
            rv: float = 3.1, **options) -> PPXFSetup:
    """Log-rebin the templates onto the galaxy's log grid (module docstring) and build the masks."""
    wave = np.asarray(templates.wave if wave is None else wave, dtype=float)
    if wave.shape != templates.wave.shape or not np.allclose(wave, templates.wave, rtol=0, atol=1e-6):
        raise ValueError("the bins and the templates must share one wavelength grid (the paper grid)")
    if not isinstance(velscale_ratio, (int, np.integer)) or velscale_ratio < 1:
        raise ValueError(f"velscale_ratio must be an integer >= 1, got {velscale_ratio!r}")
    from ppxf.ppxf_util import log_rebin

    lam_range = wave[[0, -1]]
    _, ln_lam, velscale = log_rebin(lam_range, np.zeros(wave.size))
    n_z, n_age, _ = templates.flux.shape
    flat = np.asarray(templates.flux, dtype=float).reshape(n_z * n_age, -1).T  # [n_lin, n_t]
    tpl, ln_lam_t, _ = log_rebin(lam_range, flat, velscale=velscale / velscale_ratio)
    lam = np.exp(ln_lam)
    lam_t = np.exp(ln_lam_t)
    vsyst = C_KMS * np.log(np.mean(lam_t[:velscale_ratio]) / lam[0])
    dlam = (wave[-1] - wave[0]) / (wave.size - 1)  # log_rebin's linear pixel edges for a 2-element lam
    edges_lin = np.linspace(wave[0] - 0.5 * dlam, wave[-1] + 0.5 * dlam, wave.size + 1)
    dln = velscale / C_KMS
    edges_log = np.exp(np.concatenate([ln_lam - 0.5 * dln, [ln_lam[-1] + 0.5 * dln]]))
    var_matrix = overlap_matrix(edges_lin, edges_log) ** 2
    mask_lin = np.asarray(templates.mask, bool)
    masked_frac, _, _ = log_rebin(lam_range, (~mask_lin).astype(float))
    good = masked_frac < 1e-9
    lo = lam_t[0] * np.exp(edge_kms / C_KMS)
    hi = lam_t[-1] * np.exp(-edge_kms / C_KMS)
    good &= (lam >= lo) & (lam <= hi)
    npad = 2 ** int(np.ceil(np.log2(max(tpl.shape[0], lam.size))))
    opts = {"velscale_ratio": int(velscale_ratio), "edge_kms": float(edge_kms), "rv": float(rv), **options}
    return PPXFSetup(wave=wave, ln_lam=ln_lam, lam=lam, velscale=float(velscale),
                     velscale_ratio=int(velscale_ratio), vsyst=float(vsyst), templates=tpl,
                     templates_rfft=np.fft.rfft(tpl, npad, axis=0), shape=(n_z, n_age), var_matrix=var_matrix,
                     log_age=np.asarray(templates.log_age, float), mh=np.asarray(templates.mh, float),
                     mask_lin=mask_lin, good_base=good, dust_func=O94Attenuation(rv), options=opts)


def _galaxy(setup: PPXFSetup, spec, noise, norm):
    """One bin -> (galaxy, noise, goodpixels) on the log grid, median-normalised; ValueError if unusable."""
    from ppxf.ppxf_util import log_rebin

    spec = np.asarray(spec, dtype=float)
    noise = np.asarray(noise, dtype=float)
    bad = ~np.isfinite(spec) | ~np.isfinite(noise) | (noise <= 0)
    kept_ok = setup.mask_lin & ~bad
    if kept_ok.sum() < 0.5 * setup.mask_lin.sum():
        raise ValueError(f"{int(bad.sum())} of {bad.size} pixels invalid (NaN, inf or noise <= 0)")
    if not (np.isfinite(norm) and norm > 0):
        norm = float(np.median(spec[kept_ok]))
        if not norm > 0:
            raise ValueError(f"median flux {norm:g} <= 0")
    spec = np.where(bad, 0.0, spec) / norm
    var = np.where(bad, 1.0, noise / norm) ** 2
    lam_range = setup.wave[[0, -1]]
    gal, _, _ = log_rebin(lam_range, spec)
    var_log = setup.var_matrix @ var
    bad_log, _, _ = log_rebin(lam_range, bad.astype(float))
    good = setup.good_base & (bad_log < 1e-9)
    if good.sum() < 0.5 * setup.good_base.sum():
        raise ValueError(f"only {int(good.sum())} of {int(setup.good_base.sum())} good pixels left")
    err = np.sqrt(np.clip(var_log, 0.0, None))
    err = np.where(good & (err > 0), err, np.median(err[good]) if np.any(err[good] > 0) else 1.0)
    if not np.all(err > 0):
        raise ValueError("noise is zero on the good pixels")
    return gal, err, np.flatnonzero(good)


def fit_one(setup: PPXFSetup, spec, noise, norm=np.nan) -> dict:
    """The two PHANGS fits of one bin (module docstring); raises on failure."""
    from ppxf.ppxf import ppxf

    o = setup.options
    gal, err, good = _galaxy(setup, spec, noise, norm)
    n_t = setup.templates.shape[1]
    comp = np.ones(n_t, bool)
    av_lo, av_hi = o["av_bounds"]
    bounds = [[-o["vmax_kms"], o["vmax_kms"]], list(o["sigma_bounds"])]
    common = dict(velscale_ratio=setup.velscale_ratio, vsyst=setup.vsyst, lam=setup.lam, goodpixels=good,
                  moments=2, degree=-1, bounds=bounds, quiet=True, templates_rfft=setup.templates_rfft)
    if o["regul"] > 0:
        common.update(regul=o["regul"], reg_dim=setup.shape)
    start = [0.0, float(np.clip(o["sigma_start"], *o["sigma_bounds"]))]
    dust1 = [{"start": [float(o["av_start"])], "bounds": [[av_lo, av_hi]], "component": comp,
              "func": setup.dust_func}]
    pp1 = ppxf(setup.templates, gal, err, setup.velscale, start, mdegree=0, dust=dust1, **common)
    av = float(pp1.dust[0]["sol"][0])
    dust2 = [{"start": [av], "bounds": [[av_lo, av_hi]], "fixed": [True], "component": comp,
              "func": setup.dust_func}]
    start2 = [float(np.clip(pp1.sol[0], -o["vmax_kms"], o["vmax_kms"])),
              float(np.clip(pp1.sol[1], *o["sigma_bounds"]))]
    pp2 = ppxf(setup.templates, gal, err, setup.velscale, start2, mdegree=o["mdegree"], dust=dust2, **common)
    w = np.asarray(pp2.weights[-n_t:], dtype=float)
    total = w.sum()
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"template weights sum to {total:g}")
    w = (w / total).reshape(setup.shape)
    resid = (gal - pp2.bestfit)[pp2.goodpixels]
    return {
        "weights": w,
        "LOGAGE": float(w.sum(axis=0) @ setup.log_age),
        "MH": float(w.sum(axis=1) @ setup.mh),
        "AV": av,
        "RESID_MEAN": float(resid.mean()),
        "RESID_STD": float(resid.std()),
        "VEL": float(pp2.sol[0]),
        "SIGMA": float(pp2.sol[1]),
        "CHI2": float(pp2.chi2),
    }


# --------------------------------------------------------------------------------------- the map

_WORKER: dict = {}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(n_jobs: int, cores: int | None = None) -> int:
    """BLAS/OpenMP threads each of ``n_jobs`` worker processes may use so that n_jobs x threads <= cores
    (at least 1): a forked worker otherwise starts as many BLAS threads as the machine has cores, and
    n_jobs workers oversubscribe the CPU n_jobs-fold."""
    if cores is None:
        cores = available_cores()
    return max(1, int(cores) // max(1, int(n_jobs)))


def _init_worker(setup: PPXFSetup, threads: int | None = None) -> None:
    _WORKER["setup"] = setup
    if threads is not None:
        from threadpoolctl import threadpool_limits

        # kept referenced for the worker's lifetime: the limits hold until the object is dropped
        _WORKER["thread_limits"] = threadpool_limits(limits=int(threads))


def _blas_threads() -> int:
    """The largest thread count of the BLAS / OpenMP pools loaded in this process (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return max((int(p["num_threads"]) for p in threadpool_info()), default=1)


def worker_pool(setup: PPXFSetup, n_jobs: int, threads: int | None = None):
    """A process pool of ``n_jobs`` pPXF workers, each limited to ``threads`` BLAS/OpenMP threads
    (default `threads_per_job`); forked on Linux, else spawned."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_job(n_jobs) if threads is None else int(threads)
    # fork where available: the workers inherit the setup, and a caller without a
    # `if __name__ == "__main__"` guard (a Snakemake script) is not re-run in every worker
    method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=int(n_jobs), mp_context=mp.get_context(method),
                               initializer=_init_worker, initargs=(setup, threads))


def _run_chunk(idx, spectra, noises, norms, setup=None):
    setup = setup if setup is not None else _WORKER["setup"]
    out = []
    for i, s, n, m in zip(idx, spectra, noises, norms):
        t0 = time.perf_counter()
        try:
            res, error = fit_one(setup, s, n, m), None
        except Exception as exc:  # noqa: BLE001 -- one bad bin must not stop the map
            res, error = None, f"{type(exc).__name__}: {exc}"
        out.append((int(i), res, error, time.perf_counter() - t0))
    return out


def fit_bins(bins: Bins, templates: TemplateGrid, *, degree: int = 12, progress: bool = True, n_jobs: int = 1,
             velscale_ratio: int = 2, regul: float = 0.0, av_bounds=(0.0, 4.0), av_start: float = 0.5,
             vmax_kms: float = 400.0, sigma_bounds=(1.0, 400.0), sigma_start: float = 100.0,
             edge_kms: float = 1000.0, rv: float = 3.1, chunk: int = 4, threads: int | None = None) -> dict:
    """pPXF on every bin of ``bins`` with ``templates`` (the two-fit recipe of the module docstring).

    ``degree``: multiplicative Legendre degree of fit 2 (PHANGS: 12). ``n_jobs`` > 1 fits chunks of
    ``chunk`` bins in that many processes (forked on Linux, else spawned), each limited to ``threads``
    BLAS/OpenMP threads (default `threads_per_job`: available cores // n_jobs). A_V is bounded
    to ``av_bounds`` (pPXF's default reddening range; wider than GalProTE's 0-1.5 so pPXF is not
    handed the model's prior); V within +-``vmax_kms`` of the systemic velocity the cube was
    de-redshifted with, sigma within ``sigma_bounds``.

    Returns a dict: ``weights`` [n_bins, n_Z, n_age] (light fractions, sum 1), one float array
    [n_bins] per name in ``QUANTITIES`` (SECONDS = wall time of the two fits of that bin), ``OK``
    [n_bins] bool, and ``meta`` (settings, velscale, number and ids of failed bins with their first
    errors, ``seconds_per_spectrum`` = mean SECONDS over the fitted bins, ``wall_seconds``). Failed
    bins have NaN everywhere but SECONDS.
    """
    from tqdm.auto import tqdm

    setup = prepare(templates, bins.wave, velscale_ratio=velscale_ratio, edge_kms=edge_kms, rv=rv,
                    mdegree=int(degree), regul=float(regul), av_bounds=tuple(map(float, av_bounds)),
                    av_start=float(av_start), vmax_kms=float(vmax_kms),
                    sigma_bounds=tuple(map(float, sigma_bounds)), sigma_start=float(sigma_start))
    n = bins.n_bins
    n_z, n_age = setup.shape
    out = {"weights": np.full((n, n_z, n_age), np.nan)}
    out.update({q: np.full(n, np.nan) for q in QUANTITIES})
    out["OK"] = np.zeros(n, bool)
    errors: dict[int, str] = {}
    spectra, noises, norms = bins.spectra_full, bins.noise_full, np.asarray(bins.norm, float)
    t_start = time.perf_counter()
    bar = tqdm(total=n, desc="pPXF", unit="bin", disable=not progress, mininterval=1.0)

    def collect(results):
        for i, res, error, seconds in results:
            out["SECONDS"][i] = seconds
            if res is None:
                errors[i] = error
                log.warning("pPXF bin %d failed: %s", i, error)
            else:
                out["OK"][i] = True
                out["weights"][i] = res["weights"]
                for q in QUANTITIES[:-1]:
                    out[q][i] = res[q]
        bar.update(len(results))

    try:
        if n_jobs <= 1 or n <= chunk:
            for i in range(n):
                collect(_run_chunk([i], spectra[i:i + 1], noises[i:i + 1], norms[i:i + 1], setup))
        else:
            from concurrent.futures import as_completed

            with worker_pool(setup, n_jobs, threads) as pool:
                futures = [pool.submit(_run_chunk, list(range(lo, min(lo + chunk, n))), spectra[lo:lo + chunk],
                                       noises[lo:lo + chunk], norms[lo:lo + chunk])
                           for lo in range(0, n, chunk)]
                for fut in as_completed(futures):
                    collect(fut.result())
    finally:
        bar.close()
    wall = time.perf_counter() - t_start
    ok = out["OK"]
    if errors:
        log.warning("pPXF: %d of %d bins failed (NaN in the maps); first: bin %d: %s", len(errors), n,
                    min(errors), errors[min(errors)])
    sps = float(out["SECONDS"][ok].mean()) if ok.any() else float("nan")
    log.info("pPXF: %d bins in %.1f s wall (%d jobs), %.3f s per spectrum (two fits), %d failed",
             n, wall, n_jobs, sps, len(errors))
    first = sorted(errors)[:20]
    out["meta"] = {
        "method": "pPXF two-fit (PHANGS-MUSE): fit 1 A_V (dust, O94) + kinematics, no polynomials; "
                  "fit 2 A_V fixed, multiplicative Legendre polynomial, kinematics",
        "ppxf_version": _ppxf_version(),
        "mdegree": int(degree), "degree": -1, "regul": float(regul), "moments": 2,
        "velscale_kms": setup.velscale, "velscale_ratio": setup.velscale_ratio, "vsyst_kms": setup.vsyst,
        "attenuation": f"O'Donnell 1994, R_V = {rv:g} (dust_extinction O94), pPXF dust keyword",
        "av_bounds": list(map(float, av_bounds)), "vmax_kms": float(vmax_kms),
        "sigma_bounds": list(map(float, sigma_bounds)), "edge_kms": float(edge_kms),
        "n_goodpixels_max": int(setup.good_base.sum()), "n_bins": n, "n_failed": len(errors),
        "failed_bins": sorted(errors), "errors": {str(i): errors[i] for i in first},
        "seconds_per_spectrum": sps, "wall_seconds": wall, "n_jobs": int(n_jobs),
        "threads_per_job": (threads_per_job(n_jobs) if threads is None else int(threads)) if n_jobs > 1 else None,
    }
    return out


def _ppxf_version() -> str:
    try:
        from importlib.metadata import version

        return version("ppxf")
    except Exception:  # noqa: BLE001
        return "unknown"


def maps_quantities(result: dict) -> dict:
    """``{NAME: (values, bunit)}`` for ``maps.write_maps`` from a ``fit_bins`` result."""
    return {q: (result[q], UNITS[q]) for q in QUANTITIES}


def write_ppxf_maps(path: str | Path, bins: Bins, templates: TemplateGrid, result: dict, *, meta=None) -> None:
    """The pPXF maps file (same layout as the model's: images, BIN_ID, GRIDS, GRID_AXES)."""
    from .maps import write_maps

    m = {k: v for k, v in result["meta"].items() if k not in ("errors", "failed_bins")}
    write_maps(path, bin_id=bins.bin_id, wcs_header=bins.wcs_header, quantities=maps_quantities(result),
               grids=np.nan_to_num(result["weights"], nan=0.0), grid_axes=(templates.log_age, templates.mh),
               meta={"ppxf": m, **dict(meta or {})})


__all__ = ["O94Attenuation", "PPXFSetup", "QUANTITIES", "UNITS", "fit_bins", "fit_one", "maps_quantities",
           "overlap_matrix", "prepare", "threads_per_job", "worker_pool", "write_ppxf_maps"]
