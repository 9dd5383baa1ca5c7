"""Per-bin GalProTE (or pPXF) results -> FITS maps on the cube's spaxel grid, and back.

Layout of ``results/{galaxy}_maps.fits``:

    0  PRIMARY     no data; provenance from ``meta`` (one card per entry, HIERARCH for long or nested
                   keys, nested dicts flattened with spaces: {"inputs": {"cube": sha}} -> INPUTS CUBE)
    1.. images     one per quantity, in the order given (LOGAGE 'log10(yr)', MH 'dex', AV 'mag',
                   RESID_MEAN, RESID_STD, SNR, ...): float32 [ny, nx], NaN where BIN_ID == -1,
                   the cube's celestial WCS and BUNIT (omitted when dimensionless)
    BIN_ID         int32 [ny, nx], -1 = spaxel not used; same WCS
    GRIDS          (optional) binary table, one row per bin: BIN_ID (J), WEIGHTS (n_Z*n_age E,
                   TDIM = '(n_age,n_Z)', i.e. numpy [n_Z, n_age] per row)
    GRID_AXES      (with GRIDS) one-row table: LOGAGE [n_age] log10(yr), MH [n_Z] dex

No DATE or CHECKSUM cards (astropy's CHECKSUM comment carries a timestamp): the same inputs give the
same bytes. Written atomically.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from specfm.io import atomic_path

FORMAT = "specfm.galaxies.maps/1"
UNITS = {"LOGAGE": "log10(yr)", "MH": "dex", "AV": "mag", "RESID_MEAN": "", "RESID_STD": "", "SNR": ""}
_STANDARD_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")
_EXTNAME = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "EXTNAME", "ORIGIN", "FORMAT"}


def as_wcs_header(wcs_header) -> fits.Header:
    """A celestial WCS header from a string (``Header.tostring(sep='\\n')`` or 80-char cards), Header or WCS."""
    if isinstance(wcs_header, WCS):
        return wcs_header.celestial.to_header()
    if isinstance(wcs_header, fits.Header):
        return wcs_header.copy()
    text = str(wcs_header)
    return fits.Header.fromstring(text, sep="\n" if "\n" in text else "")


def quiet_wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def meta_cards(meta: Mapping | None) -> list[tuple[str, object]]:
    """Flatten ``meta`` into (keyword, value) pairs; lists/tuples become JSON, None is skipped."""
    out: list[tuple[str, object]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, Mapping):
            for k in value:
                walk(f"{prefix} {k}".strip(), value[k])
            return
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            value = json.dumps(list(value))
        elif isinstance(value, (np.integer, np.floating, np.bool_)):
            value = value.item()
        elif isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"meta[{prefix!r}]: cannot store a {type(value).__name__} in a FITS header")
        key = prefix.upper().replace(".", "_")
        out.append((key if _STANDARD_KEY.match(key) else f"HIERARCH {key}", value))

    walk("", dict(meta or {}))
    return out


def primary_hdu(meta: Mapping | None, *, fmt: str = FORMAT) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    hdu.header["ORIGIN"] = ("specfm", "written by the specfm workflow")
    hdu.header["FORMAT"] = (fmt, "file layout version")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        for key, value in meta_cards(meta):
            hdu.header[key] = value
    return hdu


def image_hdu(name: str, data: np.ndarray, wcs_header, bunit: str = "", comment: str = "") -> fits.ImageHDU:
    hdr = as_wcs_header(wcs_header)
    hdu = fits.ImageHDU(np.asarray(data), header=hdr, name=name)
    if bunit:
        hdu.header["BUNIT"] = bunit
    if comment:
        hdu.header["COMMENT"] = comment
    return hdu


def header_meta(header: fits.Header) -> dict:
    """The meta cards of a primary header (flattened keys, as written)."""
    return {k: v for k, v in header.items() if k not in _STRUCTURAL and k not in ("COMMENT", "HISTORY", "")}


def write_maps(
    path: str | Path,
    *,
    bin_id: np.ndarray,
    wcs_header,
    quantities: Mapping[str, tuple],
    grids: np.ndarray | None = None,
    grid_axes: tuple | None = None,
    meta: Mapping | None = None,
) -> None:
    """Write per-bin ``quantities`` ({NAME: (values [n_bins], bunit)}) as maps (module docstring).

    ``bin_id`` [ny, nx] (-1 = not used, else 0..n_bins-1); ``wcs_header`` the cube's celestial WCS
    (string, Header or WCS); ``grids`` [n_bins, n_Z, n_age] with ``grid_axes`` = (log_age [n_age],
    mh [n_Z]); ``meta`` provenance for the primary header.
    """
    bin_id = np.asarray(bin_id)
    if bin_id.ndim != 2 or not np.issubdtype(bin_id.dtype, np.integer):
        raise ValueError(f"bin_id must be a 2-D integer array, got {bin_id.dtype} {bin_id.shape}")
    n_bins = int(bin_id.max()) + 1 if bin_id.size else 0
    inside = bin_id >= 0
    hdus = [primary_hdu(meta)]
    for name, spec in quantities.items():
        values, bunit = spec
        values = np.asarray(values, dtype=np.float64)
        key = name.upper()
        if key in ("BIN_ID", "GRIDS", "GRID_AXES") or not _EXTNAME.match(key):
            raise ValueError(f"quantity name {name!r} is reserved or not a valid EXTNAME (A-Z, 0-9, _; <= 32 chars)")
        if values.ndim != 1 or values.size < n_bins:
            raise ValueError(f"quantity {name}: {values.shape} values for {n_bins} bins")
        image = np.full(bin_id.shape, np.nan, np.float32)
        image[inside] = values[bin_id[inside]]
        hdus.append(image_hdu(key, image, wcs_header, bunit))
    hdus.append(image_hdu("BIN_ID", bin_id.astype(np.int32), wcs_header, "",
                          "Voronoi bin of each spaxel; -1 = not used"))
    if grids is not None:
        grids = np.asarray(grids, dtype=np.float32)
        if grid_axes is None:
            raise ValueError("grids given without grid_axes (log_age, mh)")
        log_age, mh = (np.asarray(a, dtype=np.float64) for a in grid_axes)
        if grids.shape != (grids.shape[0], mh.size, log_age.size) or grids.shape[0] < n_bins:
            raise ValueError(f"grids {grids.shape} do not match [n_bins={n_bins}, n_Z={mh.size}, n_age={log_age.size}]")
        n_cell = mh.size * log_age.size
        table = fits.BinTableHDU.from_columns(
            [
                fits.Column("BIN_ID", "J", array=np.arange(grids.shape[0], dtype=np.int32)),
                fits.Column("WEIGHTS", f"{n_cell}E", dim=f"({log_age.size},{mh.size})",
                            array=grids.reshape(grids.shape[0], n_cell)),
            ],
            name="GRIDS",
        )
        table.header["N_Z"] = (mh.size, "rows of each weight grid ([M/H])")
        table.header["N_AGE"] = (log_age.size, "columns of each weight grid (log age)")
        axes = fits.BinTableHDU.from_columns(
            [
                fits.Column("LOGAGE", f"{log_age.size}D", unit="log10(yr)", array=log_age[None]),
                fits.Column("MH", f"{mh.size}D", unit="dex", array=mh[None]),
            ],
            name="GRID_AXES",
        )
        hdus += [table, axes]
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


@dataclass(frozen=True)
class Maps:
    images: dict  # NAME -> float32 [ny, nx] (NaN outside bins)
    units: dict  # NAME -> BUNIT ('' when dimensionless)
    bin_id: np.ndarray  # [ny, nx] int32, -1 = not used
    wcs_header: str
    grids: np.ndarray | None = None  # [n_bins, n_Z, n_age]
    log_age: np.ndarray | None = None
    mh: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def wcs(self) -> WCS:
        return quiet_wcs(fits.Header.fromstring(self.wcs_header, sep="\n"))


def read_maps(path: str | Path) -> Maps:
    try:
        hdul = fits.open(path, memmap=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    with hdul:
        if hdul[0].header.get("FORMAT") != FORMAT:
            raise ValueError(f"{path}: not a maps file of format {FORMAT} (found {hdul[0].header.get('FORMAT')!r})")
        names = [h.name for h in hdul]
        if "BIN_ID" not in names:
            raise ValueError(f"{path}: no BIN_ID extension")
        images, units = {}, {}
        for hdu in hdul[1:]:
            if isinstance(hdu, fits.ImageHDU) and hdu.name != "BIN_ID":
                images[hdu.name] = np.asarray(hdu.data)
                units[hdu.name] = str(hdu.header.get("BUNIT", ""))
        bin_hdu = hdul["BIN_ID"]
        wcs = quiet_wcs(bin_hdu.header).celestial
        grids = log_age = mh = None
        if "GRIDS" in names:
            g = hdul["GRIDS"]
            grids = np.asarray(g.data["WEIGHTS"], dtype=np.float32)
            grids = grids.reshape(grids.shape[0], int(g.header["N_Z"]), int(g.header["N_AGE"]))
            log_age = np.asarray(hdul["GRID_AXES"].data["LOGAGE"][0], dtype=float)
            mh = np.asarray(hdul["GRID_AXES"].data["MH"][0], dtype=float)
        return Maps(images=images, units=units, bin_id=np.asarray(bin_hdu.data, dtype=np.int32),
                    wcs_header=wcs.to_header().tostring(sep="\n"), grids=grids, log_age=log_age, mh=mh,
                    meta=header_meta(hdul[0].header))


__all__ = ["Maps", "UNITS", "image_hdu", "meta_cards", "primary_hdu", "read_maps", "write_maps"]
