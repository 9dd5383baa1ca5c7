"""IFU cube files (PHANGS-MUSE DR1 layout, also the mock's): headers checked, planes and strips read, cubes written.

File format read and written here (the MUSE pipeline / PHANGS-MUSE DR1 layout): a primary HDU with
no data, an image extension ``DATA`` [n_wave, ny, nx] in ``BUNIT`` (PHANGS: '10**(-20)*erg/s/cm**2/
Angstrom', per spaxel) and an image extension ``STAT`` with the variance (squared unit). The WCS has a
celestial part (RA---TAN / DEC--TAN) on axes 1-2 and a wavelength axis (``AWAV``, air; ``WAVE`` is
vacuum and is converted to air) on axis 3. Missing values are NaN in the files.

Apart from the binning (`specfm.galaxies.cube`) so that the file checks, which every unusable cube
must fail with its name and reason, read on their own; the binning sees a cube only through
``read_cube`` (in memory) or ``FileSource`` (strips of rows, for a mosaic that does not fit).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from specfm.io import atomic_path

from .maps import quiet_wcs
from .preprocessing import check_coverage, mask_bad, rest_edges, vacuum_to_air
from .spectra import bin_edges

# The binning's logger: a cube's read and masked counts belong to its binning log, under one name.
log = logging.getLogger("specfm.galaxies.cube")

FLUX_UNIT_PHANGS = "10**(-20)*erg/s/cm**2/Angstrom"
VAR_UNIT_PHANGS = "10**(-40)*erg**2/s**2/cm**4/Angstrom**2"
_FLAMBDA = u.erg / u.s / u.cm**2 / u.AA


@dataclass(frozen=True)
class Cube:
    """A cube held in memory (``read_cube``): small cubes and the tests; a mosaic goes through ``FileSource``."""

    wave: np.ndarray  # [n_wave] Angstrom, observed frame, air
    flux: np.ndarray  # [n_wave, ny, nx] float32 in `bunit`; NaN = masked
    var: np.ndarray | None  # [n_wave, ny, nx] float32 in bunit**2; NaN = masked (None: no STAT)
    wcs_celestial: WCS  # RA/Dec of the spaxel grid (numpy [y, x] = FITS axes 2, 1)
    bunit: str
    header: fits.Header = field(default_factory=fits.Header)  # the DATA extension header
    path: str = "<memory>"

    @property
    def shape(self) -> tuple[int, int]:
        return self.flux.shape[1:]


def _parse_unit(text: str) -> u.UnitBase:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        return u.Unit(text, format="fits", parse_strict="raise")


def flux_unit_scale(bunit: str, name: str = "cube") -> float:
    """Factor to erg/s/cm2/A (per spaxel or per arcsec^2); ValueError unless a flux density per wavelength."""
    try:
        unit = _parse_unit(bunit)
    except Exception as exc:
        raise ValueError(f"{name}: BUNIT {bunit!r} is not a unit astropy can parse ({exc})") from exc
    for ref in (_FLAMBDA, _FLAMBDA / u.arcsec**2):
        if unit.is_equivalent(ref):
            return float(unit.to(ref))
    raise ValueError(
        f"{name}: BUNIT {bunit!r} ({unit.physical_type}) is not a flux density per unit wavelength "
        f"(expected e.g. {FLUX_UNIT_PHANGS!r})"
    )


_CD_KEY = re.compile(r"^CD([1-9])_([1-9])$")


def check_linear_keywords(header: fits.Header, name: str, n_axes: int = 3) -> None:
    """ValueError naming ``name`` and the keywords when wcslib would have to invent a pixel step.

    With a CD matrix the FITS standard (Greisen & Calabretta 2002, Sect. 2.1.2) ignores CDELTi and
    takes absent CDi_j as 0; an axis with no CDi_j at all makes the matrix singular and wcslib's
    ``cdfix`` quietly sets CDi_i = 1 (1 A/px on a wavelength axis, whatever CDELTi says), which
    `quiet_wcs` would hide. Without a CD matrix, a spectral axis with neither CDELT3 nor CD3_3
    would default to a step of 1.0: also refused, since no real cube means that.
    """
    cd = {(int(m[1]), int(m[2])): k for k in header if (m := _CD_KEY.match(str(k)))}
    if cd:
        for i in range(1, n_axes + 1):
            if not any((i, j) in cd for j in range(1, n_axes + 1)):
                cdelt = f"; CDELT{i} = {header[f'CDELT{i}']!r} is ignored when a CD matrix is given" \
                    if f"CDELT{i}" in header else ""
                raise ValueError(
                    f"{name}: the WCS has a CD matrix ({', '.join(sorted(cd.values()))}) but no CD{i}_j for axis "
                    f"{i} (CTYPE{i} = {header.get(f'CTYPE{i}', '')!r}){cdelt}: add CD{i}_{i} (the pixel step)")
    elif n_axes >= 3 and "CDELT3" not in header:
        raise ValueError(f"{name}: the spectral axis has no pixel step (neither CD3_3 nor CDELT3)")


def _spectral_axis(header: fits.Header, name: str) -> np.ndarray:
    """Wavelengths [A, air] of the cube's third axis from its WCS (keywords checked first)."""
    check_linear_keywords(header, name)
    wcs = quiet_wcs(header)
    if wcs.wcs.spec < 0:
        ctypes = [header.get(f"CTYPE{i}", "") for i in (1, 2, 3)]
        raise ValueError(f"{name}: DATA has no spectral axis in its WCS (CTYPE1-3 = {ctypes})")
    if wcs.wcs.spec != 2:
        raise ValueError(f"{name}: the spectral axis is FITS axis {wcs.wcs.spec + 1}; expected axis 3 (NAXIS3)")
    ctype = wcs.wcs.ctype[2].upper()
    if not (ctype.startswith("AWAV") or ctype.startswith("WAVE")):
        raise ValueError(f"{name}: spectral axis CTYPE3 = {ctype!r} is not a wavelength (AWAV or WAVE)")
    spec = wcs.sub([3])
    wave = spec.all_pix2world(np.arange(int(header["NAXIS3"]), dtype=float), 0)[0]
    wave = wave * u.Unit(spec.wcs.cunit[0] or "m").to(u.AA)
    if ctype.startswith("WAVE"):
        log.info("%s: vacuum wavelengths (CTYPE3 = %s) converted to air", name, ctype)
        wave = vacuum_to_air(wave)
    if np.any(np.diff(wave) <= 0):
        raise ValueError(f"{name}: wavelengths are not increasing along axis 3")
    return np.asarray(wave, dtype=float)


@dataclass
class CubeFile:
    """An open, validated cube file: headers checked, nothing but the headers read."""

    hdul: fits.HDUList
    data_hdu: fits.ImageHDU
    stat_hdu: fits.ImageHDU | None
    wave: np.ndarray  # [i1 - i0] the planes that will be read
    i0: int
    i1: int
    var_scale: float
    bunit: str
    header: fits.Header
    wcs_celestial: WCS
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data_hdu.shape[1:])

    def read(self, y0: int = 0, y1: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 (flux, var) [planes, y0:y1, nx] read from the file (only those bytes), STAT scaled."""
        rows = slice(y0, y1)
        try:
            flux = np.array(self.data_hdu.section[self.i0 : self.i1, rows], dtype=np.float32)
            var = None if self.stat_hdu is None else np.array(
                self.stat_hdu.section[self.i0 : self.i1, rows], dtype=np.float32)
        except Exception as exc:
            raise ValueError(f"{self.name}: cannot read the cube data ({type(exc).__name__}: {exc})") from exc
        if var is not None and self.var_scale != 1.0:
            var *= np.float32(self.var_scale)
        return flux, var


def open_cube(path: str | Path, *, redshift: float | None, wave_out, margin_pix: int, memmap: bool) -> CubeFile:
    """Open ``path`` and check everything but the pixel values (read_cube's docstring); the caller closes it."""
    name = str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=memmap)
            len(hdul)  # astropy reads the headers lazily: load them all now
    except Exception as exc:  # OSError, ValueError, TypeError... for non-FITS or broken headers
        raise ValueError(f"{name}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message).lower()]
    if truncated:
        hdul.close()
        raise ValueError(f"{name}: truncated FITS file ({truncated[0]})")
    for w in caught:
        log.warning("%s: %s", name, w.message)
    try:
        names = [h.name for h in hdul]
        if "DATA" not in names:
            raise ValueError(f"{name}: no DATA extension (found {names})")
        data_hdu = hdul["DATA"]
        header = data_hdu.header.copy()
        if header.get("NAXIS", 0) != 3:
            raise ValueError(f"{name}: DATA must be a 3-D cube, found NAXIS = {header.get('NAXIS', 0)}")
        bunit = str(header.get("BUNIT", "")).strip()
        if not bunit:
            raise ValueError(f"{name}: DATA has no BUNIT; expected a flux density such as {FLUX_UNIT_PHANGS!r}")
        flux_unit_scale(bunit, name)
        wave = _spectral_axis(header, name)
        wcs = quiet_wcs(header)
        if not wcs.has_celestial:
            raise ValueError(f"{name}: DATA has no celestial (RA/Dec) WCS")
        i0, i1 = plane_range(wave, redshift, name, wave_out, margin_pix)
        var_scale = 1.0
        stat_hdu = hdul["STAT"] if "STAT" in names else None
        if stat_hdu is not None:
            if stat_hdu.header.get("NAXIS") != 3 or tuple(stat_hdu.shape) != tuple(data_hdu.shape):
                raise ValueError(f"{name}: STAT shape {stat_hdu.shape} differs from DATA shape {data_hdu.shape}")
            var_scale = _variance_scale(stat_hdu.header.get("BUNIT", ""), bunit, name)
        else:
            log.warning("%s: no STAT extension: no variance (preprocess needs one)", name)
    except Exception:
        hdul.close()
        raise
    return CubeFile(hdul=hdul, data_hdu=data_hdu, stat_hdu=stat_hdu, wave=wave[i0:i1], i0=i0, i1=i1,
                     var_scale=var_scale, bunit=bunit, header=header, wcs_celestial=wcs.celestial, name=name)


def plane_range(wave, redshift: float | None, name: str, wave_out=None, margin_pix: int = 8) -> tuple[int, int]:
    """[i0, i1): the planes of ``wave`` (observed) that the rest-frame output grid needs at
    ``redshift``, plus ``margin_pix`` each side (all planes without a redshift); checks coverage."""
    if redshift is None:
        return 0, int(np.size(wave))
    check_coverage(wave, redshift, name, wave_out)
    lo, hi = rest_edges(wave_out)
    e = bin_edges(wave)
    i0 = max(int(np.searchsorted(e, lo * (1 + redshift), side="right")) - 1 - margin_pix, 0)
    i1 = min(int(np.searchsorted(e, hi * (1 + redshift), side="left")) + margin_pix, int(np.size(wave)))
    return i0, i1


def log_masked(name: str, n_bad: int, n_pix: int, n_empty: int, n_spax: int) -> None:
    """Log what masking removed, so that a cube with many bad pixels says so in its binning log."""
    if n_bad:
        log.info("%s: %d of %d pixels masked (non-finite flux or variance, or variance <= 0)", name, n_bad, n_pix)
    if n_empty:
        log.info("%s: %d of %d spaxels have no valid pixel and are excluded", name, n_empty, n_spax)


def read_cube(path: str | Path, *, redshift: float | None = None, wave_out=None, margin_pix: int = 8) -> Cube:
    """Read a PHANGS-MUSE / mock cube into memory. ValueError naming the file for anything unusable.

    With ``redshift``, the cube must cover the output grid (default the paper's 4749.37-7100.49 A)
    in the rest frame, and only the planes needed (plus ``margin_pix``) are read, which halves the
    memory of a PHANGS cube (4750-9350 A). NaN/inf flux, NaN/inf variance and variance <= 0 are all
    masked (set to NaN in both arrays); the counts go to the log, as does the number of spaxels with
    no valid pixel left (they are excluded from binning by ``preprocess``). A full PHANGS mosaic
    does not fit in memory this way: ``preprocess_file`` bins it in strips instead.
    """
    cf = open_cube(path, redshift=redshift, wave_out=wave_out, margin_pix=margin_pix, memmap=True)
    with cf.hdul:
        flux, var = cf.read()
    n_bad = mask_bad(flux, var)
    empty = ~np.any(np.isfinite(flux), axis=0)
    log.info("%s: %d x %d spaxels x %d planes (%.1f-%.1f A) read", cf.name, *flux.shape[1:], flux.shape[0],
             cf.wave[0], cf.wave[-1])
    log_masked(cf.name, n_bad, flux.size, int(empty.sum()), empty.size)
    return Cube(wave=cf.wave, flux=flux, var=var, wcs_celestial=cf.wcs_celestial, bunit=cf.bunit, header=cf.header,
                path=cf.name)


def _variance_scale(stat_bunit: str, bunit: str, name: str) -> float:
    """Factor that brings STAT into bunit**2 (1 when STAT has no BUNIT)."""
    stat_bunit = str(stat_bunit).strip()
    if not stat_bunit:
        return 1.0
    try:
        return float(_parse_unit(stat_bunit).to(_parse_unit(bunit) ** 2))
    except Exception as exc:
        raise ValueError(f"{name}: STAT BUNIT {stat_bunit!r} is not the square of DATA BUNIT {bunit!r}") from exc


def write_cube(
    path: str | Path,
    wave_start: float,
    wave_step: float,
    flux: np.ndarray,
    var: np.ndarray | None,
    wcs_celestial: WCS | fits.Header,
    *,
    bunit: str = FLUX_UNIT_PHANGS,
    var_bunit: str = VAR_UNIT_PHANGS,
    primary_cards=(),
) -> None:
    """Write a cube in the PHANGS-MUSE DR1 layout (primary + DATA + STAT), float32, atomically.

    The wavelength axis is linear: ``wave_start + i * wave_step`` A (AWAV). ``primary_cards`` are
    (keyword, value, comment) triples for the primary header. No date cards: same input, same bytes.
    """
    hdr = cube_header(wave_start, wave_step, wcs_celestial, bunit=bunit)
    primary = fits.PrimaryHDU()
    for key, value, comment in primary_cards:
        primary.header[key if len(key) <= 8 and " " not in key else f"HIERARCH {key}"] = (value, comment)
    hdus = [primary, fits.ImageHDU(np.asarray(flux, dtype=np.float32), header=hdr)]
    if var is not None:
        shdr = hdr.copy()
        shdr["EXTNAME"] = "STAT"
        shdr["BUNIT"] = var_bunit
        hdus.append(fits.ImageHDU(np.asarray(var, dtype=np.float32), header=shdr))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def cube_header(wave_start: float, wave_step: float, wcs_celestial: WCS | fits.Header, *,
                bunit: str = FLUX_UNIT_PHANGS) -> fits.Header:
    """The DATA header of ``write_cube``: EXTNAME, BUNIT, a CD-matrix celestial WCS and a linear AWAV axis."""
    cel = wcs_celestial.to_header() if isinstance(wcs_celestial, WCS) else fits.Header(wcs_celestial)
    cel_wcs = quiet_wcs(cel)
    hdr = fits.Header()
    hdr["EXTNAME"] = "DATA"
    hdr["BUNIT"] = bunit
    # CD-matrix form, as the MUSE pipeline writes it.
    pc = cel_wcs.wcs.get_pc() * cel_wcs.wcs.cdelt[:, None]
    hdr["WCSAXES"] = 3
    for i, key in enumerate(("CTYPE1", "CTYPE2")):
        hdr[key] = cel_wcs.wcs.ctype[i]
    hdr["CTYPE3"] = ("AWAV", "air wavelength")
    hdr["CUNIT1"], hdr["CUNIT2"], hdr["CUNIT3"] = "deg", "deg", "Angstrom"
    hdr["CRPIX1"], hdr["CRPIX2"], hdr["CRPIX3"] = float(cel_wcs.wcs.crpix[0]), float(cel_wcs.wcs.crpix[1]), 1.0
    hdr["CRVAL1"], hdr["CRVAL2"] = float(cel_wcs.wcs.crval[0]), float(cel_wcs.wcs.crval[1])
    hdr["CRVAL3"] = float(wave_start)
    for i in range(2):
        for j in range(2):
            hdr[f"CD{i + 1}_{j + 1}"] = float(pc[i, j])
    hdr["CD1_3"], hdr["CD2_3"], hdr["CD3_1"], hdr["CD3_2"] = 0.0, 0.0, 0.0, 0.0
    hdr["CD3_3"] = float(wave_step)
    hdr["RADESYS"] = cel_wcs.wcs.radesys or "FK5"
    if np.isfinite(cel_wcs.wcs.equinox):
        hdr["EQUINOX"] = float(cel_wcs.wcs.equinox)
    return hdr


class FileSource:
    """Row strips read from the file on demand (masked as ``read_cube`` does), never the whole cube."""

    def __init__(self, cf: CubeFile):
        if cf.stat_hdu is None:
            raise ValueError(f"{cf.name}: no variance (STAT) extension: cannot compute S/N for binning")
        self.cf, self.name, self.wave, self.shape = cf, cf.name, cf.wave, cf.shape
        self.wcs_celestial, self.bunit = cf.wcs_celestial, cf.bunit
        self.n_bad = self.n_pix = self.n_empty = 0

    def read(self, y0: int, y1: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
        flux, var = self.cf.read(y0, y1)
        n_bad = mask_bad(flux, var)
        if first:  # count once (the second pass reads the same strips again)
            self.n_bad += n_bad
            self.n_pix += flux.size
            self.n_empty += int((~np.any(np.isfinite(flux), axis=0)).sum())
        return flux, var


def strip_rows(n_planes: int, nx: int, max_chunk_mb: float) -> int:
    """Rows of spaxels per strip so that one strip of flux + variance (float32) is <= ``max_chunk_mb``."""
    return max(1, int(max_chunk_mb * 2**20 // (n_planes * nx * 4 * 2)))


__all__ = ["Cube", "CubeFile", "FLUX_UNIT_PHANGS", "FileSource", "VAR_UNIT_PHANGS", "check_linear_keywords",
           "cube_header", "flux_unit_scale", "log_masked", "open_cube", "plane_range", "read_cube", "strip_rows",
           "write_cube"]
