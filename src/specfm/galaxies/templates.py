"""Read E-MILES / MILES SSP FITS files into a complete ([M/H], age) grid.

Why so strict: a silently incomplete or mixed grid (a missing age, two IMFs in one folder, one
file on a shifted wavelength grid) would not crash anything downstream, it would quietly train the
GalProTE grid head on wrong labels. So every problem is a ``ValueError`` that names the file.

File names follow the MILES web-tool convention (Vazdekis et al. 2010, 2016; http://miles.iac.es),
e.g. ``Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits`` (ppxf 8.2.6 sdist, Padova
isochrones) or ``Ebi1.30Zm0.25T00.0300_iTp0.00_baseFe.fits`` (the full E-MILES BaSTI grid):
library (E = E-MILES, M = MILES), IMF shape + slope, ``Z`` sign (m/p) + [M/H], ``T`` age in Gyr,
``_i`` isochrone (P = Padova00, T = BaSTI) + [alpha/Fe], abundance tag, optional suffix.
The spectra are linearly sampled; the wavelength comes from CRVAL1/CDELT1/CRPIX1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from astropy.io import fits

NAME_RE = re.compile(
    r"(?P<library>[EM])(?P<imf>[a-z]{2})(?P<slope>\d+\.\d+)"
    r"Z(?P<zsign>[mp])(?P<mh>\d+\.\d+)"
    r"T(?P<age>\d+\.\d+)"
    r"_i(?P<isochrone>[A-Z])(?P<asign>[mp])(?P<alpha>\d+\.\d+)"
    r"_(?P<abundance>baseFe|E[mp]\d+\.\d+)"
    r"(?P<suffix>_[A-Za-z0-9_]+)?\.fits(?:\.gz)?"
)

# Web-tool COMMENT cards, used to cross-check a file against its (possibly renamed) file name.
_HDR_AGE = re.compile(r"Age \(Gyr\):\s*([0-9.]+)")
_HDR_MH = re.compile(r"\[M/H\]:\s*([+-]?[0-9.]+)")


class SSPName(NamedTuple):
    mh: float  # [M/H], dex
    age_gyr: float  # as written in the name (4 decimals)
    family: str  # everything except [M/H] and age: files of one grid must share it


def parse_ssp_name(name: str | Path) -> SSPName:
    """Parse an E-MILES/MILES SSP file name (either isochrone scheme) into [M/H], age, family."""
    base = Path(name).name
    m = NAME_RE.fullmatch(base)
    if m is None:
        raise ValueError(f"{base}: not an E-MILES/MILES SSP file name (e.g. Ebi1.30Zm0.25T00.0300_iTp0.00_baseFe.fits)")
    mh = float(m["mh"]) * (-1.0 if m["zsign"] == "m" else 1.0)
    alpha = float(m["alpha"]) * (-1.0 if m["asign"] == "m" else 1.0)
    family = (
        f"{m['library']}{m['imf']}{m['slope']}_i{m['isochrone']}_alpha{alpha:+.2f}_{m['abundance']}{m['suffix'] or ''}"
    )
    return SSPName(mh=mh, age_gyr=float(m["age"]), family=family)


def read_ssp(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (wave [A], flux) of one linearly sampled SSP FITS file; ValueError names the file."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header
            data = hdul[0].data
            data = None if data is None else np.asarray(data, dtype=np.float64)
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for broken files
        raise ValueError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    if data is None or data.ndim != 1:
        shape = None if data is None else data.shape
        raise ValueError(f"{path}: expected a 1-D spectrum in the primary HDU, got shape {shape}")
    missing = [k for k in ("CRVAL1", "CDELT1", "CRPIX1") if k not in header]
    if missing:
        raise ValueError(f"{path}: missing wavelength WCS keyword(s) {', '.join(missing)}")
    ctype = str(header.get("CTYPE1", "")).upper()
    if "LOG" in ctype or header.get("DC-FLAG", 0) == 1:
        raise ValueError(f"{path}: log-sampled wavelength axis (CTYPE1={ctype!r}); expected linear")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: {np.count_nonzero(~np.isfinite(data))} non-finite flux values")
    _check_header_matches_name(path, header)
    crval, cdelt, crpix = (float(header[k]) for k in ("CRVAL1", "CDELT1", "CRPIX1"))
    wave = crval + (np.arange(data.size) + 1.0 - crpix) * cdelt
    return wave, data


def _check_header_matches_name(path: Path, header: fits.Header) -> None:
    text = "\n".join(str(c) for c in header.get("COMMENT", []))
    name = parse_ssp_name(path) if NAME_RE.fullmatch(path.name) else None
    if name is None:
        return
    for regex, value, what in ((_HDR_AGE, name.age_gyr, "age (Gyr)"), (_HDR_MH, name.mh, "[M/H]")):
        m = regex.search(text)
        if m and abs(float(m[1]) - value) > 1e-3:
            raise ValueError(f"{path}: header says {what} = {m[1]} but the file name says {value}")


@dataclass(frozen=True)
class SSPGrid:
    """Raw SSP spectra on their native wavelength grid, sorted by [M/H] then age."""

    wave: np.ndarray  # [n_pix] Angstrom (air, as MILES)
    flux: np.ndarray  # [n_Z, n_age, n_pix] native units (L_sun / A / M_sun for E-MILES)
    mh: np.ndarray  # [n_Z] dex, ascending
    age_gyr: np.ndarray  # [n_age] Gyr, ascending
    files: tuple[tuple[str, ...], ...]  # [n_Z][n_age] basenames
    family: str


def grid_layout(paths: Iterable[str | Path]) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """From file names alone: sorted unique [M/H] and ages, {(mh, age): path}, family.

    Raises ValueError for mixed families, duplicates, or a grid with holes (listing the holes).
    """
    named = [(p, parse_ssp_name(p)) for p in sorted(Path(p) for p in paths)]
    if not named:
        raise ValueError("no SSP files given")
    families: dict[str, Path] = {}
    for p, n in named:
        families.setdefault(n.family, p)
    if len(families) > 1:
        examples = "; ".join(f"{f} (e.g. {p.name})" for f, p in sorted(families.items()))
        raise ValueError(f"files from {len(families)} different SSP families cannot form one grid: {examples}")
    cells: dict[tuple[float, float], Path] = {}
    for p, n in named:
        key = (n.mh, n.age_gyr)
        if key in cells:
            raise ValueError(f"{p.name}: duplicate ([M/H]={n.mh:+.2f}, age={n.age_gyr} Gyr), also in {cells[key].name}")
        cells[key] = p
    mh = np.array(sorted({k[0] for k in cells}))
    age = np.array(sorted({k[1] for k in cells}))
    holes = [(z, a) for z in mh for a in age if (z, a) not in cells]
    if holes:
        listed = ", ".join(f"([M/H]={z:+.2f}, age={a:g} Gyr)" for z, a in holes[:20])
        more = f" and {len(holes) - 20} more" if len(holes) > 20 else ""
        raise ValueError(
            f"incomplete SSP grid: {len(cells)} files for {mh.size} [M/H] x {age.size} ages; "
            f"missing {len(holes)}: {listed}{more}"
        )
    return mh, age, cells, next(iter(families))


def read_ssp_grid(paths: Iterable[str | Path], wave_range: tuple[float, float] | None = None) -> SSPGrid:
    """Read a complete grid of SSP files; the grid shape comes from the file names.

    ``wave_range`` (Angstrom, inclusive) crops each spectrum right after reading, so a 636-file
    E-MILES grid (1680-50000 A) is never held in memory at full length.
    """
    mh, age, cells, family = grid_layout(paths)
    ref_path = cells[(mh[0], age[0])]
    ref_wave, _ = read_ssp(ref_path)
    if wave_range is None:
        keep = np.ones(ref_wave.size, bool)
    else:
        keep = (ref_wave >= wave_range[0]) & (ref_wave <= wave_range[1])
        if ref_wave[0] > wave_range[0] or ref_wave[-1] < wave_range[1]:
            raise ValueError(
                f"{ref_path}: covers {ref_wave[0]:.1f}-{ref_wave[-1]:.1f} A, "
                f"not the requested {wave_range[0]:.1f}-{wave_range[1]:.1f} A"
            )
    tol = 1e-6 * abs(ref_wave[1] - ref_wave[0])
    flux = np.empty((mh.size, age.size, int(keep.sum())))
    for i, z in enumerate(mh):
        for j, a in enumerate(age):
            path = cells[(z, a)]
            wave, f = read_ssp(path)
            if wave.size != ref_wave.size or np.max(np.abs(wave - ref_wave)) > tol:
                raise ValueError(
                    f"{path}: wavelength grid {wave[0]:.4f}+{wave[1] - wave[0]:.4f}*i (n={wave.size}) differs from "
                    f"{ref_path.name}: {ref_wave[0]:.4f}+{ref_wave[1] - ref_wave[0]:.4f}*i (n={ref_wave.size})"
                )
            flux[i, j] = f[keep]
    files = tuple(tuple(cells[(z, a)].name for a in age) for z in mh)
    return SSPGrid(wave=ref_wave[keep], flux=flux, mh=mh, age_gyr=age, files=files, family=family)
