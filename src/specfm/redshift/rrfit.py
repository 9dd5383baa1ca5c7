"""Redrock as a library: the full chi^2 scan, and the hybrid scan narrowed by SpecPT.

Both fit the spectra SpecPT sees (the merged grid, one "band", identity resolution matrix: at the
grid's pixel size the DESI LSF is part of the templates' smoothing, see rrtemplates). Redrock's
z grid is log-spaced (dlogz = 3e-4 in log10(1+z) by default, as its GALAXY templates); its
refinement (fitz) then finds the minimum between grid points.

Hybrid: SpecPT's z0 and fold spread s set a window z0 +- max(n_sigma s, min_half_width) (1 + z0)
for the same scan on the same grid spacing; the templates are rebinned to only those z, so the
cost per spectrum falls with the window's width. It inherits Redrock's precision when the true z is
inside the window and SpecPT's error when it is not (a catastrophic SpecPT error stays one).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


def _quiet():
    """Redrock prints progress to stdout; keep it out of the rule log's way."""
    return contextlib.redirect_stdout(io.StringIO())


def z_grid(zmin: float, zmax: float, dlogz: float = 3e-4) -> np.ndarray:
    return 10 ** np.arange(np.log10(1 + zmin), np.log10(1 + zmax), dlogz) - 1


def max_z_covered(template_wave: np.ndarray, data_wave: np.ndarray) -> tuple[float, float]:
    """The z range over which the template's rest coverage spans the data's observed range."""
    return max(data_wave[-1] / template_wave[-1] - 1, 0.0), data_wave[0] / template_wave[0] - 1


def _template(tpl: dict, redshifts: np.ndarray):
    from redrock.templates import Template

    with _quiet():
        return Template(spectype="GALAXY", subtype="", redshifts=np.asarray(redshifts, float),
                        wave=np.asarray(tpl["wave"], float), flux=np.asarray(tpl["flux"], float),
                        igm_model="Inoue14", method="PCA")


def _targets(wave, flux, ivar, ids):
    from redrock.targets import DistTargetsCopy, Spectrum, Target

    r = sp.identity(wave.size, format="dia")
    tgs = [Target(int(t), [Spectrum(wave, np.asarray(f, float), np.asarray(iv, float).copy(), r, band="m")])
           for t, f, iv in zip(ids, flux, ivar)]
    with _quiet():
        return DistTargetsCopy(tgs)


def dist_template(tpl: dict, redshifts, wave):
    """The templates rebinned once onto the data grid at every scan z (Redrock's one-time cost)."""
    from redrock.templates import DistTemplate

    with _quiet():
        return DistTemplate(_template(tpl, redshifts), {"m": np.asarray(wave, float)}, mp_procs=1)


class WindowTemplate:
    """A DistTemplate restricted to a z window by slicing the already rebinned templates: the hybrid scan
    pays for the chi^2 at the window's z only, not for a new rebin per spectrum."""

    comm = None

    def __init__(self, full, sel):
        import copy

        from redrock.templates import DistTemplatePiece

        self._template = copy.copy(full.template)
        self._template._redshifts = full.template.redshifts[sel]
        self._piece = DistTemplatePiece(0, full.local.redshifts[sel], {k: v[sel] for k, v in full.local.data.items()})

    @property
    def template(self):
        return self._template

    @property
    def local(self):
        return self._piece

    def cycle(self):
        return True


def _zfind(dtargets, dtemplate, nminima=3, zminfit_npoints=15):
    from redrock.zfind import zfind

    with _quiet():
        _, zfit = zfind(dtargets, [dtemplate], mp_procs=1, nminima=nminima, zminfit_npoints=zminfit_npoints)
    best = zfit[zfit["znum"] == 0]
    return {int(t): (float(z), float(ze), int(zw), float(dc), float(c2))
            for t, z, ze, zw, dc, c2 in zip(best["targetid"], best["z"], best["zerr"], best["zwarn"],
                                            best["deltachi2"], best["chi2"])}


COLUMNS = ("z", "zerr", "zwarn", "deltachi2", "chi2")


def _table(ids, fits: dict) -> dict:
    out = {c: np.full(len(ids), np.nan) for c in COLUMNS}
    for k, t in enumerate(ids):
        for c, v in zip(COLUMNS, fits[int(t)]):
            out[c][k] = v
    out["zwarn"] = out["zwarn"].astype(np.int64)
    return out


def fit_full(tpl: dict, wave, flux, ivar, ids, *, zmin: float, zmax: float, dlogz: float = 3e-4,
             batch: int = 64) -> tuple[dict, float]:
    """Full scan zmin..zmax -> ({z, zerr, zwarn, deltachi2, chi2}, seconds). Batches share one rebin."""
    lo, hi = max_z_covered(tpl["wave"], wave)
    if zmin < lo or zmax > hi:
        raise ValueError(f"Redrock z range {zmin}-{zmax} is outside what the templates cover on "
                         f"{wave[0]:.0f}-{wave[-1]:.0f} A: {lo:.3f}-{hi:.3f}")
    t0 = time.perf_counter()
    dt = dist_template(tpl, z_grid(zmin, zmax, dlogz), wave)
    fits = {}
    from tqdm import tqdm
    for s in tqdm(range(0, len(ids), batch), desc="redrock", mininterval=5):
        fits.update(_zfind(_targets(wave, flux[s:s + batch], ivar[s:s + batch], ids[s:s + batch]), dt))
    return _table(ids, fits), time.perf_counter() - t0


def hybrid_window(z0: float, spread: float, *, n_sigma: float, min_half_width: float, max_half_width: float,
                  zmin: float, zmax: float) -> tuple[float, float]:
    """z0 +- clip(n_sigma spread, min, max) (1 + z0), inside [zmin, zmax]."""
    half = float(np.clip(n_sigma * spread, min_half_width, max_half_width)) * (1 + z0)
    return max(zmin, z0 - half), min(zmax, z0 + half)


def fit_hybrid(tpl: dict, wave, flux, ivar, ids, z0, spread, *, n_sigma: float = 5.0, min_half_width: float = 0.003,
               max_half_width: float = 0.02, zmin: float, zmax: float, dlogz: float = 3e-4,
               nminima: int = 1, zminfit_npoints: int = 15) -> tuple[dict, float]:
    """One narrow scan per spectrum around SpecPT's z -> (table as fit_full + window, seconds).

    The templates are rebinned once, at the grid z that some window holds (the full scan's grid, thinned);
    each spectrum's chi^2 is computed only at the z of its window, and `nminima` minima are refined with
    Redrock's `zminfit_npoints` (the refinement is a fixed cost per spectrum the window does not shrink).
    """
    t0 = time.perf_counter()
    zs = z_grid(zmin, zmax, dlogz)
    windows = [hybrid_window(float(z0[k]), float(spread[k]), n_sigma=n_sigma, min_half_width=min_half_width,
                             max_half_width=max_half_width, zmin=zmin, zmax=zmax) for k in range(len(ids))]
    sels = []
    for lo, hi in windows:
        sel = np.flatnonzero((zs >= lo) & (zs <= hi))
        if sel.size < 5:  # fitz needs a few grid points around a minimum
            c = int(np.clip(np.searchsorted(zs, 0.5 * (lo + hi)), 2, zs.size - 3))
            sel = np.arange(c - 2, c + 3)
        sels.append(sel)
    used = np.unique(np.concatenate(sels)) if sels else np.arange(0)
    fits, lo_hi = {}, windows
    if used.size:
        dt = dist_template(tpl, zs[used], wave)
        pos = np.full(zs.size, -1)
        pos[used] = np.arange(used.size)
        from tqdm import tqdm
        for k in tqdm(range(len(ids)), desc="hybrid", mininterval=5):
            fits.update(_zfind(_targets(wave, flux[k:k + 1], ivar[k:k + 1], ids[k:k + 1]),
                               WindowTemplate(dt, pos[sels[k]]), nminima=nminima, zminfit_npoints=zminfit_npoints))
    table = _table(ids, fits)
    table["window_lo"], table["window_hi"] = np.array(lo_hi).T if lo_hi else (np.array([]), np.array([]))
    return table, time.perf_counter() - t0
