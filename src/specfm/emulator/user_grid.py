"""A user's synthetic grid (kind ``hdf5``): Korg, MARCS/Turbospectrum, PHOENIX, ATLAS, ...

Required: /ids (n,) str, /labels (n, k) with attrs names and units, /wavelength (m,) increasing
(Angstrom), /flux (n, m); optional /flux_error (n, m). Fluxes may be normalised already
(``normalised: true``) or absolute (the continuum recipe of specfm.emulator.continuum is applied).
Any problem (length mismatch, NaN flux, duplicated ids, non-increasing wavelength) is an error
naming the file.
"""

from __future__ import annotations

from .grid import Grid, read


def read_user_grid(path) -> Grid:
    grid = read(path, require_split=False)
    grid.status, grid.split = None, None
    return grid
