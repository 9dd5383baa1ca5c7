"""IFU cubes (PHANGS-MUSE DR1 or the mock) -> Voronoi-binned rest-frame spectra for GalProTE.

File format read and written here (the MUSE pipeline / PHANGS-MUSE DR1 layout): a primary HDU with
no data, an image extension ``DATA`` [n_wave, ny, nx] in ``BUNIT`` (PHANGS: '10**(-20)*erg/s/cm**2/
Angstrom', per spaxel) and an image extension ``STAT`` with the variance (squared unit). The WCS has a
celestial part (RA---TAN / DEC--TAN) on axes 1-2 and a wavelength axis (``AWAV``, air; ``WAVE`` is
vacuum and is converted to air) on axis 3. Missing values are NaN in the files.

Preprocessing (GalProTE Sect. 4.3: "pre-processed to correct for redshift (assuming a single redshift
per galaxy) and to filter out bright lines using median filters; major emission lines masked"):

1. de-redshift with one systemic z: lambda_rest = lambda_obs / (1+z), f_rest = f_obs (1+z);
2. each spaxel is rebinned onto the paper grid (948 px, 4749.37-7100.49 A) with the flux-conserving
   bin-overlap matrix W (the same algorithm as ``spectra.resample``); the variance goes through W**2,
   which is exact for independent input pixels and ignores the covariance that rebinning (and the
   MUSE pipeline's own resampling) creates between neighbouring pixels -- so the propagated noise
   is approximate (an underestimate of the true per-pixel noise, as usual for MUSE cubes);
   masked pixels (NaN, inf, variance <= 0) are linearly interpolated over within a spaxel when
   they are at most ``max_bad_frac`` of the pixels used; spaxels with more are excluded;
3. per spaxel signal = mean flux, noise = sqrt(mean variance) over the line-free rest window
   ``snr_window`` (default 5300-5500 A) on the paper grid (S/N per 2.48 A pixel); spaxels with
   S/N < ``min_snr`` are excluded (bin_id -1), the rest are Voronoi-binned to ``target_snr`` with
   ``vorbin`` (Cappellari & Copin 2003; WVT of Diehl & Statler 2006) and summed;
4. bright-line filtering on the *binned* spectra (higher S/N than single spaxels, so the outlier test
   is robust): inside the Table 2 regions widened by ``line_pad`` px, pixels more than
   ``clip_sigma`` noise sigma *above* a running median of ``median_width`` px are replaced by that
   median (emission lines and positive sky residuals; absorption lines are left alone). The Table 2
   pixels are then removed for the model input anyway, so the filter matters for the pixels next to
   the masks (line wings pushed out by rotation) and for ``spectra_full`` (used by pPXF and plots).
   Defaults (25 px = 62 A, pad 3 px, 4 sigma) measured on the mock: 0.3 kept pixels per bin replaced,
   0.7 % of pixels hit in a line-free test window (absorption-line structure at S/N > 35, not noise);
   at 3 sigma these are 0.9 px and 3.4 %;
5. per bin: the 948-px spectrum and noise, the median over the kept pixels (``norm``), and the
   876-px masked, median-normalised spectrum that the network reads.

Memory: ``read_cube`` + ``preprocess`` hold the cube (fine for the mock; a PHANGS mosaic is
several GB per extension). ``preprocess_file`` (used by the workflow) reads strips of spaxel rows
twice instead -- per-spaxel S/N first, per-bin sums after binning -- and gives the same bytes;
``python -m specfm.galaxies.bench_memory`` measures its peak RSS against cube size.

Resolution: the cube's LSF is MUSE's at the *observed* wavelength; after de-redshifting it is
FWHM_MUSE(lambda_rest (1+z)) / (1+z) in the rest frame, while the templates are at
FWHM_MUSE(lambda_rest). The difference is < 1 % for PHANGS redshifts (z < 0.01) and is not corrected.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from specfm.io import atomic_path

from .preprocessing import (RestFrame, vacuum_to_air, check_coverage, filter_bright_lines, finish, mask_bad, rebin_matrix,
                            rest_edges, snr_in_window)
from .spectra import bin_edges, paper_wavelength_grid

log = logging.getLogger(__name__)

FORMAT = "specfm.galaxies.bins/1"
FLUX_UNIT_PHANGS = "10**(-20)*erg/s/cm**2/Angstrom"
VAR_UNIT_PHANGS = "10**(-40)*erg**2/s**2/cm**4/Angstrom**2"
_FLAMBDA = u.erg / u.s / u.cm**2 / u.AA
SNR_WINDOW = (5300.0, 5500.0)  # A rest: no strong emission or sky line for z < 0.01 (5577 sky -> 5533 A)


# ------------------------------------------------------------------------------------------ cube IO


@dataclass(frozen=True)
class Cube:
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


def _quiet_wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


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
    `_quiet_wcs` would hide. Without a CD matrix, a spectral axis with neither CDELT3 nor CD3_3
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
    wcs = _quiet_wcs(header)
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
class _CubeFile:
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


def _open_cube(path: str | Path, *, redshift: float | None, wave_out, margin_pix: int, memmap: bool) -> _CubeFile:
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
        wcs = _quiet_wcs(header)
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
    return _CubeFile(hdul=hdul, data_hdu=data_hdu, stat_hdu=stat_hdu, wave=wave[i0:i1], i0=i0, i1=i1,
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


def _log_masked(name: str, n_bad: int, n_pix: int, n_empty: int, n_spax: int) -> None:
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
    cf = _open_cube(path, redshift=redshift, wave_out=wave_out, margin_pix=margin_pix, memmap=True)
    with cf.hdul:
        flux, var = cf.read()
    n_bad = mask_bad(flux, var)
    empty = ~np.any(np.isfinite(flux), axis=0)
    log.info("%s: %d x %d spaxels x %d planes (%.1f-%.1f A) read", cf.name, *flux.shape[1:], flux.shape[0],
             cf.wave[0], cf.wave[-1])
    _log_masked(cf.name, n_bad, flux.size, int(empty.sum()), empty.size)
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
    cel_wcs = _quiet_wcs(cel)
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


# ------------------------------------------------------------------------------------- preprocess


@dataclass(frozen=True)
class Bins:
    wave: np.ndarray  # [948] Angstrom, rest frame (air)
    mask: np.ndarray  # [948] bool, True = kept (Table 2)
    spectra_full: np.ndarray  # [n_bins, 948] float32, rest frame, summed over the bin, cube units * (1+z)
    noise_full: np.ndarray  # [n_bins, 948] float32, 1-sigma, same units (approximate: see the module doc)
    spectra: np.ndarray  # [n_bins, 876] float32, spectra_full[:, mask] / norm: the model input
    norm: np.ndarray  # [n_bins] median of spectra_full over the kept pixels
    snr: np.ndarray  # [n_bins] mean flux / sqrt(mean variance) in the S/N window, per 2.48 A pixel
    bin_id: np.ndarray  # [ny, nx] int32, -1 = not used
    xbar: np.ndarray  # [n_bins] flux-weighted centroid, 0-based pixel x (column)
    ybar: np.ndarray  # [n_bins] ... y (row)
    n_spaxels: np.ndarray  # [n_bins] int32
    n_filtered: np.ndarray  # [n_bins] int32, pixels replaced by the bright-line median filter
    wcs_header: str  # celestial WCS of the cube (fits.Header.tostring(sep="\n"))
    meta: dict = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        return int(self.norm.size)

    @property
    def wcs(self) -> WCS:
        return _quiet_wcs(fits.Header.fromstring(self.wcs_header, sep="\n"))


def _voronoi(x, y, signal, noise, target_snr: float, name: str) -> np.ndarray:
    """vorbin bin numbers; every spaxel its own bin when all already reach the target."""
    sn = signal / noise
    if sn.min() >= target_snr:
        log.info("%s: all %d spaxels reach S/N %.1f: no binning needed", name, sn.size, target_snr)
        return np.arange(sn.size)
    total = signal.sum() / np.sqrt(np.sum(noise**2))
    if total < target_snr:
        raise ValueError(
            f"{name}: the {sn.size} usable spaxels together reach S/N {total:.1f} < target {target_snr:g}; "
            "lower target_snr"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vorbin's deprecation notice (PowerBin) on import and call
        from vorbin.voronoi_2d_binning import voronoi_2d_binning

        out = voronoi_2d_binning(x, y, signal, noise, target_snr, cvt=True, pixelsize=1.0, plot=False,
                                 quiet=True, wvt=True)
    return np.asarray(out[0])


class _MemorySource:
    """Row strips of an in-memory ``Cube`` (views; its NaNs are the mask)."""

    def __init__(self, cube: Cube):
        if cube.var is None:
            raise ValueError(f"{cube.path}: no variance (STAT) extension: cannot compute S/N for binning")
        self.cube, self.name, self.wave, self.shape = cube, cube.path, cube.wave, cube.shape
        self.wcs_celestial, self.bunit = cube.wcs_celestial, cube.bunit

    def read(self, y0: int, y1: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.cube.flux[:, y0:y1], self.cube.var[:, y0:y1]


class _FileSource:
    """Row strips read from the file on demand (masked as ``read_cube`` does), never the whole cube."""

    def __init__(self, cf: _CubeFile):
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


def preprocess(
    cube: Cube,
    redshift: float,
    *,
    target_snr: float = 35.0,
    min_snr: float = 3.0,
    snr_window: tuple[float, float] = SNR_WINDOW,
    wave_out=None,
    max_bad_frac: float = 0.2,
    line_filter: bool = True,
    median_width: int = 25,
    line_pad: int = 3,
    clip_sigma: float = 4.0,
    chunk: int = 4096,
    max_chunk_mb: float = 256.0,
) -> Bins:
    """Cube -> rest-frame, Voronoi-binned, line-filtered, masked and median-normalised spectra.

    See the module docstring for each step. ``target_snr`` 35 is the PHANGS-MUSE binning target
    (GalProTE Sect. 3.2, after Pessa et al. 2023), S/N per output (2.48 A) pixel in ``snr_window``.
    ``preprocess_file`` does the same from a file, one strip of rows at a time.
    """
    return _preprocess(_MemorySource(cube), redshift, target_snr=target_snr, min_snr=min_snr, snr_window=snr_window,
                       wave_out=wave_out, max_bad_frac=max_bad_frac, line_filter=line_filter,
                       median_width=median_width, line_pad=line_pad, clip_sigma=clip_sigma, chunk=chunk,
                       max_chunk_mb=max_chunk_mb)


def preprocess_file(path: str | Path, redshift: float, *, margin_pix: int = 8, max_chunk_mb: float = 256.0,
                    kind: str = "phangs", **kwargs) -> Bins:
    """``preprocess(read_cube(path, redshift=redshift), redshift, ...)`` without holding the cube.

    Two passes over strips of spaxel rows read from the file (``section``, no memmap, so untouched
    planes and rows are never paged in): the first computes each spaxel's masked-pixel count,
    signal and noise (only the S/N window is rebinned); after Voronoi binning the second re-reads
    the strips and adds each selected spaxel's rebinned spectrum and variance to its bin. Memory:
    one strip (``max_chunk_mb``) + per-spaxel scalars + the per-bin sums (float64 [n_bins, 948] x 2),
    not the cube (several GB for a PHANGS mosaic). The per-bin sums are added spaxel by spaxel in
    the same order as the in-memory path, so the results are the same bytes. ``kind``: "phangs" (or
    "mock", the same layout: DATA/STAT) or "manga" (a MaNGA LOGCUBE, `specfm.galaxies.manga`).
    """
    wave_out = kwargs.get("wave_out")
    if kind == "manga":
        from .manga import MangaSource

        with MangaSource(path, redshift=redshift, wave_out=wave_out, margin_pix=margin_pix) as src:
            return _preprocess(src, redshift, max_chunk_mb=max_chunk_mb, **kwargs)
    if kind not in ("phangs", "mock"):
        raise ValueError(f"{path}: unknown cube kind {kind!r} (phangs, mock or manga)")
    cf = _open_cube(path, redshift=redshift, wave_out=wave_out, margin_pix=margin_pix, memmap=False)
    with cf.hdul:
        src = _FileSource(cf)
        bins = _preprocess(src, redshift, max_chunk_mb=max_chunk_mb, **kwargs)
    return bins


def _preprocess(src, redshift: float, *, target_snr: float = 35.0, min_snr: float = 3.0,
                snr_window: tuple[float, float] = SNR_WINDOW, wave_out=None, max_bad_frac: float = 0.2,
                line_filter: bool = True, median_width: int = 25, line_pad: int = 3, clip_sigma: float = 4.0,
                chunk: int = 4096, max_chunk_mb: float = 256.0) -> Bins:
    name = src.name
    wave_out = paper_wavelength_grid() if wave_out is None else np.asarray(wave_out, dtype=float)
    check_coverage(src.wave, redshift, name, wave_out)
    rf = RestFrame(src.wave, redshift, wave_out)
    used = rf.used
    win = (wave_out >= snr_window[0]) & (wave_out <= snr_window[1])
    if not win.any():
        raise ValueError(f"snr_window {snr_window} holds no pixel of the output grid")
    w_win, w2_win = rf.rows(win)  # pass 1 needs the S/N window only

    n_wave = src.wave.size
    ny, nx = src.shape
    n_spax = ny * nx
    rows = min(strip_rows(n_wave, nx, max_chunk_mb), ny)

    def strips(first: bool):
        for y0 in range(0, ny, rows):
            y1 = min(y0 + rows, ny)
            yield y0 * nx, lambda y0=y0, y1=y1: src.read(y0, y1, first)

    # pass 1, per spaxel: masked-pixel count (state 0 ok, 1 empty, 2 too many masked), signal, noise
    nbad = np.zeros(n_spax, np.int64)
    signal_all = np.zeros(n_spax)
    noise_all = np.zeros(n_spax)
    for base, read in strips(first=True):
        f3, v3 = read()
        flux2d, var2d = f3.reshape(n_wave, -1), v3.reshape(n_wave, -1)
        ns = flux2d.shape[1]
        for s0 in range(0, ns, chunk):
            sl = slice(s0, min(s0 + chunk, ns))
            nbad[base + s0 : base + sl.stop] = rf.count_bad(flux2d[:, sl], var2d[:, sl])
        local_nbad = nbad[base : base + ns]
        ok = np.flatnonzero(local_nbad <= max_bad_frac * used.size)
        ok = ok[local_nbad[ok] < used.size]
        for c0 in range(0, ok.size, chunk):
            cols = ok[c0 : c0 + chunk]
            spec, var = rf.rebin(flux2d, var2d, cols, local_nbad[cols], w_win, w2_win)
            signal_all[base + cols] = spec.mean(axis=1, dtype=np.float64)
            noise_all[base + cols] = np.sqrt(var.mean(axis=1, dtype=np.float64))
        del f3, v3, flux2d, var2d
    if hasattr(src, "n_bad"):  # read from a file: counted while reading
        log.info("%s: %d x %d spaxels x %d planes (%.1f-%.1f A) read in strips of %d rows", name, ny, nx, n_wave,
                 src.wave[0], src.wave[-1], rows)
        _log_masked(name, src.n_bad, src.n_pix, src.n_empty, n_spax)
    state = np.where(nbad == used.size, 1, np.where(nbad > max_bad_frac * used.size, 2, 0)).astype(np.int8)
    ok_idx = np.flatnonzero(state == 0)
    signal, noise = signal_all[ok_idx], noise_all[ok_idx]
    n_filled = int(nbad[ok_idx].sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        sn = np.where(noise > 0, signal / noise, 0.0)
    good_ok = np.flatnonzero(np.isfinite(sn) & (sn >= min_snr) & (signal > 0))
    counts = {
        "n_spaxels": n_spax,
        "n_empty": int((state == 1).sum()),
        "n_too_many_masked": int((state == 2).sum()),
        "n_below_min_snr": int(ok_idx.size - good_ok.size),
        "n_pixels_interpolated": n_filled,
    }
    log.info("%s: %d spaxels; excluded %d empty, %d with > %.0f%% masked pixels, %d below S/N %.1f; "
             "%d masked pixels interpolated", name, n_spax, counts["n_empty"], counts["n_too_many_masked"],
             100 * max_bad_frac, counts["n_below_min_snr"], min_snr, n_filled)
    if good_ok.size == 0:
        raise ValueError(f"{name}: no spaxel has S/N >= {min_snr:g} in {snr_window[0]:.0f}-{snr_window[1]:.0f} A")
    idx = ok_idx[good_ok]  # flat spaxel indices
    signal, noise = signal[good_ok], noise[good_ok]
    yy, xx = np.divmod(idx, nx)
    classes = _voronoi(xx.astype(float), yy.astype(float), signal, noise, target_snr, name)
    _, inv = np.unique(classes, return_inverse=True)
    n_bins = int(inv.max()) + 1

    # pass 2: per-bin sums, spaxel by spaxel in index order (np.add.at adds in order, as a CSR product would)
    bin_of = np.full(n_spax, -1, np.int64)
    bin_of[idx] = inv
    full = np.zeros((n_bins, wave_out.size))
    full_var = np.zeros((n_bins, wave_out.size))
    for base, read in strips(first=False):
        ns = min(rows * nx, n_spax - base)
        sel = np.flatnonzero(bin_of[base : base + ns] >= 0)
        if sel.size == 0:
            continue
        f3, v3 = read()
        flux2d, var2d = f3.reshape(n_wave, -1), v3.reshape(n_wave, -1)
        for c0 in range(0, sel.size, chunk):
            cols = sel[c0 : c0 + chunk]
            spec, var = rf.rebin(flux2d, var2d, cols, nbad[base + cols])
            np.add.at(full, bin_of[base + cols], spec.astype(np.float64))
            np.add.at(full_var, bin_of[base + cols], var.astype(np.float64))
        del f3, v3, flux2d, var2d
    done = finish(full, full_var, wave_out, line_filter=line_filter, median_width=median_width, line_pad=line_pad,
                  clip_sigma=clip_sigma)
    full, full_noise, hit, mask, norm = done.full, done.noise, done.hit, done.mask, done.norm
    keep = np.isfinite(norm) & (norm > 0)
    if not keep.all():
        log.warning("%s: %d bins with median flux <= 0 dropped", name, int((~keep).sum()))
        new = np.cumsum(keep) - 1
        inv_new = np.where(keep[inv], new[inv], -1)
        sel = inv_new >= 0
        idx, inv, signal = idx[sel], inv_new[sel], signal[sel]
        full, full_var, full_noise, hit, norm = full[keep], full_var[keep], full_noise[keep], hit[keep], norm[keep]
        n_bins = int(keep.sum())
    bin_id = np.full(n_spax, -1, np.int32)
    bin_id[idx] = inv
    bin_id = bin_id.reshape(ny, nx)
    n_in = np.bincount(inv, minlength=n_bins)
    sw = signal
    yy, xx = np.divmod(idx, nx)
    tot = np.bincount(inv, weights=sw, minlength=n_bins)
    xbar = np.bincount(inv, weights=sw * xx, minlength=n_bins) / tot
    ybar = np.bincount(inv, weights=sw * yy, minlength=n_bins) / tot
    snr = snr_in_window(full, full_var, wave_out, snr_window)
    multi = n_in > 1
    log.info("%s: %d bins (%d single spaxels); S/N of multi-spaxel bins: median %.1f, min %.1f (target %.1f)",
             name, n_bins, int((~multi).sum()), float(np.median(snr[multi])) if multi.any() else float("nan"),
             float(snr[multi].min()) if multi.any() else float("nan"), target_snr)
    meta = {
        "format": FORMAT,
        "source": Path(name).name,
        "redshift": float(redshift),
        "target_snr": float(target_snr),
        "min_snr": float(min_snr),
        "snr_window": [float(snr_window[0]), float(snr_window[1])],
        "max_bad_frac": float(max_bad_frac),
        "line_filter": {"enabled": bool(line_filter), "median_width_px": int(median_width),
                        "pad_px": int(line_pad), "clip_sigma": float(clip_sigma),
                        "rule": "positive outliers above a running median inside Table 2 regions + pad"},
        "bunit": f"({src.bunit}) rest frame: f_obs * (1+z) per rest Angstrom",
        "variance": "W**2 propagation, covariance ignored (approximate)",
        "counts": counts,
    }
    spectra_full = full.astype(np.float32)
    return Bins(
        wave=wave_out,
        mask=mask,
        spectra_full=spectra_full,
        noise_full=full_noise.astype(np.float32),
        spectra=(full[:, mask] / norm[:, None]).astype(np.float32),
        norm=norm.astype(np.float64),
        snr=snr.astype(np.float64),
        bin_id=bin_id,
        xbar=xbar,
        ybar=ybar,
        n_spaxels=n_in.astype(np.int32),
        n_filtered=hit.sum(axis=1).astype(np.int32),
        wcs_header=src.wcs_celestial.to_header().tostring(sep="\n"),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------- bins IO

_BIN_ARRAYS = {
    "wave": np.float64, "mask": np.bool_, "spectra_full": np.float32, "noise_full": np.float32,
    "spectra": np.float32, "norm": np.float64, "snr": np.float64, "bin_id": np.int32, "xbar": np.float64,
    "ybar": np.float64, "n_spaxels": np.int32, "n_filtered": np.int32,
}


def write_bins(bins: Bins, path: str | Path) -> None:
    """HDF5, one dataset per array + attributes ``format``, ``wcs_header``, ``meta`` (sorted JSON).

    No object timestamps and a fixed layout, so the same bins always give the same bytes; atomic.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            for name, dtype in _BIN_ARRAYS.items():
                h5.create_dataset(name, data=np.asarray(getattr(bins, name), dtype=dtype), track_times=False)
            h5.attrs["format"] = FORMAT
            h5.attrs["wcs_header"] = bins.wcs_header
            h5.attrs["meta"] = json.dumps(bins.meta, sort_keys=True)


def read_bins(path: str | Path) -> Bins:
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from exc
    with h5:
        fmt = h5.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(f"{path}: not a bins file of format {FORMAT} (found {fmt!r})")
        arrays = {name: h5[name][()] for name in _BIN_ARRAYS}
        wcs_header = h5.attrs["wcs_header"]
        meta = json.loads(h5.attrs["meta"])
    arrays["mask"] = arrays["mask"].astype(bool)
    return Bins(wcs_header=str(wcs_header), meta=meta, **arrays)


__all__ = [
    "Bins", "Cube", "FLUX_UNIT_PHANGS", "VAR_UNIT_PHANGS", "check_coverage", "filter_bright_lines",
    "flux_unit_scale", "preprocess", "preprocess_file", "read_bins", "read_cube", "rebin_matrix", "strip_rows",
    "cube_header", "write_bins", "write_cube",
]
