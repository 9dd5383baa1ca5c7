"""The embedded grid: the 985 MILES stars (Sanchez-Blazquez et al. 2006; Falcon-Barroso et al. 2011)
shipped in the sdss-mangadap 4.5.0 wheel, with Teff / log g / [Fe/H] from its MILES_params.db.

The wheel keeps 984 stars in miles/ and m0970 in miles/omit/ (short wavelength range, an artefact at
the red end): it is read like the others and its status says what happened to it. MILES_params.db
marks unknown parameters with 99999 (Teff) and 9999 (log g, [Fe/H]); those become NaN, and such
stars are kept with status missing_labels. Spectra are linear in air wavelength (CRVAL1, CDELT1),
FWHM 2.5 A.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from .grid import Grid, GridError

LABELS = ["teff", "logg", "feh"]
UNITS = ["K", "dex", "dex"]
FWHM = 2.5  # Angstrom, the library's resolution
_ID = re.compile(r"_m(\d{4})V\.fits$")


def read_params(path) -> dict[str, np.ndarray]:
    """MILES_params.db -> {star number "0001": [teff, logg, feh] with NaN for unknown}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise GridError(f"{path}:{n}: expected 'id teff logg feh', got {line!r}")
        vals = np.array(parts[1:], float)
        vals[0] = np.nan if vals[0] >= 99999 else vals[0]
        vals[1:][vals[1:] >= 9999] = np.nan
        if parts[0] in out:
            raise GridError(f"{path}:{n}: star {parts[0]} listed twice")
        out[parts[0]] = vals
    return out


def read_spectrum(path) -> tuple[np.ndarray, np.ndarray]:
    with fits.open(path) as h:
        hdr, flux = h[0].header, np.asarray(h[0].data, np.float64)
    wave = hdr["CRVAL1"] + hdr["CDELT1"] * (np.arange(flux.size) + 1 - hdr.get("CRPIX1", 1))
    return wave, flux


def read_miles(files: list[Path], max_stars: int | None = None) -> Grid:
    """The stars listed in an unpacked manifest as a raw Grid on the first file's wavelength grid
    (a file on another grid is interpolated onto it; pixels it does not cover are NaN = bad)."""
    db = [f for f in files if f.name == "MILES_params.db"]
    spectra = sorted((f for f in files if _ID.search(f.name)), key=lambda f: f.name)
    if not db or not spectra:
        raise GridError(f"MILES: need MILES_params.db and MILES_*_m????V.fits among {len(files)} files")
    params = read_params(db[0])
    spectra = spectra[:max_stars] if max_stars else spectra
    wave, _ = read_spectrum(spectra[0])
    flux = np.empty((len(spectra), wave.size))
    labels = np.full((len(spectra), 3), np.nan)
    ids = []
    for i, path in enumerate(spectra):
        num = _ID.search(path.name).group(1)
        w, f = read_spectrum(path)
        flux[i] = f if np.array_equal(w, wave) else np.interp(wave, w, f, left=np.nan, right=np.nan)
        labels[i] = params.get(num, labels[i])
        ids.append(f"m{num}")
    return Grid(ids=np.array(ids, dtype=object), labels=labels, label_names=LABELS,
                label_units=UNITS, wavelength=wave, flux=flux, attrs={"medium": "air"})
