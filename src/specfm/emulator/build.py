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
from .resample import log_grid, resample

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


CHUNK = 64  # spectra resampled together: spectres loops over the new pixels, not the spectra


def normalised_row(raw: Grid, i: int, wide, inner, continuum, max_bad_fraction):
    """(flux, error, bad) of spectrum i over the wide window, normalised; None if too many bad pixels."""
    wave_w = raw.wavelength[wide]
    f = raw.flux[i, wide].astype(np.float64)
    bad = ~np.isfinite(f) | (f <= 0) if continuum is not None else ~np.isfinite(f)
    if bad[inner].mean() > max_bad_fraction or (~bad).sum() < 10:
        return None
    f = repair_pixels(f, bad)
    cont = np.ones_like(f)
    if continuum is not None:
        f, cont = normalise(wave_w, f, good=~bad, **continuum)
    if raw.flux_error is not None:
        e = raw.flux_error[i, wide] / cont
    else:
        e = np.full(f.shape, der_snr_noise(f[inner & ~bad]))
    e[bad] = np.inf
    return f, e, bad


def finish(raw: Grid, *, window, margin: float, continuum: dict | None, max_bad_fraction: float,
           split: dict, error_kind: str | None, source: str, kind: str, n_pixels: int | None = None) -> Grid:
    """Window + margin, repair/count bad pixels, normalise (continuum=None: already normalised),
    errors (given ones divided by the continuum, or a DER_SNR estimate), resample onto `n_pixels`
    log-uniform pixels (None: keep the native ones, specfm.emulator.resample), status and split."""
    if raw.flux.shape != (len(raw.ids), len(raw.wavelength)):
        raise GridError(f"{source}: flux shape {raw.flux.shape} does not match {len(raw.ids)} ids x "
                        f"{len(raw.wavelength)} wavelengths")
    wide = window_pixels(raw.wavelength, (window[0] - margin, window[1] + margin), source)
    wave_w = raw.wavelength[wide]
    inner = window_pixels(wave_w, window, source)
    wave = wave_w[inner] if not n_pixels else log_grid(window, n_pixels)
    n, m = len(raw.ids), len(wave)
    flux = np.ones((n, m), np.float32)
    err = np.full((n, m), np.inf, np.float32)
    mask = np.zeros((n, m), bool)
    status = np.array(["ok"] * n, dtype=object)
    status[~np.isfinite(raw.labels).all(axis=1)] = "missing_labels"
    bar = tqdm(total=n, desc="normalising", mininterval=1.0)
    for start in range(0, n, CHUNK):
        rows, got = [], []
        for i in range(start, min(start + CHUNK, n)):
            row = normalised_row(raw, i, wide, inner, continuum, max_bad_fraction)
            if row is None:
                status[i] = "bad_pixels" if status[i] == "ok" else status[i] + "+bad_pixels"
            else:
                rows.append(i)
                got.append(row)
        bar.update(min(CHUNK, n - start))
        if not rows:
            continue
        f, e, b = (np.stack(x) for x in zip(*got))
        if n_pixels:
            f, e, b = resample(wave_w, f, e, b, wave, source)
        else:
            f, e, b = f[:, inner], e[:, inner], b[:, inner]
        flux[rows], err[rows], mask[rows] = f, e, b
    bar.close()
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
             "continuum": continuum or "given (already normalised)",
             "sampling": f"{m} pixels uniform in ln(lambda)" if n_pixels else "native",
             **{k: v for k, v in raw.attrs.items() if k in ("source_flux_unit", "medium_conversion")}}
    out = Grid(ids=raw.ids, labels=raw.labels, label_names=raw.label_names,
               label_units=raw.label_units, wavelength=wave, flux=flux, flux_error=err,
               pixel_mask=mask, status=status, split=sp, attrs=attrs)
    return validate(out, source)
