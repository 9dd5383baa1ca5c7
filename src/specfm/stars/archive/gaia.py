"""Gaia DR3 through the archive's TAP service (astroquery.gaia): gaia_source per HEALPix partition,
the ``*_best_neighbour`` crossmatches, a cone for target lists, and XP coefficients via DataLink.

The archive URL is configurable (`stars.archive.gaia`) so the same code talks to the ESA archive, a
mirror, or the local test server. Login is optional and never read from config: the environment
(``SPECFM_GAIA_USER`` / ``SPECFM_GAIA_PASSWORD``) or ``~/.netrc`` (machine = archive host).
"""

from __future__ import annotations

import http.client
import logging
import netrc
import os
import re
import tempfile
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import numpy as np
import pandas as pd
from astropy.table import Table

from specfm.stars import columns as C

from .partition import source_id_range
from .tap import JobFailed, RetryPolicy, poll_until_done, with_retries

log = logging.getLogger(__name__)

DEFAULT_URL = "https://gea.esac.esa.int/"
ENV_USER, ENV_PASSWORD = "SPECFM_GAIA_USER", "SPECFM_GAIA_PASSWORD"
SYNC_ROW_CAP = 2000  # astroquery's TapPlus.launch_job adds TOP 2000 to every sync query
FLAGS = ["has_xp_continuous", "in_qso_candidates", "in_galaxy_candidates"]

# gaiadr3.gaia_source: the contract's identity/astrometry/photometry plus the thesis's selection flags.
GAIA_COLUMNS = ["source_id", "ra", "dec", *C.GAIA_ASTROMETRY, *C.GAIA_PHOTOMETRY, *FLAGS]
GAIA_SELECT = ", ".join(f"g.{c}" for c in GAIA_COLUMNS)

# Crossmatches through the archive's precomputed best neighbours (Gaia DR3 documentation, chapter
# 'Cross-match with external catalogues'); each returns source_id plus the contract's band names.
# 2MASS: the PSC/XSC merged best neighbour, joined back to the PSC; a match that is (also) in the
# extended source catalogue is dropped, the thesis's only 2MASS cut.
CROSSMATCH_QUERIES = {
    "tmass": """
        SELECT xm.source_id, t.j_m AS tmass_j, t.h_m AS tmass_h, t.ks_m AS tmass_ks
        FROM gaiadr3.tmass_psc_xsc_best_neighbour AS xm
        JOIN gaiadr3.tmass_psc_xsc_join AS xj ON xm.clean_tmass_psc_xsc_oid = xj.clean_tmass_psc_xsc_oid
        JOIN gaiadr1.tmass_original_valid AS t ON xj.original_psc_source_id = t.designation
        WHERE xm.source_id BETWEEN {lo} AND {hi}
          AND xj.original_xsc_source_id IS NULL AND t.ext_key IS NULL""",
    "catwise": """
        SELECT xm.source_id, w.w1mpro AS w1, w.w2mpro AS w2
        FROM gaiadr3.allwise_best_neighbour AS xm
        JOIN gaiadr1.allwise_original_valid AS w ON xm.allwise_oid = w.allwise_oid
        WHERE xm.source_id BETWEEN {lo} AND {hi}""",
    "ps1": """
        SELECT xm.source_id, p.g_mean_psf_mag AS ps1_g, p.r_mean_psf_mag AS ps1_r,
               p.i_mean_psf_mag AS ps1_i, p.z_mean_psf_mag AS ps1_z, p.y_mean_psf_mag AS ps1_y,
               p.obj_info_flag AS ps1_obj_info_flag
        FROM gaiadr3.panstarrs1_best_neighbour AS xm
        JOIN gaiadr2.panstarrs1_original_valid AS p ON xm.original_ext_source_id = p.obj_id
        WHERE xm.source_id BETWEEN {lo} AND {hi}""",
    "sdss": """
        SELECT xm.source_id, s.u AS sdss_u, s.g AS sdss_g, s.r AS sdss_r, s.i AS sdss_i, s.z AS sdss_z,
               s.type AS sdss_type, s.flags AS sdss_flags
        FROM gaiadr3.sdssdr13_best_neighbour AS xm
        JOIN external.sdssdr13_photoprimary AS s ON xm.original_ext_source_id = s.objid
        WHERE xm.source_id BETWEEN {lo} AND {hi}""",
}


@dataclass(frozen=True)
class GaiaSettings:
    """Where the archive is and how to talk to it (`stars.archive.gaia` in config)."""

    url: str = DEFAULT_URL
    data_url: str | None = None  # DataLink server; default: same host as `url`
    mode: str = "async"  # async (UWS job, survives long queries) or sync
    socket_timeout: float = 600.0  # one HTTP exchange, seconds
    require_xp: bool = True  # server-side has_xp_continuous cut (the pretraining set)
    crossmatches: tuple = ("tmass", "catwise", "ps1", "sdss")

    @classmethod
    def from_config(cls, cfg: dict | None) -> "GaiaSettings":
        cfg = dict(cfg or {})
        if "crossmatches" in cfg:
            cfg["crossmatches"] = tuple(cfg["crossmatches"])
        known = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        if known.get("mode", "async") not in ("async", "sync"):
            raise ValueError(f"stars.archive.gaia.mode must be 'async' or 'sync', got {known['mode']!r}")
        return cls(**known)


# ----------------------------------------------------------------------------- client


class _TimeoutConnections:
    """astroquery's connection factory without its missing socket time-out (a dead archive socket
    would otherwise hang the job forever, past any job-level time-out)."""

    def __init__(self, host: str, port: int, sslport: int, timeout: float):
        self.host, self.port, self.sslport, self.timeout = host, port, sslport, timeout

    def get_connection(self, *, ishttps=False, cookie=None, verbose=False):
        if ishttps or cookie is not None:
            return self.get_connection_secure(verbose)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get_connection_secure(self, verbose=False):
        return http.client.HTTPSConnection(self.host, self.sslport, timeout=self.timeout)


def _tap_conn(url: str, server_context: str, timeout: float):
    from astroquery.utils.tap.conn.tapconn import TapConn

    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    return TapConn(ishttps=https, host=parts.hostname, server_context=server_context, tap_context="tap",
                   upload_context="Upload", table_edit_context="TableTool", data_context="data",
                   datalink_context="datalink", port=port, sslport=port if https else 443,
                   connhandler=_TimeoutConnections(parts.hostname, port, port if https else 443, timeout))


def credentials(url: str, environ=os.environ, netrc_path: str | None = None) -> tuple[str, str] | None:
    """(user, password) for the archive from the environment or ~/.netrc, or None (anonymous).
    Never from config: configs are committed and shared."""
    user, password = environ.get(ENV_USER), environ.get(ENV_PASSWORD)
    if user and password:
        return user, password
    host = urlsplit(url).hostname
    try:
        auth = netrc.netrc(netrc_path).authenticators(host)
    except FileNotFoundError:
        return None
    except netrc.NetrcParseError as exc:  # exc.msg quotes the offending token: it may be a password
        where = exc.filename or netrc_path or "~/.netrc"
        what = re.sub(r"'[^']*'", "(token not shown)", exc.msg or "malformed")
        raise ValueError(f"{where}: cannot parse netrc near line {exc.lineno}: {what}") from None
    return (auth[0], auth[2]) if auth and auth[0] and auth[2] else None


def gaia_client(settings: GaiaSettings, *, login: bool = True):
    """A GaiaClass pointed at `settings.url` (and its DataLink server), logged in if credentials exist."""
    from astroquery.gaia import GaiaClass
    from astroquery.utils.tap.core import TapPlus

    data_url = settings.data_url or settings.url
    datalink = TapPlus(url=data_url, connhandler=_tap_conn(data_url, "data-server", settings.socket_timeout),
                       use_names_over_ids=True)
    gaia = GaiaClass(tap_plus_conn_handler=_tap_conn(settings.url, "tap-server", settings.socket_timeout),
                     datalink_handler=datalink, gaia_tap_server=settings.url, gaia_data_server=data_url,
                     show_server_messages=False)
    auth = credentials(settings.url) if login else None
    if auth:
        log.info("logging in to %s as %s", settings.url, auth[0])
        gaia.login(user=auth[0], password=auth[1])
    return gaia


# ----------------------------------------------------------------------------- queries


def run_query(gaia, query: str, *, what: str, settings: GaiaSettings, policy: RetryPolicy) -> Table:
    """One ADQL query as an astropy Table, retried per `policy`; `what` names the partition."""

    def attempt() -> Table:
        if settings.mode == "sync":
            table = _as_table(gaia.launch_job(query, output_format="votable").get_results())
            if len(table) >= SYNC_ROW_CAP:  # not transient, but retrying costs only the backoff
                raise ValueError(f"sync query returned {len(table)} rows: astroquery caps sync queries at "
                                 f"TOP {SYNC_ROW_CAP}, so the result may be cut; set stars.archive.gaia.mode: async")
            return table
        job = gaia.launch_job_async(query, output_format="votable", background=True)
        conn = job.connHandler
        try:
            poll_until_done(lambda: job.get_phase(update=True),
                            abort=lambda: _abort(conn, job.jobid), policy=policy, job=job.jobid)
        except JobFailed as exc:
            raise JobFailed(f"{exc}{_error_summary(conn, job.jobid)}") from None
        return _as_table(job.get_results())

    return with_retries(attempt, what=what, query=query, policy=policy)


def _as_table(result) -> Table:
    if result is None:
        raise JobFailed("the archive returned no result table")
    return result if isinstance(result, Table) else result.to_table()


def _abort(conn, jobid: str) -> None:
    conn.execute_tappost(subcontext=f"async/{jobid}/phase", data=urlencode({"PHASE": "ABORT"})).read()


def _error_summary(conn, jobid: str) -> str:
    """': <message>' from the UWS job document, or '' if the archive gives none."""
    try:
        text = conn.execute_tapget(f"async/{jobid}").read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the summary is a courtesy; the phase already says it failed
        return ""
    found = re.search(r"<(?:\w+:)?message>(.*?)</(?:\w+:)?message>", text, re.S)
    return f": {' '.join(found.group(1).split())}" if found else ""


def gaia_source_query(lo: int, hi: int, *, require_xp: bool = True) -> str:
    xp = " AND g.has_xp_continuous = 'True'" if require_xp else ""
    return f"SELECT {GAIA_SELECT} FROM gaiadr3.gaia_source AS g WHERE g.source_id BETWEEN {lo} AND {hi}{xp}"


def cone_query(ra: float, dec: float, radius_deg: float, *, require_xp: bool = True) -> str:
    xp = " AND g.has_xp_continuous = 'True'" if require_xp else ""
    return (f"SELECT {GAIA_SELECT} FROM gaiadr3.gaia_source AS g WHERE 1 = CONTAINS("
            f"POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS', {float(ra)!r}, {float(dec)!r}, {float(radius_deg)!r})){xp}")


def to_frame(table: Table) -> pd.DataFrame:
    """Astropy table -> DataFrame with masked (null) entries as NaN, never a fill value like 0."""
    out = {}
    for name in table.colnames:
        col = table[name]
        mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(len(col), bool)
        data = np.asarray(col.filled(0) if hasattr(col, "filled") else col)
        if name == "source_id":
            if mask.any():
                raise ValueError("archive result has null source_id values")
            out[name] = data.astype(np.int64)
        elif data.dtype.kind == "b":
            out[name] = np.where(mask, np.nan, data.astype(float)) if mask.any() else data
        elif data.dtype.kind in "iuf":
            values = data.astype(float)
            values[mask] = np.nan
            out[name] = values
        else:
            out[name] = pd.Series(data.astype(str), dtype=object).where(~mask, None)
    return pd.DataFrame(out)


def fetch_gaia_partition(gaia, hpx: int, level: int, *, settings: GaiaSettings,
                         policy: RetryPolicy) -> dict[str, pd.DataFrame]:
    """gaia_source and each configured crossmatch for one partition, as DataFrames keyed by name."""
    lo, hi = source_id_range(hpx, level)
    what = f"partition hpx{hpx} (level {level})"
    query = gaia_source_query(lo, hi, require_xp=settings.require_xp)
    tables = {"gaia": to_frame(run_query(gaia, query, what=f"{what} gaia_source", settings=settings,
                                         policy=policy))}
    log.info("%s: gaia_source rows %d", what, len(tables["gaia"]))
    for name in settings.crossmatches:
        if name not in CROSSMATCH_QUERIES:
            raise ValueError(f"unknown crossmatch {name!r}; known: {', '.join(CROSSMATCH_QUERIES)}")
        query = CROSSMATCH_QUERIES[name].format(lo=lo, hi=hi)
        tables[name] = to_frame(run_query(gaia, query, what=f"{what} {name} crossmatch", settings=settings,
                                          policy=policy))
        log.info("%s: %s crossmatch rows %d", what, name, len(tables[name]))
    return tables


def fetch_cone(gaia, ra: float, dec: float, radius_deg: float, *, settings: GaiaSettings,
               policy: RetryPolicy) -> dict[str, pd.DataFrame]:
    """gaia_source in a cone plus the crossmatches of exactly those sources (by source_id list)."""
    what = f"cone ({ra}, {dec}, r={radius_deg} deg)"
    query = cone_query(ra, dec, radius_deg, require_xp=settings.require_xp)
    gaia_rows = to_frame(run_query(gaia, query, what=f"{what} gaia_source", settings=settings, policy=policy))
    tables = {"gaia": gaia_rows}
    ids = gaia_rows["source_id"].to_numpy()
    for name in settings.crossmatches:
        if not len(ids):
            break
        # A cone is small (a cluster, a dwarf galaxy): bound the crossmatch by the id span, then keep
        # only the cone's ids, so no list of thousands of ids goes into the ADQL text.
        query = CROSSMATCH_QUERIES[name].format(lo=int(ids.min()), hi=int(ids.max()))
        frame = to_frame(run_query(gaia, query, what=f"{what} {name} crossmatch", settings=settings,
                                   policy=policy))
        tables[name] = frame[frame["source_id"].isin(ids)].reset_index(drop=True)
    log.info("%s: %d sources", what, len(gaia_rows))
    return tables


# ----------------------------------------------------------------------------- DataLink XP


def fetch_xp_datalink(gaia, source_ids, *, policy: RetryPolicy, what: str, chunk: int = 5000) -> pd.DataFrame:
    """XP continuous coefficients for `source_ids` through DataLink
    (``load_data(retrieval_type='XP_CONTINUOUS', data_structure='RAW')``: one row per source, the
    coefficient arrays as arrays), in chunks (the archive caps ids per request)."""
    from .xp_bulk import ERROR_FIELDS, coefficient_frame

    ids = [int(s) for s in source_ids]
    frames = []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        query = f"DataLink XP_CONTINUOUS RAW for {len(part)} ids from {part[0]}"

        def attempt(part=part):
            # load_data unpacks into the working directory: give it a private one.
            with tempfile.TemporaryDirectory(prefix="specfm-datalink-") as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)
                try:
                    files = gaia.load_data(ids=part, retrieval_type="XP_CONTINUOUS", data_structure="RAW",
                                           format="votable", data_release="Gaia DR3")
                finally:
                    os.chdir(cwd)
            tables = [t.to_table() if hasattr(t, "to_table") else t for ts in files.values() for t in ts]
            if not tables:
                raise JobFailed("DataLink returned no XP_CONTINUOUS table")
            return tables

        for table in with_retries(attempt, what=what, query=query, policy=policy):
            records = {name: list(table[name]) for name in
                       ("source_id", "bp_coefficients", "rp_coefficients", *ERROR_FIELDS)
                       if name in table.colnames}
            if not {"source_id", "bp_coefficients", "rp_coefficients"} <= set(records):
                raise ValueError(f"{what}: DataLink XP table lacks source_id/bp_coefficients/rp_coefficients "
                                 f"(columns: {', '.join(table.colnames)})")
            frames.append(coefficient_frame(records, origin=f"{what} DataLink"))
    if not frames:
        return coefficient_frame({"source_id": [], "bp_coefficients": [], "rp_coefficients": []}, origin=what)
    return pd.concat(frames, ignore_index=True)
