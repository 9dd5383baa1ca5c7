"""Real DESI files: healpix coadds (B/R/Z arms), their Redrock files, the zcatalog and its cuts.

A coadd holds per arm X in (B, R, Z): X_WAVELENGTH [n], X_FLUX / X_IVAR / X_MASK [n_target, n], and a
FIBERMAP with (COADD_)FIBERSTATUS. Pixels with MASK != 0 get ivar 0 (the pipeline's convention);
targets with a non-zero fibre status are dropped and counted, never silently kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ARMS = ("B", "R", "Z")
REDROCK_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "DELTACHI2")


def read_coadd(path) -> dict:
    """{targetid [N], waves [3 x n], fluxes/ivars [3 x (N, n)], dropped_fiberstatus} from one coadd."""
    import fitsio

    path = Path(path)
    try:
        fx = fitsio.FITS(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable FITS file ({exc})") from exc
    with fx:
        names = {h.get_extname() for h in fx}
        need = ["FIBERMAP"] + [f"{a}_{k}" for a in ARMS for k in ("WAVELENGTH", "FLUX", "IVAR")]
        missing = [n for n in need if n not in names]
        if missing:
            raise ValueError(f"{path}: not a DESI coadd, missing HDU(s) {', '.join(missing)}")
        fm = fx["FIBERMAP"].read()
        status_col = next((c for c in ("COADD_FIBERSTATUS", "FIBERSTATUS") if c in fm.dtype.names), None)
        if status_col is None:
            raise ValueError(f"{path}: FIBERMAP has neither COADD_FIBERSTATUS nor FIBERSTATUS")
        keep = fm[status_col] == 0
        waves, fluxes, ivars = [], [], []
        for a in ARMS:
            w = np.asarray(fx[f"{a}_WAVELENGTH"].read(), float)
            f = np.atleast_2d(fx[f"{a}_FLUX"].read()).astype(float)
            iv = np.atleast_2d(fx[f"{a}_IVAR"].read()).astype(float)
            if f.shape != (len(fm), w.size) or iv.shape != f.shape:
                raise ValueError(f"{path}: {a}_FLUX/{a}_IVAR shape {f.shape} does not match "
                                 f"{len(fm)} targets x {w.size} pixels")
            if f"{a}_MASK" in names:
                iv = np.where(np.atleast_2d(fx[f"{a}_MASK"].read()) != 0, 0.0, iv)
            waves.append(w), fluxes.append(f[keep]), ivars.append(iv[keep])
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%s: dropped %d of %d targets with %s != 0", path, dropped, len(fm), status_col)
    return {"targetid": np.asarray(fm["TARGETID"][keep], np.int64), "waves": waves, "fluxes": fluxes,
            "ivars": ivars, "dropped_fiberstatus": dropped}


def read_redrock(path) -> dict:
    """{column: array} of the REDSHIFTS table of a Redrock file (the columns the catalogue keeps)."""
    import fitsio

    try:
        t = fitsio.read(str(path), ext="REDSHIFTS")
    except Exception as exc:
        raise ValueError(f"{path}: no readable REDSHIFTS table ({exc})") from exc
    missing = [c for c in REDROCK_COLUMNS if c not in t.dtype.names]
    if missing:
        raise ValueError(f"{path}: REDSHIFTS lacks column(s) {', '.join(missing)}")
    out = {c: np.asarray(t[c]) for c in REDROCK_COLUMNS}
    out["SPECTYPE"] = np.char.strip(out["SPECTYPE"].astype(str))
    return out


# ------------------------------------------------------------------ zcatalog selection cuts


def _need(table, cols, what, name):
    missing = [c for c in cols if c not in table]
    if missing:
        raise ValueError(f"{name}: the {what} cut needs column(s) {', '.join(missing)}, which the catalogue lacks")


def select(table: dict, cuts: dict, name: str = "catalogue") -> np.ndarray:
    """Population label per row ("BGS", "ELG" or "" = not selected) from the configured cuts.

    BGS (Hahn+2023 as SpecPT lists them): target bit set, ZWARN == 0, SPECTYPE == GALAXY,
    ZERR < zerr_frac (1 + Z), DELTACHI2 > deltachi2_min, Z in z_range.
    ELG (Raichoor+2023): target bit set, log10(FOII_SNR) > a + b log10(DELTACHI2), Z in z_range.
    A row that passes both is BGS (checked first). ZCAT_PRIMARY is honoured when present.
    """
    n = len(next(iter(table.values())))
    label = np.full(n, "", dtype="<U3")
    primary = np.asarray(table["ZCAT_PRIMARY"], bool) if "ZCAT_PRIMARY" in table else np.ones(n, bool)
    for pop in ("ELG", "BGS"):  # BGS last: it wins a tie
        c = cuts.get(pop)
        if not c:
            continue
        ok = primary.copy()
        if c.get("target_column"):
            _need(table, [c["target_column"]], pop, name)
            ok &= (np.asarray(table[c["target_column"]]).astype(np.int64) & int(c["target_mask"])) != 0
        _need(table, ["Z"], pop, name)
        z = np.asarray(table["Z"], float)
        ok &= (z >= c["z_range"][0]) & (z < c["z_range"][1])
        if pop == "BGS":
            _need(table, ["ZWARN", "SPECTYPE", "ZERR", "DELTACHI2"], pop, name)
            spectype = np.char.strip(np.asarray(table["SPECTYPE"]).astype(str))
            ok &= (np.asarray(table["ZWARN"]) == 0) & (spectype == c.get("spectype", "GALAXY"))
            ok &= np.asarray(table["ZERR"], float) < c["zerr_frac"] * (1 + z)
            ok &= np.asarray(table["DELTACHI2"], float) > c["deltachi2_min"]
        else:
            col = c.get("foii_snr_column", "FOII_SNR")
            _need(table, [col, "DELTACHI2"], pop, name)
            snr, dchi2 = np.asarray(table[col], float), np.asarray(table["DELTACHI2"], float)
            with np.errstate(divide="ignore", invalid="ignore"):
                ok &= (snr > 0) & (dchi2 > 0) & (np.log10(snr) > c["foii_a"] + c["foii_b"] * np.log10(dchi2))
        label[ok] = pop
    return label
