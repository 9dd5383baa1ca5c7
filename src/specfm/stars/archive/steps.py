"""Entry points of the archive fetch rules: one HEALPix partition, one target cone, the label table.

Each writes its product atomically and logs row counts; any failure leaves no output file (so
Snakemake reruns the job) and ends with one line naming the partition and what failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from specfm.fetch.sources import checked_source_file
from specfm.io import atomic_path

from . import gaia as G
from . import labels as L
from . import skymapper as S
from .merge import merge_partition, write_partition
from .partition import source_id_range
from .tap import RetryPolicy
from .xp_bulk import BULK_URL, ensure_bulk_file, files_for_partition, read_md5sum, xp_for_partition

log = logging.getLogger(__name__)


def _settings(cfg: dict):
    cfg = cfg or {}
    return (G.GaiaSettings.from_config(cfg.get("gaia")), S.SkyMapperSettings.from_config(cfg.get("skymapper")),
            RetryPolicy.from_config(cfg.get("retry")))


def labels_in_range(path: str | Path | None, lo: int, hi: int) -> pd.DataFrame | None:
    """Rows of the label table with lo <= source_id <= hi (a filtered read, not the whole table)."""
    if not path:
        return None
    table = ds.dataset(str(path), format="parquet").to_table(
        filter=(ds.field("source_id") >= lo) & (ds.field("source_id") <= hi))
    return table.to_pandas()


def fetch_partition(hpx: int, level: int, out: str | Path, *, cfg: dict, xp_index: str | Path | None = None,
                    xp_dir: str | Path | None = None, labels: str | Path | None = None, cuts: bool = True,
                    gaia_client=None, skymapper_service=None) -> int:
    """Gaia + crossmatches + SkyMapper + XP (bulk files) + labels for one partition -> `out`."""
    gaia_s, sm_s, policy = _settings(cfg)
    lo, hi = source_id_range(hpx, level)
    what = f"partition hpx{hpx} (level {level}, source_id {lo}..{hi})"
    client = gaia_client or G.gaia_client(gaia_s)
    tables = G.fetch_gaia_partition(client, hpx, level, settings=gaia_s, policy=policy)
    skymapper = None
    if (cfg or {}).get("skymapper", {}).get("enabled", True):
        skymapper = S.fetch_partition(hpx, level, settings=sm_s, policy=policy, service=skymapper_service)
    xp = None
    if xp_index:
        md5 = read_md5sum(xp_index)
        names = files_for_partition(md5, hpx, level)
        base = (cfg or {}).get("xp_bulk", {}).get("url", BULK_URL)
        paths = [ensure_bulk_file(n, md5[n], xp_dir, base_url=base) for n in names]
        xp = xp_for_partition(paths, lo, hi)
        log.info("%s: %d XP spectra from %d bulk files", what, len(xp), len(paths))
    frame = merge_partition(tables.pop("gaia"), crossmatch=tables, skymapper=skymapper, xp=xp,
                            labels=labels_in_range(labels, lo, hi), healpix_level=level, what=what, cuts=cuts)
    return write_partition(frame, out)


def fetch_cone(ra: float, dec: float, radius: float, out: str | Path, *, level: int, cfg: dict,
               labels: str | Path | None = None, cuts: bool = False, gaia_client=None) -> int:
    """A target list (cluster, dwarf galaxy): Gaia cone + crossmatches + DataLink XP -> `out`.
    No quality cuts by default (the thesis made none on its targets). SkyMapper is left out: its
    TAP service is queried by source_id range, which a cone does not have."""
    gaia_s, _, policy = _settings(cfg)
    what = f"cone ra={ra} dec={dec} r={radius} deg"
    client = gaia_client or G.gaia_client(gaia_s)
    tables = G.fetch_cone(client, ra, dec, radius, settings=gaia_s, policy=policy)
    ids = tables["gaia"]["source_id"].to_numpy()
    xp = G.fetch_xp_datalink(client, ids, policy=policy, what=what) if len(ids) else None
    lab = None
    if labels and len(ids):
        lab = labels_in_range(labels, int(ids.min()), int(ids.max()))
        lab = lab[lab["source_id"].isin(ids)]
    frame = merge_partition(tables.pop("gaia"), crossmatch=tables, xp=xp, labels=lab, healpix_level=level,
                            what=what, cuts=cuts)
    return write_partition(frame, out)


def build_labels(out: str | Path, *, apogee: str | None = None, astronn: str | None = None,
                 leung: str | None = None, galah: str | None = None, rave: str | None = None,
                 priority=("apogee", "galah", "rave"), pins: dict | None = None) -> int:
    """All configured label catalogues -> one Parquet table (one row per source_id, sorted).

    ``pins``: {catalogue: its source's pin}; each catalogue file is checked against its pin before
    use (`specfm.fetch.sources.checked_source_file`: a file placed by hand skips the fetch rule)."""
    files = {"apogee": apogee, "astronn": astronn, "leung": leung, "galah": galah, "rave": rave}
    for name, path in files.items():
        if path:
            checked_source_file(path, (pins or {}).get(name))
    tables = {}
    if apogee:
        tables["apogee"] = L.apogee_labels(apogee, astronn=astronn, leung=leung)
    if galah:
        tables["galah"] = L.galah_labels(galah)
    if rave:
        tables["rave"] = L.rave_labels(rave)
    ordered = {name: tables[name] for name in priority if name in tables}
    frame = L.combine(ordered).sort_values("source_id", kind="stable").reset_index(drop=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    log.info("wrote %s: %d labelled stars", out, len(frame))
    return len(frame)
