"""Raw spectra (any grid kind) -> the HDF5 layout: window, bad pixels, normalisation, errors, split.

Every spectrum is kept in the file; one that cannot be used gets a status saying why
(missing_labels, bad_pixels) and the split "excluded", and the counts go into the file's attrs and
the log, so nothing disappears silently.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from .continuum import der_snr_noise, normalise
from .grid import Grid, GridError, stable_split, validate

log = logging.getLogger("specfm.emulator")


def window_pixels(wave: np.ndarray, window, source: str) -> np.ndarray:
    lo, hi = window
    sel = (wave >= lo) & (wave <= hi)
    if sel.sum() < 10:
        raise GridError(f"{source}: the window {lo}-{hi} A holds {sel.sum()} pixels of "
                        f"{wave[0]:.1f}-{wave[-1]:.1f} A")
    return sel


def repair_pixels(flux: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Linear interpolation over bad pixels (edges: nearest good value)."""
    out = flux.copy()
    if bad.any():
        x = np.arange(flux.size)
        out[bad] = np.interp(x[bad], x[~bad], flux[~bad])
    return out


def finish(raw: Grid, *, window, margin: float, continuum: dict | None, max_bad_fraction: float,
           split: dict, error_kind: str | None, source: str, kind: str) -> Grid:
    """Window + margin, repair/count bad pixels, normalise (continuum=None: already normalised),
    errors (given ones divided by the continuum, or a DER_SNR estimate), status and split."""
    if raw.flux.shape != (len(raw.ids), len(raw.wavelength)):
        raise GridError(f"{source}: flux shape {raw.flux.shape} does not match {len(raw.ids)} ids x "
                        f"{len(raw.wavelength)} wavelengths")
    wide = window_pixels(raw.wavelength, (window[0] - margin, window[1] + margin), source)
    wave_w = raw.wavelength[wide]
    inner = window_pixels(wave_w, window, source)
    n, m = len(raw.ids), int(inner.sum())
    flux = np.ones((n, m), np.float32)
    err = np.full((n, m), np.inf, np.float32)
    mask = np.zeros((n, m), bool)
    status = np.array(["ok"] * n, dtype=object)
    status[~np.isfinite(raw.labels).all(axis=1)] = "missing_labels"
    for i in tqdm(range(n), desc="normalising", mininterval=1.0):
        f = raw.flux[i, wide].astype(np.float64)
        bad = ~np.isfinite(f) | (f <= 0) if continuum is not None else ~np.isfinite(f)
        if bad[inner].mean() > max_bad_fraction or (~bad).sum() < 10:
            status[i] = "bad_pixels" if status[i] == "ok" else status[i] + "+bad_pixels"
            continue
        f = repair_pixels(f, bad)
        cont = np.ones_like(f)
        if continuum is not None:
            f, cont = normalise(wave_w, f, good=~bad, **continuum)
        flux[i], mask[i] = f[inner], bad[inner]
        if raw.flux_error is not None:
            e = raw.flux_error[i, wide] / cont
        else:
            e = np.full(f.shape, der_snr_noise(f[inner & ~bad]))
        e[bad] = np.inf
        err[i] = e[inner]
    sp = stable_split(raw.ids, split["val"], split["test"])
    sp[status != "ok"] = "excluded"
    counts = {"spectra": n, "ok": int((status == "ok").sum()),
              **{s: int((sp == s).sum()) for s in ("train", "val", "test", "excluded")},
              "missing_labels": sum("missing_labels" in s for s in status),
              "bad_pixels": sum("bad_pixels" in s for s in status),
              "repaired_pixels": int(mask[status == "ok"].sum())}
    log.info("%s: %d spectra, %d usable (%s); %d pixels per spectrum in %s A", source, n,
             counts["ok"], counts, m, window)
    attrs = {"kind": kind, "source": source, "window": list(map(float, window)), "counts": counts,
             "flux_error_kind": error_kind or "der_snr", "medium": raw.attrs.get("medium", "air"),
             "continuum": continuum or "given (already normalised)"}
    out = Grid(ids=raw.ids, labels=raw.labels, label_names=raw.label_names,
               label_units=raw.label_units, wavelength=wave_w[inner], flux=flux, flux_error=err,
               pixel_mask=mask, status=status, split=sp, attrs=attrs)
    return validate(out, source)
