"""SFD (Schlegel, Finkbeiner & Davis 1998) E(B-V) for archive samples, through `dustmaps`.

`dustmaps` both downloads the two polar maps (from the Harvard Dataverse DOI it knows) and
interpolates them, so neither is written here. The download happens in one fetch rule
(`stars_dust_sfd`); its sha256s are recorded trust-on-first-use in the checksum lock like any
other source without a pinned checksum, and every later run verifies them. The embedded library
uses the Burstein-Heiles map instead (it ships with dustmaps, so it works offline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("specfm.stars")

SFD_FILES = ("SFD_dust_4096_ngp.fits", "SFD_dust_4096_sgp.fits")


def fetch_sfd(map_dir, lock_path) -> list[Path]:
    """Download the SFD maps into `map_dir` (dustmaps' own fetch) and record/verify their sha256."""
    from dustmaps import sfd
    from dustmaps.config import config as dustmaps_config

    from specfm.fetch.lock import ChecksumLock
    from specfm.io import sha256_file

    map_dir = Path(map_dir)
    if map_dir.name != "sfd":
        raise ValueError(f"{map_dir}: dustmaps keeps the SFD maps in a directory named 'sfd'")
    dustmaps_config["data_dir"] = str(map_dir.parent.resolve())
    sfd.fetch()
    lock = ChecksumLock(lock_path)
    paths = [map_dir / name for name in SFD_FILES]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: dustmaps.sfd.fetch() did not produce it")
        lock.record(f"dustmaps/sfd/{path.name}", sha256=sha256_file(path), size=path.stat().st_size,
                    url="doi:10.7910/DVN/EWCNL5 (dustmaps.sfd.fetch)")
    return paths


class SFDFiller:
    """Fills missing `ebv` of raw rows with positions from the SFD map (loaded once per job)."""

    def __init__(self, map_dir):
        from dustmaps.sfd import SFDQuery

        missing = [n for n in SFD_FILES if not (Path(map_dir) / n).exists()]
        if missing:
            raise FileNotFoundError(f"{map_dir}: SFD map files {missing} are missing (rule stars_dust_sfd)")
        self.query = SFDQuery(map_dir=str(map_dir))
        self.filled = 0

    def __call__(self, raw: pd.DataFrame) -> pd.DataFrame:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        ebv = pd.to_numeric(raw["ebv"], errors="coerce")
        need = ebv.isna() & np.isfinite(raw["ra"]) & np.isfinite(raw["dec"])
        if need.any():
            coords = SkyCoord(raw.loc[need, "ra"].to_numpy() * u.deg,
                              raw.loc[need, "dec"].to_numpy() * u.deg, frame="icrs")
            raw = raw.copy()
            raw.loc[need, "ebv"] = self.query(coords).astype(np.float64)
            self.filled += int(need.sum())
        return raw
