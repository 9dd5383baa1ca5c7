"""SkyMapper Southern Survey DR4 photometry through its TAP service (pyvo), with the thesis's cuts.

The cuts (Onken et al. 2024 recommendations, as applied in the thesis): class_star > 0.9 where
r < 19 mag and > 0.5 where r >= 19, flags < 4, nimaflags < 5, gaia_dr3_dist1 < 2 arcsec, and the
closest SkyMapper object when several point at one Gaia DR3 source. The flag and distance cuts are
also sent to the server (less to download); `apply_cuts` is the authority and logs what it drops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from specfm.stars import columns as C

from .gaia import to_frame
from .partition import source_id_range
from .tap import JobFailed, RetryPolicy, poll_until_done, with_retries

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.skymapper.nci.org.au/public/tap/"
BANDS = "uvgriz"
QUERY = """
    SELECT m.object_id, m.gaia_dr3_id1 AS source_id, m.gaia_dr3_dist1, m.class_star, m.flags, m.nimaflags,
           {bands}
    FROM dr4.master AS m
    WHERE m.gaia_dr3_id1 BETWEEN {lo} AND {hi}
      AND m.flags < {max_flags} AND m.nimaflags < {max_nimaflags} AND m.gaia_dr3_dist1 < {max_dist}"""


@dataclass(frozen=True)
class SkyMapperSettings:
    url: str = DEFAULT_URL
    mode: str = "async"
    max_flags: int = 4  # flags < 4
    max_nimaflags: int = 5  # nimaflags < 5
    max_dist: float = 2.0  # arcsec, gaia_dr3_dist1 <
    r_split: float = 19.0  # mag: class_star threshold changes here
    class_star_bright: float = 0.9  # class_star > this where r < r_split
    class_star_faint: float = 0.5  # class_star > this where r >= r_split (or r missing)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SkyMapperSettings":
        cfg = dict(cfg or {})
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def partition_query(lo: int, hi: int, s: SkyMapperSettings) -> str:
    bands = ", ".join(f"m.{b}_psf AS sm_{b}" for b in BANDS)
    return QUERY.format(bands=bands, lo=lo, hi=hi, max_flags=s.max_flags, max_nimaflags=s.max_nimaflags,
                        max_dist=s.max_dist)


def run_query(service, query: str, *, what: str, settings: SkyMapperSettings, policy: RetryPolicy):
    """One ADQL query through pyvo as an astropy Table, retried per `policy`."""
    from pyvo.dal import DALQueryError

    def attempt():
        if settings.mode == "sync":
            return service.run_sync(query).to_table()
        job = service.submit_job(query)
        try:
            job.run()
            try:
                poll_until_done(lambda: job.phase, abort=job.abort, policy=policy, job=job.job_id)
            except JobFailed as exc:
                try:
                    job.raise_if_error()
                except DALQueryError as err:
                    raise JobFailed(f"{exc}: {err}") from None
                raise
            return job.fetch_result().to_table()
        finally:
            try:
                job.delete()
            except Exception as exc:  # noqa: BLE001 - a job left on the server expires by itself
                log.debug("could not delete job %s: %s", job.url, exc)

    return with_retries(attempt, what=what, query=query, policy=policy)


def apply_cuts(frame: pd.DataFrame, s: SkyMapperSettings, *, what: str = "SkyMapper") -> pd.DataFrame:
    """The thesis's SkyMapper selection and one object per Gaia source (the closest); logs counts."""
    n0 = len(frame)
    r = frame["sm_r"].to_numpy(float)
    cs = frame["class_star"].to_numpy(float)
    bright = np.isfinite(r) & (r < s.r_split)
    star = np.where(bright, cs > s.class_star_bright, cs > s.class_star_faint)
    keep = (star & (frame["flags"].to_numpy(float) < s.max_flags)
            & (frame["nimaflags"].to_numpy(float) < s.max_nimaflags)
            & (frame["gaia_dr3_dist1"].to_numpy(float) < s.max_dist)
            & frame["source_id"].notna().to_numpy())
    out = frame[keep].sort_values(["source_id", "gaia_dr3_dist1"], kind="stable")
    n1 = len(out)
    out = out.drop_duplicates("source_id", keep="first")
    log.info("%s: %d rows in, %d pass the cuts, %d after keeping the closest per source_id",
             what, n0, n1, len(out))
    out = out.astype({"source_id": np.int64})
    return out[["source_id", *C.SURVEY_BANDS["skymapper"]]].reset_index(drop=True)


def fetch_partition(hpx: int, level: int, *, settings: SkyMapperSettings, policy: RetryPolicy,
                    service=None) -> pd.DataFrame:
    """SkyMapper DR4 bands (sm_u..sm_z) of the Gaia sources in one partition, after the cuts."""
    import pyvo

    service = service or pyvo.dal.TAPService(settings.url)
    lo, hi = source_id_range(hpx, level)
    what = f"partition hpx{hpx} (level {level}) SkyMapper DR4"
    table = run_query(service, partition_query(lo, hi, settings), what=what, settings=settings, policy=policy)
    return apply_cuts(to_frame(table), settings, what=what)
