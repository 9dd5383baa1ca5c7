"""A user's synthetic grid as one FITS file (kind ``fits``), for codes that write FITS rather than HDF5.

Layout, n spectra of m pixels and k labels (extensions found by EXTNAME, in any order):

    LABELS      binary table, n rows: an ID column (strings, unique) and one float column per
                label (e.g. TEFF, LOGG, FEH, ALPHA_M), each with its TUNITn (K, dex); the label
                names are the column names in lower case; NaN = label unknown
    WAVELENGTH  image (m,), strictly increasing; header BUNIT (Angstrom, the default) and
                MEDIUM ('air', the default, or 'vacuum'; recorded, not converted)
    FLUX        image (n, m) (NAXIS1 = m, NAXIS2 = n), absolute or normalised (emulator.grid.normalised)
    FLUX_ERROR  optional image (n, m): 1-sigma error of FLUX

The same problems as the hdf5 kind (labels and fluxes of different lengths, NaN flux, duplicated
ids, a wavelength that is not increasing) are errors naming the file and the extension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .grid import Grid, GridError, validate

FITS_NAMES = {"ids": "LABELS.ID", "labels": "LABELS", "wavelength": "WAVELENGTH", "flux": "FLUX",
              "flux_error": "FLUX_ERROR"}
_UNITS = {"angstrom": 1.0, "a": 1.0, "nm": 10.0, "um": 1e4, "micron": 1e4}


def _hdu(hdul, name: str, path: Path, required: bool = True):
    if name in hdul:
        return hdul[name]
    if required:
        raise GridError(f"{path}: no {name} extension (found {[h.name for h in hdul]}; "
                        f"see specfm.emulator.fits_grid)")
    return None


def _labels(table, path: Path):
    """(ids, labels (n, k), names, units) from the LABELS table."""
    cols = table.columns
    id_col = next((c for c in cols.names if c.upper() == "ID"), None)
    if id_col is None:
        raise GridError(f"{path}: LABELS has no ID column (columns {cols.names})")
    names = [c for c in cols.names if c != id_col]
    if not names:
        raise GridError(f"{path}: LABELS has no label column besides {id_col}")
    data = table.data
    ids = np.array([str(v).strip() for v in data[id_col]], dtype=object)
    labels = np.column_stack([np.asarray(data[c], np.float64) for c in names]) if len(ids) else \
        np.zeros((0, len(names)))
    units = [cols[c].unit or "" for c in names]
    return ids, labels, [c.lower() for c in names], units


def _wavelength(hdu, path: Path) -> tuple[np.ndarray, str]:
    unit = str(hdu.header.get("BUNIT", "Angstrom")).strip().lower()
    if unit not in _UNITS:
        raise GridError(f"{path}: WAVELENGTH BUNIT {unit!r} is not one of {sorted(_UNITS)}")
    medium = str(hdu.header.get("MEDIUM", "air")).strip().lower()
    if medium not in ("air", "vacuum"):
        raise GridError(f"{path}: WAVELENGTH MEDIUM {medium!r} is not 'air' or 'vacuum'")
    return np.asarray(hdu.data, np.float64).ravel() * _UNITS[unit], medium


def read_fits_grid(path) -> Grid:
    """The FITS grid at `path` as a raw Grid (no status/split yet), validated."""
    from astropy.io import fits

    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise GridError(f"{path}: not a readable FITS file ({exc})") from None
    with hdul:
        ids, labels, names, units = _labels(_hdu(hdul, "LABELS", path), path)
        wave, medium = _wavelength(_hdu(hdul, "WAVELENGTH", path), path)
        flux = np.atleast_2d(np.asarray(_hdu(hdul, "FLUX", path).data, np.float32))
        err_hdu = _hdu(hdul, "FLUX_ERROR", path, required=False)
        err = None if err_hdu is None else np.atleast_2d(np.asarray(err_hdu.data, np.float32))
    if flux.shape[0] != len(ids):
        raise GridError(f"{path}: FLUX has {flux.shape[0]} rows but LABELS has {len(ids)} "
                        f"(labels and fluxes of different lengths)")
    grid = Grid(ids=ids, labels=labels, label_names=names, label_units=units, wavelength=wave,
                flux=flux, flux_error=err, attrs={"medium": medium})
    return validate(grid, str(path), FITS_NAMES)
