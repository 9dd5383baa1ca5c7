"""Published PHANGS-MUSE stellar-population maps -> our maps' quantities, per Voronoi bin of our binning.

What the PHANGS-MUSE files hold (researched offline, see config/config.yaml for how sure we are):

* The public DR1.0 release on CADC (``phangs/RELEASES/PHANGS-MUSE/DR1.0/``) ships the mosaic cubes
  ``DATACUBES/<GAL>_PHANGS_DATACUBE_native.fits`` (DATA + STAT, 1.25 A planes 4750-9350 A) and DAP
  maps ``<GAL>_MAPS_native.fits``: one float image per extension on the cube's spaxel grid, the
  value of each DAP Voronoi bin painted on its spaxels, plus ``BIN_ID``. Its extensions are the
  stellar kinematics (``V_STARS``, ``SIGMA_STARS``, ``FORM_ERR_*``) and emission lines
  (``HA6562_FLUX`` ...) -- the ESO release note lists "emission line fluxes and kinematics as well
  as stellar kinematics" and nothing on stellar populations.
* The stellar-population maps of the PHANGS DAP (pPXF run twice, Emsellem+22 Sect. 4; Pessa+23)
  are in the team's MAPS files of the same layout, with extensions ``AGE_LW`` / ``AGE_MW``,
  ``Z_LW`` / ``Z_MW``, ``EBV_STARS`` and ``STELLAR_MASS_DENSITY`` (seen in code that reads the
  team's DR2.1 files); GalProTE's authors thank the team for "sharing the spectral data and maps".

So a MAPS file is read by extension name, whatever release it is from: light-weighted age
(``AGE_LW``), light-weighted metallicity (``Z_LW``) and the stellar attenuation (``AV_STARS`` in
mag, or ``EBV_STARS`` as E(B-V) converted with ``A_V = R_V E(B-V)``). A file with none of them
raises ``NoStellarPopulations`` (the compare step records that, rather than inventing a map).

Units come from each extension's BUNIT, never from the size of the values (a light-weighted age of
9.5 is as plausible in Gyr as in log10(yr)): linear yr / Myr / Gyr, or their logarithms written as
``log10(Gyr)``, ``log(yr)``, ``dex(yr)``...; [M/H] in dex (an empty BUNIT is taken as dex, the
only convention for [M/H]); E(B-V) / A_V in mag (empty = mag). An age extension without BUNIT
needs its unit from config (``galaxies.targets.NAME.maps_units``), else ValueError naming the file.
Converted values are range-checked (log age 6-10.5, [M/H] -3..1, A_V -1..10) to catch a wrong
declared unit.

R_V: E(B-V) -> A_V uses 3.1 (the O'Donnell 1994, R_V = 3.1 curve of our model and pPXF baseline).
pPXF's own ``reddening`` keyword is Calzetti (2000), for which A_V = 4.05 E(B-V): pass ``rv=4.05``
to compare A_V in that law's terms; the choice is written to the metrics.

Per bin: the published value of one of our bins is the mean over its spaxels of the published
map sampled at each spaxel's sky position (nearest published pixel, so values of the DAP's own
bins are never blended by interpolation), NaN where no spaxel has a finite value.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from astropy.io import fits

from .maps import Maps, as_wcs_header, quiet_wcs

log = logging.getLogger(__name__)

QUANTITY_SOURCES = {  # our quantity -> PHANGS DAP extension names, in order of preference
    "LOGAGE": ("AGE_LW",),
    "MH": ("Z_LW",),
    "AV": ("AV_STARS", "EBV_STARS"),
}
RV_DEFAULT = 3.1
RANGES = {"LOGAGE": (6.0, 10.5), "MH": (-3.0, 1.0), "AV": (-1.0, 10.0)}
_AGE_SCALE = {"yr": 0.0, "myr": 6.0, "gyr": 9.0}  # log10 of the unit in years
_LOG_AGE = re.compile(r"^(?:log10|log|dex)\s*\(\s*(yr|myr|gyr)\s*\)$|^(?:log10|log)\s*(yr|myr|gyr)$")


class NoStellarPopulations(ValueError):
    """The MAPS file is readable but carries no stellar-population extension."""


@dataclass(frozen=True)
class PublishedMaps:
    images: dict  # LOGAGE log10(yr), MH dex, AV mag: float [ny, nx] on the published grid, NaN = none
    wcs_header: str  # celestial WCS of the published grid
    extensions: dict  # LOGAGE -> the extension it came from (and its unit)
    path: str = "<memory>"
    meta: dict = field(default_factory=dict)

    @property
    def wcs(self):
        return quiet_wcs(fits.Header.fromstring(self.wcs_header, sep="\n"))


def _age_to_log_yr(values: np.ndarray, unit: str, where: str) -> np.ndarray:
    u = unit.strip().lower().replace(" ", "")
    if u in _AGE_SCALE:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log10(values) + _AGE_SCALE[u]
        bad = np.isfinite(values) & ~(values > 0)
        if bad.any():
            raise ValueError(f"{where}: {int(bad.sum())} ages <= 0 {unit} cannot be put on a log scale")
        return out
    m = _LOG_AGE.match(u)
    if m:
        return values + _AGE_SCALE[m.group(1) or m.group(2)]
    raise ValueError(f"{where}: age unit {unit!r} not understood (expected yr, Myr, Gyr or log10(...) of one)")


def convert(quantity: str, values, unit: str, extname: str, *, rv: float = RV_DEFAULT, where: str = "") -> np.ndarray:
    """Values of extension ``extname`` in ``unit`` -> our ``quantity`` (LOGAGE log10 yr, MH dex, AV mag)."""
    values = np.asarray(values, dtype=np.float64)
    unit = str(unit).strip()
    where = f"{where}[{extname}]"
    if quantity == "LOGAGE":
        if not unit:
            raise ValueError(f"{where}: no BUNIT on the age map; give its unit (e.g. Gyr, log10(yr)) in "
                             "galaxies.targets.NAME.maps_units")
        out = _age_to_log_yr(values, unit, where)
    elif quantity == "MH":
        if unit.lower() not in ("", "dex", "[m/h]"):
            raise ValueError(f"{where}: metallicity unit {unit!r} is not dex ([M/H])")
        out = values
    elif quantity == "AV":
        if unit.lower() not in ("", "mag"):
            raise ValueError(f"{where}: attenuation unit {unit!r} is not mag")
        out = values * rv if extname.upper().startswith("EBV") else values
    else:
        raise KeyError(quantity)
    lo, hi = RANGES[quantity]
    finite = out[np.isfinite(out)]
    if finite.size and (finite.min() < lo or finite.max() > hi):
        raise ValueError(f"{where}: {quantity} values {finite.min():.3g}..{finite.max():.3g} after conversion from "
                         f"{unit or 'no unit'} fall outside {lo:g}..{hi:g}: the declared unit is probably wrong")
    return out


def read_published_maps(path: str | Path, *, units: Mapping[str, str] | None = None,
                        rv: float = RV_DEFAULT) -> PublishedMaps:
    """Read the stellar-population extensions of a PHANGS DAP MAPS file (module docstring).

    ``units`` {EXTNAME: unit} overrides or supplies BUNITs. Raises ``NoStellarPopulations`` when
    none is present and ValueError (naming the file) for an unreadable file or unusable units.
    """
    name = str(path)
    units = {k.upper(): v for k, v in (units or {}).items()}
    try:
        hdul = fits.open(path, memmap=False)
        len(hdul)
    except Exception as exc:
        raise ValueError(f"{name}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    with hdul:
        present = {h.name.upper(): h for h in hdul[1:] if h.is_image and h.header.get("NAXIS") == 2}
        images, extensions, shape, wcs_header = {}, {}, None, None
        for quantity, candidates in QUANTITY_SOURCES.items():
            ext = next((c for c in candidates if c in present), None)
            if ext is None:
                continue
            hdu = present[ext]
            try:
                data = np.asarray(hdu.data, dtype=np.float64)
            except Exception as exc:
                raise ValueError(f"{name}[{ext}]: cannot read the image ({type(exc).__name__}: {exc})") from exc
            if shape is None:
                shape = data.shape
                wcs = quiet_wcs(hdu.header)
                if not wcs.has_celestial:
                    raise ValueError(f"{name}[{ext}]: no celestial (RA/Dec) WCS")
                wcs_header = wcs.celestial.to_header().tostring(sep="\n")
            elif data.shape != shape:
                raise ValueError(f"{name}[{ext}]: shape {data.shape} differs from the other maps {shape}")
            unit = units.get(ext, str(hdu.header.get("BUNIT", "")))
            data = np.where(np.isfinite(data), data, np.nan)
            images[quantity] = convert(quantity, data, unit, ext, rv=rv, where=name)
            extensions[quantity] = {"extension": ext, "unit": unit or "(none)"}
        if not images:
            wanted = sorted({c for cs in QUANTITY_SOURCES.values() for c in cs})
            found = [h.name for h in hdul[1:]]
            shown = ", ".join(found[:8]) + (f" ... ({len(found)} in all)" if len(found) > 8 else "")
            raise NoStellarPopulations(
                f"{name}: no stellar-population map (looked for {', '.join(wanted)}; found {shown or 'none'}). "
                "The public PHANGS-MUSE DR1.0 MAPS carry kinematics and emission lines only")
    for q, info in extensions.items():
        log.info("%s: %s from %s (%s)", name, q, info["extension"], info["unit"])
    return PublishedMaps(images=images, wcs_header=wcs_header, extensions=extensions, path=name,
                         meta={"rv": float(rv)})


def sample_on_grid(pub: PublishedMaps, wcs_header, shape) -> dict:
    """The published images sampled at the spaxel centres of another celestial grid (nearest pixel).

    Nearest-pixel sampling through the two WCSs (astropy only; ``reproject`` would interpolate,
    which blends the values of neighbouring DAP bins). Identical grids are passed through.
    """
    target = quiet_wcs(as_wcs_header(wcs_header))
    any_img = next(iter(pub.images.values()))
    same = any_img.shape == tuple(shape) and target.celestial.to_header_string() == pub.wcs.to_header_string()
    if same:
        return {q: img.copy() for q, img in pub.images.items()}
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = target.celestial.pixel_to_world(xx.ravel(), yy.ravel())
    px, py = pub.wcs.world_to_pixel(sky)
    finite = np.isfinite(px) & np.isfinite(py)  # NaN where the projection does not reach (far away)
    ix = np.where(finite, np.round(np.where(finite, px, -1)), -1).astype(np.int64)
    iy = np.where(finite, np.round(np.where(finite, py, -1)), -1).astype(np.int64)
    inside = (ix >= 0) & (iy >= 0) & (ix < any_img.shape[1]) & (iy < any_img.shape[0])
    out = {}
    for q, img in pub.images.items():
        v = np.full(ix.size, np.nan)
        v[inside] = img[iy[inside], ix[inside]]
        out[q] = v.reshape(shape)
    return out


def published_per_bin(pub: PublishedMaps, maps: Maps) -> dict:
    """{quantity: [n_bins]} mean of the published values over the spaxels of each of ``maps``' bins."""
    bin_id = np.asarray(maps.bin_id)
    n_bins = int(bin_id.max()) + 1 if bin_id.size else 0
    sampled = sample_on_grid(pub, maps.wcs_header, bin_id.shape)
    inside = bin_id >= 0
    out = {}
    for q, img in sampled.items():
        v = img[inside]
        ok = np.isfinite(v)
        ids = bin_id[inside][ok]
        total = np.bincount(ids, weights=v[ok], minlength=n_bins)
        count = np.bincount(ids, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[q] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    covered = {q: int(np.isfinite(v).sum()) for q, v in out.items()}
    log.info("%s: published values for %s of %d bins", pub.path, covered, n_bins)
    return out


def write_phangs_maps(path: str | Path, images: Mapping[str, tuple], wcs, *, bin_id=None, primary_cards=(),
                      extra: Mapping[str, tuple] | None = None) -> None:
    """A MAPS file in the PHANGS DAP layout: primary without data, one float32 image per extension
    ({EXTNAME: (data [ny, nx], BUNIT)}) with the celestial WCS, optionally BIN_ID. For tests and for
    re-packing maps obtained from the team into the layout ``read_published_maps`` reads."""
    from specfm.io import atomic_path

    header = as_wcs_header(wcs)
    primary = fits.PrimaryHDU()
    for key, value, comment in primary_cards:
        primary.header[key] = (value, comment)
    hdus = [primary]
    for ext, (data, bunit) in {**dict(images), **dict(extra or {})}.items():
        hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), header=header.copy(), name=ext)
        if bunit:
            hdu.header["BUNIT"] = bunit
        hdus.append(hdu)
    if bin_id is not None:
        hdus.append(fits.ImageHDU(np.asarray(bin_id, dtype=np.int32), header=header.copy(), name="BIN_ID"))
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


__all__ = ["NoStellarPopulations", "PublishedMaps", "QUANTITY_SOURCES", "RV_DEFAULT", "convert",
           "published_per_bin", "read_published_maps", "sample_on_grid", "write_phangs_maps"]
