"""A user's own galaxy spectra -> GalProTE (and optionally pPXF) without building a cube.

Inputs read by ``read_spectra`` (observed frame; one file may hold several spectra):

- 1-D FITS image (primary or first image extension with NAXIS = 1) with a linear or log WCS on axis 1
  (CRVAL1 / CRPIX1 / CDELT1 or CD1_1, CUNIT1 default Angstrom); the error from an image extension
  named ERROR / ERR / SIGMA / NOISE (1 sigma), VAR / VARIANCE / STAT (variance) or IVAR;
- a table (FITS binary table, .csv, .ecsv, .parquet) with a wavelength column (wavelength / wave /
  lambda / lam, or SDSS's loglam = log10 A), a flux column and an error column (error / err / sigma /
  noise / flux_err, or ivar / var); an optional ``mask`` (or SDSS ``and_mask``) column, non-zero = bad;
- a MaNGA-format spectra file (extensions WAVE [n_wave], FLUX / IVAR / MASK [n, n_wave]): each row
  is one spectrum, MaNGA's DRP pixel-mask bits are honoured (``specfm.galaxies.manga``).

Air or vacuum: CTYPE1 = AWAV is air, WAVE is vacuum (FITS Paper III); SDSS tables (loglam) and
MaNGA files are vacuum; anything else is air unless ``frame="vacuum"`` (the CLI's ``--vacuum``).
Vacuum wavelengths go to air with `preprocessing.vacuum_to_air` before anything else.

Then ``prepare`` puts each spectrum through the preprocessing of the cube bins
(`specfm.galaxies.preprocessing`: mask, de-redshift + rebin onto the template grid with masked
pixels interpolated over, bright-line median filter, Table 2 mask, median normalisation) and returns
a `cube.Bins` with one "bin" per spectrum, so the model and the pPXF baseline read them exactly as
they read a cube's bins.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from .cube import Bins
from .cube_io import check_linear_keywords
from .preprocessing import BinSettings, RestFrame, check_coverage, finish, mask_bad, snr_in_window
from .spectra import paper_wavelength_grid
from .spectrum import Spectrum, air_wavelengths

log = logging.getLogger(__name__)

WAVE_COLUMNS = ("wavelength", "wave", "lambda", "lam")
FLUX_COLUMNS = ("flux",)
SIGMA_COLUMNS = ("error", "err", "sigma", "noise", "flux_err", "flux_error")
IVAR_COLUMNS = ("ivar", "inverse_variance")
VAR_COLUMNS = ("var", "variance")
MASK_COLUMNS = ("mask", "and_mask")
ERROR_EXTS = {"ERROR": "sigma", "ERR": "sigma", "SIGMA": "sigma", "NOISE": "sigma", "VAR": "var",
              "VARIANCE": "var", "STAT": "var", "IVAR": "ivar"}
TABLE_SUFFIXES = (".csv", ".ecsv", ".parquet", ".pq")


# ------------------------------------------------------------------------------------------ reading


def _variance(kind: str, values) -> np.ndarray:
    """Variance from sigma / var / ivar values; ivar <= 0 and sigma <= 0 become NaN (masked)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "sigma":
            return np.where(v > 0, v**2, np.nan)
        if kind == "ivar":
            return np.where(v > 0, 1.0 / v, np.nan)
    return np.where(v > 0, v, np.nan)


def _build(name, path, wave, flux, var, frame, bad=None) -> Spectrum:
    flux = np.array(flux, dtype=np.float32)
    var = np.array(var, dtype=np.float32)
    if flux.shape != np.shape(wave) or var.shape != flux.shape:
        raise ValueError(f"{name}: wavelength, flux and error have different lengths "
                         f"({np.size(wave)}, {flux.size}, {var.size})")
    if bad is not None:
        flux[np.asarray(bad, bool)] = np.nan
    mask_bad(flux[:, None], var[:, None])
    if not np.isfinite(flux).any():
        raise ValueError(f"{name}: the flux is NaN, infinite or masked at every pixel")
    return Spectrum(name=name, wave=air_wavelengths(wave, frame, name), flux=flux, var=var, frame=frame, path=path)


def _pick(columns, aliases, name: str, what: str, required: bool = True):
    lower = {c.lower(): c for c in columns}
    for a in aliases:
        if a in lower:
            return lower[a]
    if required:
        raise ValueError(f"{name}: no {what} column (looked for {', '.join(aliases)}; found {', '.join(columns)})")
    return None


def _from_table(table, name: str, path: str, frame: str | None) -> Spectrum:
    """wavelength / flux / error columns (names in the module docstring) -> Spectrum."""
    cols = list(table.colnames)
    flux_col = _pick(cols, FLUX_COLUMNS, name, "flux")
    loglam = _pick(cols, ("loglam",), name, "", required=False)
    if loglam is not None:
        wave = 10.0 ** np.asarray(table[loglam], dtype=float)
        frame = frame or "vacuum"  # SDSS spectra are in vacuum
    else:
        wave = np.asarray(table[_pick(cols, WAVE_COLUMNS + ("loglam",), name, "wavelength")], dtype=float)
    for aliases, kind in ((SIGMA_COLUMNS, "sigma"), (IVAR_COLUMNS, "ivar"), (VAR_COLUMNS, "var")):
        col = _pick(cols, aliases, name, "", required=False)
        if col is not None:
            var = _variance(kind, table[col])
            break
    else:
        raise ValueError(f"{name}: no error column (looked for {', '.join(SIGMA_COLUMNS + IVAR_COLUMNS + VAR_COLUMNS)}"
                         f"; found {', '.join(cols)}): the line filter and pPXF need the noise")
    mask_col = _pick(cols, MASK_COLUMNS, name, "", required=False)
    bad = None if mask_col is None else np.asarray(table[mask_col]) != 0
    return _build(name, path, wave, np.asarray(table[flux_col], dtype=float), var, frame or "air", bad)


def _wcs_wave(header: fits.Header, n: int, name: str, frame: str | None) -> tuple[np.ndarray, str]:
    """Axis-1 wavelengths [A] of a 1-D spectrum and the frame its CTYPE1 declares."""
    from astropy import units as u
    from astropy.wcs import WCS, FITSFixedWarning

    if not any(k in header for k in ("CDELT1", "CD1_1")) or "CRVAL1" not in header:
        raise ValueError(f"{name}: a 1-D FITS spectrum needs CRVAL1 and CDELT1 (or CD1_1) for its wavelengths")
    check_linear_keywords(header, name, n_axes=1)
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        hdr = header.copy()
        if ctype in ("", "LINEAR", "LAMBDA"):  # IRAF-style linear axes: let wcslib read them as air
            hdr["CTYPE1"] = "AWAV"
        hdr["CUNIT1"] = header.get("CUNIT1", "Angstrom") or "Angstrom"
        w = WCS(hdr, naxis=1)
    wave = w.all_pix2world(np.arange(n, dtype=float), 0)[0]
    wave = wave * u.Unit(w.wcs.cunit[0] or "m").to(u.AA)
    if int(header.get("DC-FLAG", 0)) == 1:  # IRAF log-linear: CRVAL1/CDELT1 in log10 A
        wave = 10.0 ** np.asarray(header["CRVAL1"] + (np.arange(n) + 1 - header.get("CRPIX1", 1.0))
                                  * header.get("CDELT1", header.get("CD1_1")))
    declared = "air" if ctype.startswith("AWAV") else "vacuum" if ctype.startswith("WAVE") else None
    if frame and declared and frame != declared:
        log.warning("%s: CTYPE1 = %s says %s, the caller says %s: using %s", name, ctype, declared, frame, frame)
    return wave, frame or declared or "air"


def _from_image(hdul, hdu, name: str, path: str, frame: str | None) -> Spectrum:
    flux = np.asarray(hdu.data, dtype=float)
    wave, frame = _wcs_wave(hdu.header, flux.size, name, frame)
    for ext, kind in ERROR_EXTS.items():
        if ext in hdul and hdul[ext] is not hdu and hdul[ext].data is not None:
            err = np.asarray(hdul[ext].data, dtype=float)
            if err.shape != flux.shape:
                raise ValueError(f"{name}: error extension {ext} has shape {err.shape}, flux {flux.shape}")
            return _build(name, path, wave, flux, _variance(kind, err), frame)
    raise ValueError(f"{name}: no error extension (looked for {', '.join(ERROR_EXTS)}): the line filter and "
                     "pPXF need the noise")


def read_spectra(path: str | Path, *, frame: str | None = None) -> list[Spectrum]:
    """All spectra of one file (module docstring); ValueError naming the file for anything unusable.

    ``frame``: None (the file says; else air), "air" or "vacuum"."""
    if frame not in (None, "air", "vacuum"):
        raise ValueError(f"frame must be 'air' or 'vacuum', got {frame!r}")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ValueError(f"{path}: no such spectrum file")
    if path.suffix.lower() in TABLE_SUFFIXES:
        from astropy.table import Table

        try:
            table = Table.read(path, format="ascii.csv" if path.suffix.lower() == ".csv" else None)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable table ({type(exc).__name__}: {exc})") from exc
        return [_from_table(table, name, str(path), frame)]
    try:
        hdul = fits.open(path, memmap=False)
        len(hdul)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable FITS file or table ({type(exc).__name__}: {exc})") from exc
    with hdul:
        names = [h.name for h in hdul]
        if {"WAVE", "FLUX", "IVAR"} <= set(names):
            from .manga import spectra_from_manga

            return spectra_from_manga(hdul, name, str(path), frame)
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU):
                from astropy.table import Table

                return [_from_table(Table(hdu.data), name, str(path), frame)]
            if hdu.data is not None and hdu.header.get("NAXIS") == 1 and hdu.name not in ERROR_EXTS:
                return [_from_image(hdul, hdu, name, str(path), frame)]
    raise ValueError(f"{path}: no 1-D spectrum (image with NAXIS = 1), table or MaNGA WAVE/FLUX/IVAR extensions "
                     f"(found {names})")


def file_redshifts(path: str | Path, n: int) -> np.ndarray:
    """Redshifts a file carries for its ``n`` spectra: a MaNGA-format Z extension (NSA z), or an SDSS
    spectrum's SPECOBJ Z; ValueError naming the file when it has neither."""
    path = Path(path)
    try:
        with fits.open(path) as hdul:
            if "Z" in hdul and hdul["Z"].data is not None:
                z = np.asarray(hdul["Z"].data, dtype=float).ravel()
            elif "SPECOBJ" in hdul and "Z" in [c.upper() for c in hdul["SPECOBJ"].columns.names]:
                z = np.asarray(hdul["SPECOBJ"].data["Z"], dtype=float).ravel()[:1]
            else:
                z = None
    except OSError:
        z = None
    if z is None or z.size != n:
        raise ValueError(f"{path}: no redshift in the file for its {n} spectra (a MaNGA Z extension or an SDSS "
                         "SPECOBJ table): give --z")
    return z


# ------------------------------------------------------------------------------------ preprocessing


def prepare(spectra: list[Spectrum], redshifts, settings: BinSettings | None = None, **overrides) -> Bins:
    """Spectra + their redshifts -> `Bins` (one bin per spectrum), the cube bins' preprocessing.

    The cube's `BinSettings` too (``overrides``: its fields by keyword, ``wave_out`` the templates'
    grid), so that a spectrum and a cube bin are prepared alike; the binning fields do not apply."""
    cfg = replace(settings or BinSettings(), **overrides)
    wave_out = paper_wavelength_grid() if cfg.wave_out is None else np.asarray(cfg.wave_out, dtype=float)
    z = np.broadcast_to(np.asarray(redshifts, dtype=float), (len(spectra),))
    if not spectra:
        raise ValueError("no spectra given")
    full = np.zeros((len(spectra), wave_out.size))
    full_var = np.zeros_like(full)
    n_filled = np.zeros(len(spectra), np.int32)
    for i, (s, zi) in enumerate(zip(spectra, z)):
        if not (np.isfinite(zi) and zi > -1):
            raise ValueError(f"{s.name}: redshift {zi!r} is not a finite number > -1")
        check_coverage(s.wave, zi, s.name, wave_out)
        rf = RestFrame(s.wave, zi, wave_out)
        nbad = rf.count_bad(s.flux[:, None], s.var[:, None])
        if nbad[0] == rf.used.size:
            raise ValueError(f"{s.name}: the flux or its error is NaN, infinite or masked at every pixel of "
                             f"the template window ({wave_out[0]:.0f}-{wave_out[-1]:.0f} A rest at z = {zi:g})")
        if nbad[0] > cfg.max_bad_frac * rf.used.size:
            raise ValueError(f"{s.name}: {nbad[0]} of {rf.used.size} pixels in the template window are masked "
                             f"(more than max_bad_frac = {cfg.max_bad_frac:g})")
        spec, var = rf.rebin(s.flux[:, None], s.var[:, None], [0], nbad)
        full[i], full_var[i], n_filled[i] = spec[0], var[0], nbad[0]
    done = finish(full, full_var, wave_out, cfg)
    bad_norm = [s.name for s, n in zip(spectra, done.norm) if not (np.isfinite(n) and n > 0)]
    if bad_norm:
        raise ValueError(f"{', '.join(bad_norm)}: median flux over the kept pixels is <= 0: cannot normalise")
    n = len(spectra)
    meta = {
        "format": "specfm.galaxies.spectra/1", "sources": [s.name for s in spectra],
        "redshifts": [float(v) for v in z], "frames": [s.frame for s in spectra],
        "max_bad_frac": float(cfg.max_bad_frac), "snr_window": [float(v) for v in cfg.snr_window],
        "line_filter": {"enabled": bool(cfg.line_filter), "median_width_px": int(cfg.median_width),
                        "pad_px": int(cfg.line_pad), "clip_sigma": float(cfg.clip_sigma)},
        "counts": {"n_pixels_interpolated": [int(v) for v in n_filled]},
    }
    return Bins(wave=wave_out, mask=done.mask, spectra_full=done.full.astype(np.float32),
                noise_full=done.noise.astype(np.float32),
                spectra=(done.full[:, done.mask] / done.norm[:, None]).astype(np.float32),
                norm=done.norm.astype(np.float64), snr=snr_in_window(full, full_var, wave_out, cfg.snr_window),
                bin_id=np.arange(n, dtype=np.int32)[None, :], xbar=np.arange(n, dtype=float), ybar=np.zeros(n),
                n_spaxels=np.ones(n, np.int32), n_filtered=done.hit.sum(axis=1).astype(np.int32), wcs_header="",
                meta=meta)


# ------------------------------------------------------------------------------------ prediction

COLUMNS = ("spectrum", "source", "redshift", "frame", "log_age", "mh", "av", "resid_mean", "resid_std", "snr",
           "n_interpolated", "n_filtered")
PPXF_COLUMNS = ("ppxf_log_age", "ppxf_mh", "ppxf_av", "ppxf_resid_mean", "ppxf_resid_std", "ppxf_vel", "ppxf_sigma",
                "ppxf_ok")


def predict_table(spectra: list[Spectrum], redshifts, model, templates, *, clip_frac: float = 0.05,
                  ppxf_degree: int | None = None, inference: dict | None = None, estimate: str = "grid",
                  **prepare_kw) -> dict:
    """One row per spectrum (``COLUMNS``; with ``ppxf_degree``, also the pPXF baseline's ``PPXF_COLUMNS``
    on the same preprocessed spectra and templates). log_age in log10(yr), mh in dex, av in mag;
    resid_* over the 876 kept, median-normalised pixels (input - reconstruction). ``inference``:
    `fast_inference.predict` keywords (backend, threads, batch_size; None: its defaults); ``estimate``:
    the grid or the mean head (`fast_inference.estimates`; resid_* always the grid's)."""
    from .fast_inference import estimates
    from .training import reconstruct

    bins = prepare(spectra, redshifts, wave_out=templates.wave, **prepare_kw)
    est = estimates(model, bins.spectra, templates.log_age, templates.mh, frac=clip_frac, estimate=estimate,
                    inference=inference)
    log_age, mh, av = est["log_age"], est["mh"], est["av"]
    resid = bins.spectra - reconstruct(templates, est["weights"], est["av_grid"])
    table = {
        "spectrum": [s.name for s in spectra], "source": [s.path for s in spectra],
        "redshift": np.asarray(bins.meta["redshifts"]), "frame": [s.frame for s in spectra],
        "log_age": log_age, "mh": mh, "av": np.asarray(av, float), "resid_mean": resid.mean(axis=1),
        "resid_std": resid.std(axis=1), "snr": bins.snr,
        "n_interpolated": np.asarray(bins.meta["counts"]["n_pixels_interpolated"], np.int32),
        "n_filtered": bins.n_filtered,
    }
    if ppxf_degree is not None:
        from .ppxf_fit import fit_bins

        res = fit_bins(bins, templates, degree=ppxf_degree, progress=False)
        table.update({"ppxf_log_age": res["LOGAGE"], "ppxf_mh": res["MH"], "ppxf_av": res["AV"],
                      "ppxf_resid_mean": res["RESID_MEAN"], "ppxf_resid_std": res["RESID_STD"],
                      "ppxf_vel": res["VEL"], "ppxf_sigma": res["SIGMA"], "ppxf_ok": res["OK"]})
    return table


UNITS = {"redshift": "", "log_age": "log10(yr)", "mh": "dex", "av": "mag", "ppxf_log_age": "log10(yr)",
         "ppxf_mh": "dex", "ppxf_av": "mag", "ppxf_vel": "km/s", "ppxf_sigma": "km/s"}


def write_table(table: dict, path: str | Path) -> None:
    """.parquet, .fits or .csv by the suffix; atomic; the same table gives the same bytes."""
    from astropy.table import Table

    from specfm.io import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".fits", ".csv"):
        raise ValueError(f"{path}: output must end in .parquet, .fits or .csv")
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({k: np.asarray(v) for k, v in table.items()}), tmp)
        elif suffix == ".csv":
            Table({k: np.asarray(v) for k, v in table.items()}).write(tmp, format="ascii.csv", overwrite=True)
        else:
            hdu = fits.table_to_hdu(Table({k: np.asarray(v) for k, v in table.items()}))
            hdu.name = "GALPROTE"
            for i, k in enumerate(table, start=1):
                if UNITS.get(k):
                    hdu.header[f"TUNIT{i}"] = UNITS[k]  # as written, not parsed: log10(yr) is no FITS unit
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)


__all__ = ["COLUMNS", "PPXF_COLUMNS", "Spectrum", "file_redshifts", "predict_table", "prepare", "read_spectra",
           "write_table"]
