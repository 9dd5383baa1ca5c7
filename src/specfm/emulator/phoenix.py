"""PHOENIX-ACES spectra (Husser et al. 2013; kind ``phoenix``) -> a raw Grid with labels Teff, log g,
[Fe/H], [alpha/M], cut to the window (+ margin) while reading, so that a grid of thousands of
1.6-million-pixel files fits in memory.

The files (fetched by the ``http_grid`` source, specfm.fetch.grid_source): one wavelength file
(primary HDU, vacuum Angstrom) and one file per point (primary HDU, flux in erg/s/cm^2/cm; header
PHXTEFF, PHXLOGG, PHXM_H, PHXALPHA, cross-checked against the file name where present).

Medium: PHOENIX wavelengths are in vacuum; MILES, and the paper's window, are in air. By default
(emulator.grid.medium: air) they are converted to air so a PHOENIX grid and a MILES grid sit on the
same wavelengths, with the IAU standard of Morton (2000, ApJS 130, 403; the Ciddor 1996 refractive
index as VALD and SDSS use it), written here by hand: neither specutils nor PyAstronomy is a
dependency, and it is one line. ``medium: vacuum`` keeps vacuum; the grid file records which.
The flux unit is recorded too (the normalised flux has none).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from specfm.fetch.grid_source import parse_point

from .grid import Grid, GridError

log = logging.getLogger("specfm.emulator")

LABELS = ["teff", "logg", "feh", "alpha_m"]
UNITS = ["K", "dex", "dex", "dex"]
HEADER = ("PHXTEFF", "PHXLOGG", "PHXM_H", "PHXALPHA")  # in LABELS order
FLUX_UNIT = "erg/s/cm^2/cm"


def vac_to_air(wave_vac: np.ndarray) -> np.ndarray:
    """Vacuum -> air wavelength (Angstrom), Morton (2000) eq. 8: lambda_air = lambda_vac / n."""
    s2 = (1e4 / np.asarray(wave_vac, np.float64)) ** 2
    n = 1 + 0.0000834254 + 0.02406147 / (130 - s2) + 0.00015998 / (38.9 - s2)
    return wave_vac / n


def _check_header(path: Path, header, point) -> None:
    for key, want in zip(HEADER, point):
        if key in header and abs(float(header[key]) - want) > 1e-3 * max(1.0, abs(want)):
            raise GridError(f"{path}: header {key} = {header[key]} but the file name says {want}")


def read_phoenix(wave_file, files, *, window, margin: float, medium: str = "air") -> Grid:
    """The wavelength file + one file per point -> a raw Grid over window +- margin (in `medium`)."""
    from astropy.io import fits

    wave_file = Path(wave_file)
    vac = np.asarray(fits.getdata(wave_file), np.float64).ravel()
    wave = vac_to_air(vac) if medium == "air" else vac
    lo, hi = np.searchsorted(wave, [window[0] - margin, window[1] + margin])
    if hi - lo < 10:
        raise GridError(f"{wave_file}: {wave[0]:.1f}-{wave[-1]:.1f} A holds {hi - lo} pixels of the window {window}")
    ids, labels, flux = [], [], np.empty((len(files), hi - lo), np.float32)
    for i, path in enumerate(map(Path, files)):
        point = parse_point(path.name)
        with fits.open(path, memmap=True) as hdul:
            if hdul[0].data is None or hdul[0].data.size != vac.size:
                size = 0 if hdul[0].data is None else hdul[0].data.size
                raise GridError(f"{path}: {size} flux values but {wave_file} has {vac.size} wavelengths")
            _check_header(path, hdul[0].header, point)
            flux[i] = hdul[0].data.ravel()[lo:hi]
        ids.append(path.name.split(".PHOENIX")[0])
        labels.append(point)
    log.info("read %d PHOENIX spectra, %d pixels of %.1f-%.1f A (%s)", len(files), hi - lo,
             wave[lo], wave[hi - 1], medium)
    conversion = "Morton 2000 vacuum -> air" if medium == "air" else "none (vacuum kept)"
    return Grid(ids=np.array(ids, dtype=object), labels=np.array(labels, np.float64).reshape(-1, 4),
                label_names=list(LABELS), label_units=list(UNITS), wavelength=wave[lo:hi], flux=flux,
                attrs={"medium": medium, "medium_conversion": conversion, "source_flux_unit": FLUX_UNIT})
