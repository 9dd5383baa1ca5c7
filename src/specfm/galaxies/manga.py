"""MaNGA (SDSS-IV) data: LOGCUBE cubes for the strip-wise binning path, and MaNGA-format spectra files.

LOGCUBE layout read here (MaNGA DRP data model, ``manga-<plate>-<ifu>-LOGCUBE.fits[.gz]``):

    FLUX   float32 [n_wave, ny, nx]  1e-17 erg/s/cm^2/A per spaxel (BUNIT '1E-17 erg/s/cm^2/Ang/spaxel');
                                     celestial CD-matrix WCS on axes 1-2
    IVAR   float32 [n_wave, ny, nx]  inverse variance, (1e-17 erg/s/cm^2/A)^-2; <= 0 = no data
    MASK   int32   [n_wave, ny, nx]  MANGA_DRP3PIXMASK bits: 0 NOCOV, 1 LOWCOV, 2 DEADFIBER, 3 FORESTAR,
                                     10 DONOTUSE (sdssMaskbits.par)
    WAVE   float64 [n_wave]          VACUUM wavelengths [A], log-spaced (10^-4 dex), 3622-10354 A

Pixels with any of ``MASK_BITS`` (DONOTUSE and FORESTAR, the bits the MaNGA DAP refuses to fit; the
DRP sets DONOTUSE wherever NOCOV / LOWCOV / DEADFIBER make a pixel unusable) or IVAR <= 0 are masked.
Wavelengths go to air (`preprocessing.vacuum_to_air`, Ciddor 1996) -- the templates are in air.
Fluxes stay in the file's 1e-17 units (the network reads median-normalised spectra; the unit is
recorded in the bins' meta). The MaNGA LSF (R ~ 2000, FWHM ~ 2.5-3 A in the paper window) is close
to MUSE's and is not matched to the templates, as for PHANGS.

A MaNGA-format *spectra* file (e.g. the DAP's test file ``MaNGA_test_spectra.fits.gz``: WAVE
[n_wave], FLUX / IVAR / MASK [n, n_wave], optional Z [n]) is read by ``spectra_from_manga`` as n
single spectra for `specfm.galaxies.single`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from specfm.io import atomic_path

from .cube_io import check_linear_keywords, plane_range
from .preprocessing import mask_bad, vacuum_to_air
from .spectrum import Spectrum, air_wavelengths

log = logging.getLogger(__name__)

MASK_BITS = {"FORESTAR": 3, "DONOTUSE": 10}
FLUX_UNIT_MANGA = "1E-17 erg/s/cm^2/Ang/spaxel"
EXTENSIONS = ("FLUX", "IVAR", "MASK", "WAVE")


def bad_pixels(mask, bits=MASK_BITS) -> np.ndarray:
    """True where ``mask`` has any of ``bits`` ({name: bit number}) set."""
    value = 0
    for b in bits.values():
        value |= 1 << int(b)
    return (np.asarray(mask).astype(np.int64) & value) != 0


def _masked_var(flux, ivar, mask, bits) -> tuple[np.ndarray, np.ndarray]:
    """float32 (flux, var) with masked pixels NaN in both (mask bits, IVAR <= 0 or non-finite)."""
    flux = np.array(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(ivar > 0, np.float32(1.0) / ivar, np.float32(np.nan)).astype(np.float32)
    bad = bad_pixels(mask, bits)
    flux[bad] = np.nan
    var[bad] = np.nan
    return flux, var


class _Section:
    """``section[i0:i1, rows]`` spelt ``_Section(section, i0, i1)[:, rows]`` (reads only those bytes)."""

    def __init__(self, section, i0: int, i1: int):
        self.section, self.i0, self.i1 = section, i0, i1

    def __getitem__(self, key):
        return self.section[self.i0 : self.i1, key[1]]


class MangaSource:
    """Row strips of a MaNGA LOGCUBE for `cube._preprocess` (the interface of `cube_io.FileSource`)."""

    def __init__(self, path: str | Path, *, redshift: float, wave_out=None, margin_pix: int = 8, bits=MASK_BITS):
        self.name = name = str(path)
        self.bits = dict(bits)
        self.gzipped = str(path).lower().endswith(".gz")
        self._cache: dict = {}
        self.n_bad = self.n_pix = self.n_empty = 0
        try:
            self.hdul = fits.open(path, memmap=False)
            len(self.hdul)
        except Exception as exc:
            raise ValueError(f"{name}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
        try:
            self._check(redshift, wave_out, margin_pix)
        except Exception:
            self.hdul.close()
            raise

    def _check(self, redshift, wave_out, margin_pix) -> None:
        name, hdul = self.name, self.hdul
        names = [h.name for h in hdul]
        missing = [e for e in EXTENSIONS if e not in names]
        if missing:
            raise ValueError(f"{name}: not a MaNGA LOGCUBE: no {', '.join(missing)} extension (found {names})")
        flux = hdul["FLUX"]
        if flux.header.get("NAXIS") != 3:
            raise ValueError(f"{name}: FLUX must be a 3-D cube, found NAXIS = {flux.header.get('NAXIS')}")
        for ext in ("IVAR", "MASK"):
            if tuple(hdul[ext].shape) != tuple(flux.shape):
                raise ValueError(f"{name}: {ext} shape {hdul[ext].shape} differs from FLUX shape {flux.shape}")
        wave_vac = np.asarray(hdul["WAVE"].data, dtype=float)
        if wave_vac.ndim != 1 or wave_vac.size != flux.shape[0]:
            raise ValueError(f"{name}: WAVE has {wave_vac.size} values for {flux.shape[0]} FLUX planes")
        if np.any(~np.isfinite(wave_vac)) or np.any(np.diff(wave_vac) <= 0):
            raise ValueError(f"{name}: WAVE is not finite and increasing")
        bunit = str(flux.header.get("BUNIT", "")).strip()
        if bunit and "1e-17" not in bunit.lower().replace(" ", ""):
            raise ValueError(f"{name}: FLUX BUNIT {bunit!r} is not MaNGA's {FLUX_UNIT_MANGA!r}")
        self.bunit = bunit or FLUX_UNIT_MANGA
        check_linear_keywords(flux.header, name, n_axes=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(flux.header, naxis=2)
        if not wcs.has_celestial:
            raise ValueError(f"{name}: FLUX has no celestial (RA/Dec) WCS")
        self.wcs_celestial = wcs.celestial
        wave = vacuum_to_air(wave_vac)
        log.info("%s: MaNGA vacuum wavelengths converted to air; masked bits %s", name, self.bits)
        self.i0, self.i1 = plane_range(wave, redshift, name, wave_out, margin_pix)
        self.wave = wave[self.i0 : self.i1]
        self.shape = tuple(flux.shape[1:])

    def read(self, y0: int, y1: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            flux, ivar, mask = (self._planes(e)[:, y0:y1] for e in ("FLUX", "IVAR", "MASK"))
        except Exception as exc:
            raise ValueError(f"{self.name}: cannot read the cube data ({type(exc).__name__}: {exc})") from exc
        flux, var = _masked_var(flux, ivar, mask, self.bits)
        n_bad = mask_bad(flux, var)
        if first:
            self.n_bad += n_bad
            self.n_pix += flux.size
            self.n_empty += int((~np.any(np.isfinite(flux), axis=0)).sum())
        return flux, var

    def _planes(self, ext: str):
        """The needed planes of ``ext``: file sections (only those bytes) for a plain FITS file; for a
        gzipped one (DR17 ships ``.fits.gz``) the planes are decompressed once and kept, since each
        section of a gzip stream would decompress it again from the start."""
        if not self.gzipped:
            return _Section(self.hdul[ext].section, self.i0, self.i1)
        if ext not in self._cache:
            self._cache[ext] = np.asarray(self.hdul[ext].data[self.i0 : self.i1])
        return self._cache[ext]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hdul.close()


def spectra_from_manga(hdul: fits.HDUList, name: str, path: str, frame: str | None, bits=MASK_BITS) -> list:
    """The rows of a MaNGA-format spectra file (module docstring) as `spectrum.Spectrum` objects."""
    flux = np.asarray(hdul["FLUX"].data)
    if flux.ndim == 3:
        raise ValueError(f"{name}: a MaNGA cube (FLUX is 3-D): bin it with a galaxies target of kind manga")
    flux2 = np.atleast_2d(flux)
    ivar = np.atleast_2d(np.asarray(hdul["IVAR"].data))
    mask = np.atleast_2d(np.asarray(hdul["MASK"].data)) if "MASK" in hdul else np.zeros(flux2.shape, np.int32)
    if ivar.shape != flux2.shape or mask.shape != flux2.shape:
        raise ValueError(f"{name}: FLUX {flux2.shape}, IVAR {ivar.shape} and MASK {mask.shape} differ in shape")
    wave = np.asarray(hdul["WAVE"].data, dtype=float).ravel()
    if wave.size != flux2.shape[1]:
        raise ValueError(f"{name}: WAVE has {wave.size} values for spectra of {flux2.shape[1]} pixels")
    frame = frame or "vacuum"
    air = air_wavelengths(wave, frame, name)
    out = []
    for i in range(flux2.shape[0]):
        label = name if flux2.shape[0] == 1 else f"{name}[{i}]"
        f, v = _masked_var(flux2[i], ivar[i], mask[i], bits)
        out.append(Spectrum(name=label, wave=air, flux=f, var=v, frame=frame, path=path))
    return out


def write_manga_cube(path: str | Path, wave_vac, flux, ivar, mask, wcs_celestial: WCS) -> None:
    """A cube in the LOGCUBE layout above (for tests and examples); ``.gz`` paths are gzipped. Atomic."""
    cel = wcs_celestial.to_header()
    hdr = fits.Header()
    for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CUNIT1", "CUNIT2"):
        if key in cel:
            hdr[key] = cel[key]
    pc = wcs_celestial.pixel_scale_matrix  # the CD matrix, whichever form the WCS was given in
    for i in range(2):
        for j in range(2):
            hdr[f"CD{i + 1}_{j + 1}"] = float(pc[i, j])
    wave_vac = np.asarray(wave_vac, dtype=float)
    hdr["CTYPE3"], hdr["CUNIT3"] = "WAVE-LOG", "Angstrom"
    hdr["CRPIX3"], hdr["CRVAL3"] = 1.0, float(wave_vac[0])
    hdr["CD3_3"] = float(wave_vac[0] * np.log(wave_vac[1] / wave_vac[0]))
    flux_hdr = hdr.copy()
    flux_hdr["BUNIT"] = FLUX_UNIT_MANGA
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.asarray(flux, np.float32), flux_hdr, name="FLUX"),
            fits.ImageHDU(np.asarray(ivar, np.float32), hdr, name="IVAR"),
            fits.ImageHDU(np.asarray(mask, np.int32), hdr, name="MASK"),
            fits.ImageHDU(wave_vac, name="WAVE")]
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


__all__ = ["FLUX_UNIT_MANGA", "MASK_BITS", "MangaSource", "bad_pixels", "spectra_from_manga",
           "write_manga_cube"]
