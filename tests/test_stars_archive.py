"""Archive fetchers of the stars stage against a local TAP/UWS/DataLink server (tests/tap_server.py):
the real astroquery.gaia and pyvo client code runs; only the archive is local."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from specfm.stars import columns as C
from specfm.stars.archive import gaia as G
from specfm.stars.archive import labels as L
from specfm.stars.archive import skymapper as S
from specfm.stars.archive import steps
from specfm.stars.archive.merge import OUTPUT_COLUMNS, merge_partition, write_partition
from specfm.stars.archive.partition import n_pixels, partitions, source_id_range
from specfm.stars.archive.tap import ArchiveQueryError, RetryPolicy
from specfm.stars.archive.xp_bulk import (XpBulkError, files_for_partition, parse_array, read_md5sum,
                                          read_xp_bulk, xp_for_partition)
from specfm.stars.xp import canonical_errors
from tap_server import HANG, Fail, TapServer, votable_bytes

FAST = RetryPolicy(retries=2, backoff=0.01, timeout=1.0, poll=0.01)
LEVEL = 1
HPX = 17
LO, HI = source_id_range(HPX, LEVEL)


# ----------------------------------------------------------------------------- partitions


def test_partition_ranges_match_the_gaia_source_id_definition():
    # Gaia DR3 docs: source_id = 2^35 * (level-12 nested HEALPix index) + a running number < 2^35.
    assert source_id_range(0, 0) == (0, 2**59 - 1)  # 4^12 level-12 pixels of 2^35 ids each
    assert source_id_range(11, 0)[1] == 12 * 2**59 - 1  # the last possible source_id
    assert source_id_range(7, 12) == (7 * 2**35, 8 * 2**35 - 1)
    assert source_id_range(HPX, LEVEL) == (HPX * 2**57, (HPX + 1) * 2**57 - 1)
    for level in (0, 3, 5, 12):
        for hpx in (0, 5, n_pixels(level) - 1):
            lo, hi = source_id_range(hpx, level)
            assert C.healpix_from_source_id(lo, level) == hpx == C.healpix_from_source_id(hi, level)
            if hpx:
                assert C.healpix_from_source_id(lo - 1, level) == hpx - 1
    with pytest.raises(ValueError, match="does not exist at level 1"):
        source_id_range(48, 1)
    assert partitions(1, [5, 3, 5]) == [3, 5] and len(partitions(2)) == 192


def test_partition_of_a_real_star():
    # Barnard's star, Gaia DR3 4472832130942575872 (RA 269.452, Dec +4.693, J2000). Its nested pixels
    # are healpy.ang2pix(2**level, 269.452, 4.693, nest=True, lonlat=True), computed once outside the
    # suite: importing healpy 1.20.1 here made this process segfault intermittently (numpy 2.4).
    barnard = 4472832130942575872
    for level, pixel in ((4, 1986), (6, 31781), (8, 508502)):
        lo, hi = source_id_range(pixel, level)
        assert lo <= barnard <= hi


# ----------------------------------------------------------------------------- a fixture archive


def _ids(n, lo=LO):
    return (lo + 1000 + np.arange(n) * 7919).astype(np.int64)


def gaia_table():
    ids = np.concatenate([_ids(6), _ids(2, lo=source_id_range(HPX + 1, LEVEL)[0])])  # 2 outside the partition
    n = len(ids)
    t = Table({"source_id": ids, "ra": np.linspace(10, 11, n), "dec": np.linspace(-5, -4, n),
               "parallax": np.ma.masked_array(np.arange(n) + 1.0, mask=[False] * 5 + [True] + [False] * 2),
               "parallax_error": np.full(n, 0.1), "pmra": np.full(n, 2.0), "pmdec": np.full(n, -1.0),
               "phot_g_mean_mag": np.linspace(12, 17, n), "phot_bp_mean_mag": np.linspace(12.5, 17.5, n),
               "phot_rp_mean_mag": np.ma.masked_array(np.linspace(11.5, 16.5, n), mask=[False, True] + [False] * 6),
               "has_xp_continuous": np.array([True] * n), "in_qso_candidates": np.array([False] * 3 + [True] + [False] * 4),
               "in_galaxy_candidates": np.array([False] * n)})
    return t


def tmass_table():
    ids = _ids(6)[[0, 2, 4]]
    return Table({"source_id": ids, "tmass_j": [10.0, 11.0, 12.0], "tmass_h": [9.5, 10.5, 11.5],
                  "tmass_ks": np.ma.masked_array([9.0, 10.0, 11.0], mask=[False, False, True])})


def _in_range(table, query):
    lo, hi = map(int, re.search(r"BETWEEN (\d+) AND (\d+)", query).groups())
    sid = np.asarray(table["source_id"])
    return table[(sid >= lo) & (sid <= hi)]


# The archive only has data for partition HPX: a query for any other source_id range gets an error.
RANGE = f"BETWEEN {LO} AND {HI}"


def gaia_answer(query):
    if RANGE not in query:
        return Fail(f"no data for this source_id range: {query[:200]}")
    if "gaiadr3.gaia_source" in query:
        return REPLIES["gaia_source"]
    if "tmass_psc_xsc_best_neighbour" in query:
        return REPLIES["tmass"]
    return Fail(f"table not in this archive: {query[:40]}")


def skymapper_answer(query):
    return REPLIES["skymapper"] if RANGE in query and "dr4.master" in query else Fail(f"no data: {query[:200]}")


@pytest.fixture
def archive():
    with TapServer(gaia_answer) as srv:
        yield srv


def _client(srv, mode="async"):
    settings = G.GaiaSettings(url=srv.gaia_url, mode=mode, socket_timeout=5, crossmatches=("tmass",))
    return G.gaia_client(settings, login=False), settings


# ----------------------------------------------------------------------------- Gaia TAP


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_gaia_partition_through_astroquery(archive, mode):
    client, settings = _client(archive, mode)
    tables = G.fetch_gaia_partition(client, HPX, LEVEL, settings=settings, policy=FAST)
    gaia, tmass = tables["gaia"], tables["tmass"]
    assert gaia["source_id"].tolist() == _ids(6).tolist()  # the query's range kept only this partition
    assert np.isnan(gaia["parallax"].iloc[5]) and np.isnan(gaia["phot_rp_mean_mag"].iloc[1])  # null -> NaN
    assert gaia["in_qso_candidates"].tolist() == [False, False, False, True, False, False]
    assert np.isnan(tmass["tmass_ks"].iloc[2]) and tmass["tmass_j"].tolist() == [10.0, 11.0, 12.0]
    sent = archive.queries()
    assert any(f"BETWEEN {LO} AND {HI}" in q and "has_xp_continuous = 'True'" in q for q in sent)
    assert any("original_xsc_source_id IS NULL" in q for q in sent)  # 2MASS extended sources dropped
    if mode == "async":
        assert any(p.endswith("/results/result") for _, p, _ in archive.state.log)


def test_sync_query_refuses_a_result_at_astroquery_row_cap(archive, monkeypatch):
    monkeypatch.setattr(G, "SYNC_ROW_CAP", 3)
    client, settings = _client(archive, "sync")
    with pytest.raises(ArchiveQueryError, match="TOP 3.*mode: async"):
        G.run_query(client, G.gaia_source_query(LO, HI), what="partition hpx17", settings=settings, policy=FAST)


def test_erroring_job_is_retried_then_succeeds():
    calls = []

    def answer(query):
        calls.append(query)
        return Fail("server restarted") if len(calls) == 1 else gaia_answer(query)

    with TapServer(answer) as srv:
        client, settings = _client(srv)
        table = G.run_query(client, G.gaia_source_query(LO, HI), what="p", settings=settings, policy=FAST)
    assert len(calls) == 2 and len(table) == 6


def test_permanent_error_names_partition_query_and_message(tmp_path):
    with TapServer(lambda q: Fail("Cannot parse query: unknown column")) as srv:
        client, settings = _client(srv)
        out = tmp_path / "hpx17.parquet"
        with pytest.raises(ArchiveQueryError) as err:
            steps.fetch_partition(HPX, LEVEL, out, cfg={"gaia": {"crossmatches": []}, "skymapper": {"enabled": False},
                                                        "retry": vars(FAST)}, gaia_client=client)
        assert len([q for q in srv.queries() if "gaia_source" in q]) == FAST.retries + 1
    message = str(err.value)
    assert "partition hpx17 (level 1)" in message and "Cannot parse query: unknown column" in message
    assert f"BETWEEN {LO} AND {HI}" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_timed_out_job_is_aborted_and_retried():
    seen = []

    def answer(query):
        seen.append(query)
        return HANG if len(seen) == 1 else gaia_answer(query)

    with TapServer(answer) as srv:
        client, settings = _client(srv)
        policy = RetryPolicy(retries=1, backoff=0.01, timeout=0.3, poll=0.02)
        table = G.run_query(client, G.gaia_source_query(LO, HI), what="p", settings=settings, policy=policy)
        assert len(table) == 6
        assert srv.state.jobs["job1"].phase == "ABORTED"  # the stuck job was aborted on the server


def test_malformed_votable_fails_cleanly_and_writes_nothing(tmp_path):
    broken = votable_bytes(gaia_table())[:700]  # cut mid-document
    with TapServer(lambda q: broken) as srv:
        client, _ = _client(srv)
        with pytest.raises(ArchiveQueryError, match="partition hpx17.*gaia_source.*failed after 3 attempts"):
            steps.fetch_partition(HPX, LEVEL, tmp_path / "hpx17.parquet",
                                  cfg={"gaia": {"crossmatches": []}, "skymapper": {"enabled": False},
                                       "retry": vars(FAST)}, gaia_client=client)
    assert list(tmp_path.iterdir()) == []


def test_datalink_xp_through_load_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # load_data unpacks under the working directory
    rng = np.random.default_rng(0)
    ids = _ids(3)
    bp, rp = rng.normal(size=(3, 55)), rng.normal(size=(3, 55))
    err = rng.uniform(0.01, 0.1, size=(3, 110))
    requests = []
    reply = {"XP_CONTINUOUS_RAW.xml": votable_bytes(Table({
        "source_id": ids, "bp_coefficients": bp, "rp_coefficients": rp,
        "bp_coefficient_errors": err[:, :55], "rp_coefficient_errors": err[:, 55:]}))}

    def datalink(params):
        requests.append(params)
        return reply

    with TapServer(gaia_answer, datalink=datalink) as srv:
        client, _ = _client(srv)
        xp = G.fetch_xp_datalink(client, ids, policy=FAST, what="cone")
    assert requests[0]["RETRIEVAL_TYPE"] == "XP_CONTINUOUS" and requests[0]["DATA_STRUCTURE"] == "RAW"
    assert requests[0]["ID"] == ",".join(map(str, ids))
    np.testing.assert_array_equal(xp[C.XP_BP].to_numpy(), bp)
    np.testing.assert_array_equal(xp[C.XP_RP].to_numpy(), rp)
    np.testing.assert_allclose(xp[C.XP_ERR].to_numpy(), canonical_errors(err))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # its temporary directory is gone


def test_credentials_from_environment_or_netrc(tmp_path):
    url = "https://gea.esac.esa.int/"
    assert G.credentials(url, environ={G.ENV_USER: "ann", G.ENV_PASSWORD: "pw"}) == ("ann", "pw")
    rc = tmp_path / "netrc"
    rc.write_text("machine gea.esac.esa.int login bob password secret\n")
    rc.chmod(0o600)
    assert G.credentials(url, environ={}, netrc_path=str(rc)) == ("bob", "secret")
    assert G.credentials("https://other.example/", environ={}, netrc_path=str(rc)) is None
    assert G.credentials(url, environ={}, netrc_path=str(tmp_path / "none")) is None


# ----------------------------------------------------------------------------- SkyMapper (pyvo)


def skymapper_table():
    ids = _ids(6)
    return Table({
        "object_id": np.arange(7),
        "source_id": np.array([ids[0], ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]]),
        "gaia_dr3_dist1": [0.5, 0.2, 0.3, 2.5, 0.1, 0.1, 0.1],
        "class_star": [0.95, 0.97, 0.85, 0.99, 0.6, 0.99, 0.99],
        "flags": [0, 0, 0, 0, 0, 4, 0], "nimaflags": [0, 0, 0, 0, 0, 0, 5],
        **{f"sm_{b}": np.full(7, 15.0) + i for i, b in enumerate("uvgiz")},
        "sm_r": [15.0, 15.1, 15.0, 15.0, 19.5, 15.0, 15.0],
    })


# Replies are serialized once, here in the test's thread, never in the server's (tests/tap_server.py).
REPLIES = {name: votable_bytes(_in_range(table, RANGE)) for name, table in
           (("gaia_source", gaia_table()), ("tmass", tmass_table()), ("skymapper", skymapper_table()))}


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_skymapper_through_pyvo_with_thesis_cuts(mode):
    with TapServer(skymapper_answer) as srv:
        settings = S.SkyMapperSettings(url=srv.tap_url("skymapper"), mode=mode)
        frame = S.fetch_partition(HPX, LEVEL, settings=settings, policy=FAST)
        (query,) = srv.queries()
    ids = _ids(6)
    # kept: ids[0] (the closer of two objects, dist 0.2), ids[3] (r >= 19, class_star 0.6 > 0.5)
    # dropped: ids[1] class_star 0.85 at r < 19, ids[2] 2.5", ids[4] flags 4, ids[5] nimaflags 5
    assert frame["source_id"].tolist() == [ids[0], ids[3]]
    assert frame["sm_r"].tolist() == [15.1, 19.5]
    assert list(frame.columns) == ["source_id", *C.SURVEY_BANDS["skymapper"]]
    assert "flags < 4" in query and "nimaflags < 5" in query and "gaia_dr3_dist1 < 2.0" in query


def test_skymapper_job_error_message_reaches_the_user():
    with TapServer(lambda q: Fail("table dr4.master is being reloaded")) as srv:
        settings = S.SkyMapperSettings(url=srv.tap_url("skymapper"))
        with pytest.raises(ArchiveQueryError, match="hpx17.*SkyMapper.*being reloaded.*dr4.master"):
            S.fetch_partition(HPX, LEVEL, settings=settings, policy=FAST)
        assert srv.state.jobs == {}  # every failed job was deleted


# ----------------------------------------------------------------------------- XP bulk files


def _xp_csv(path, rows, *, header_extra=""):
    """An ESA-style bulk file: ECSV '#' header, then CSV with arrays as quoted strings; rows of
    (source_id, bp, rp) or (source_id, bp, rp, bp_errors, rp_errors) (the real files have errors)."""
    lines = ["# %ECSV 1.0", "# ---", "# datatype:", "# - {name: source_id, datatype: int64}"]
    errors = ",bp_coefficient_errors,rp_coefficient_errors" if len(rows[0]) == 5 else ""
    lines.append("solution_id,source_id,bp_n_parameters,bp_coefficients,rp_n_parameters,rp_coefficients"
                 + errors + header_extra)
    for sid, bp, rp, *err in rows:
        lines.append(f'375316653866487564,{sid},55,"{bp}",55,"{rp}"' + "".join(f',"{e}"' for e in err))
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def _arr(values, brackets="[]"):
    return brackets[0] + ",".join(repr(float(v)) for v in values) + brackets[1]


def test_xp_bulk_streams_in_chunks_and_filters_the_partition(tmp_path):
    rng = np.random.default_rng(1)
    coeffs = rng.normal(size=(5, 110))
    errors = rng.uniform(0.01, 0.1, size=(5, 110))
    ids = [*_ids(4), source_id_range(HPX + 1, LEVEL)[0]]  # the last is another partition's
    rows = [(ids[i], _arr(coeffs[i, :55]), _arr(coeffs[i, 55:], "()"), _arr(errors[i, :55]),
             _arr(errors[i, 55:])) for i in range(5)]
    rows[2] = (ids[2], "null", _arr(coeffs[2, 55:]), "null", _arr(errors[2, 55:]))  # no BP spectrum
    path = tmp_path / "XpContinuousMeanSpectrum_000000-003111.csv.gz"
    _xp_csv(path, rows)
    chunks = list(read_xp_bulk(path, source_id_range=(LO, HI), chunk_rows=3))
    assert [len(c) for c in chunks] == [3, 1]
    xp = pd.concat(chunks, ignore_index=True)
    assert xp["source_id"].tolist() == ids[:4]
    np.testing.assert_array_equal(xp.loc[[0, 1, 3], C.XP].to_numpy(), coeffs[[0, 1, 3]])
    assert xp.loc[2, C.XP_BP].isna().all() and np.allclose(xp.loc[2, C.XP_RP], coeffs[2, 55:])
    # Gaia's errors become those of the canonical coefficients; a row without BP has none
    np.testing.assert_allclose(xp.loc[[0, 1, 3], C.XP_ERR].to_numpy(), canonical_errors(errors[[0, 1, 3]]))
    assert xp.loc[2, C.XP_ERR].isna().all()
    no_errors = tmp_path / "XpContinuousMeanSpectrum_003112-003200.csv.gz"
    _xp_csv(no_errors, [r[:3] for r in rows])
    assert not set(C.XP_ERR) & set(next(read_xp_bulk(no_errors)).columns)  # absent, never invented


@pytest.mark.parametrize("bad, message", [
    ("[1.0,2.0]", r":7: source_id \d+: coefficient array has 2 values, expected 55"),
    ("[" + ",".join(["1.0"] * 54 + ["nan"]) + "]", r":7: source_id \d+: coefficient array contains NaN"),
    ("1.0;2.0", r":7: source_id \d+: coefficient array is not"),
])
def test_xp_bulk_malformed_row_names_file_and_line(tmp_path, bad, message):
    good = _arr(np.ones(55))
    path = tmp_path / "XpContinuousMeanSpectrum_000000-000010.csv.gz"
    _xp_csv(path, [(_ids(1)[0], good, good), (_ids(2)[1], bad, good)])
    with pytest.raises(XpBulkError, match=re.escape(str(path)) + message):
        list(read_xp_bulk(path))


def test_xp_bulk_truncated_gzip_and_short_row(tmp_path):
    good = _arr(np.ones(55))
    path = tmp_path / "XpContinuousMeanSpectrum_000000-000010.csv.gz"
    _xp_csv(path, [(sid, good, good) for sid in _ids(400)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XpBulkError, match=re.escape(str(path)) + ": truncated or corrupt gzip after line"):
        list(read_xp_bulk(path))
    with gzip.open(path, "wt") as fh:
        fh.write(f"source_id,bp_coefficients,rp_coefficients\n{_ids(1)[0]},\"{good}\"\n")
    with pytest.raises(XpBulkError, match=re.escape(str(path)) + ":2: 2 fields, header has 3"):
        list(read_xp_bulk(path))


def test_xp_bulk_duplicated_source_id_is_an_error(tmp_path):
    good = _arr(np.ones(55))
    a, b = tmp_path / "XpContinuousMeanSpectrum_000000-000010.csv.gz", tmp_path / "XpContinuousMeanSpectrum_000011-000020.csv.gz"
    _xp_csv(a, [(_ids(1)[0], good, good)])
    _xp_csv(b, [(_ids(1)[0], good, good)])
    with pytest.raises(XpBulkError, match=f"source_id {_ids(1)[0]} appears 2 times"):
        xp_for_partition([a, b], LO, HI)


def test_xp_bulk_file_selection_and_index(tmp_path):
    names = ["XpContinuousMeanSpectrum_000000-003111.csv.gz", "XpContinuousMeanSpectrum_003112-005263.csv.gz",
             "XpContinuousMeanSpectrum_005264-786431.csv.gz"]
    # level 5 pixel 48 = level-8 pixels 3072..3135: spans the first two files
    assert files_for_partition(names, 48, 5) == names[:2]
    assert files_for_partition(names, 0, 10) == names[:1]  # level 10 pixel 0 lies in level-8 pixel 0
    assert files_for_partition(names, 11, 0) == names[2:]
    index = tmp_path / "_MD5SUM.txt"
    index.write_text(f"{'a' * 32}  ./{names[0]}\n\n{'B' * 32}  {names[1]}\n")
    assert read_md5sum(index) == {names[0]: "a" * 32, names[1]: "b" * 32}
    index.write_text("not an index\n")
    with pytest.raises(ValueError, match="_MD5SUM.txt:1"):
        read_md5sum(index)
    assert np.isnan(parse_array(None)).all() and parse_array("(" + ",".join(["2"] * 55) + ")")[54] == 2.0


# ----------------------------------------------------------------------------- labels


def _write(table: Table, path):
    table.write(path, overwrite=True)
    return path


def test_apogee_labels_cuts_alpha_ages_and_dedup(tmp_path):
    ids = [11, 12, 13, 14, 14, 15, 0]
    allstar = _write(Table({
        "APOGEE_ID": ["2M1", "2M2", "2M3", "2M4", "2M4b", "2M5", "2M6"],
        "GAIAEDR3_SOURCE_ID": np.array(ids, np.int64),
        "TEFF": [5000.0, 4800, 6000, 4500, 4500, 5100, 5000], "TEFF_ERR": np.full(7, 50.0),
        "LOGG": [3.0, 2.5, 4.2, 2.0, 2.0, 3.1, 3.0], "LOGG_ERR": np.full(7, 0.05),
        "FE_H": [-0.2, 0.1, -9999.0, 0.0, 0.0, -0.5, 0.0], "FE_H_ERR": np.full(7, 0.02),
        "M_H": [-0.1, 0.1, 0.0, 0.0, 0.0, -0.4, 0.0],
        "ALPHA_M": [0.2, 0.05, 0.1, 0.0, 0.0, 0.3, 0.0], "ALPHA_M_ERR": np.full(7, 0.03),
        "ASPCAPFLAG": np.array([0, 0, 0, 0, 0, 1 << 23, 0], np.int64), "STARFLAG": np.array([0, 4, 0, 0, 0, 0, 0]),
        "EXTRATARG": np.array([0, 0, 16, 0, 0, 0, 0]),
    }), tmp_path / "allStar.fits")
    astronn = _write(Table({"APOGEE_ID": ["2M1", "2M2"], "age": [4.0, 6.0], "age_total_error": [1.0, 2.0],
                            "dist": [500.0, -9999.0], "dist_error": [50.0, 1.0]}), tmp_path / "astroNN.fits")
    leung = _write(Table({"APOGEE_ID": ["2M1", "2M2"], "Age": [5.0, 7.0], "Age_Error": [1.0, 1.0]}),
                   tmp_path / "leung.fits")
    out = L.apogee_labels(allstar, astronn=astronn, leung=leung).set_index("source_id")
    # 13: EXTRATARG duplicate visit; 14: source_id twice -> both dropped; 15: STAR_BAD; 0: no Gaia id
    assert out.index.tolist() == [11, 12]
    assert out.loc[11, "alpha_fe"] == pytest.approx(0.2 + -0.1 - -0.2)
    assert out.loc[11, "age"] == 5.0  # Leung et al. passes its cuts (20 % error, flags 0)
    assert out.loc[12, "age"] == 6.0  # STARFLAG != 0: astroNN age kept
    assert out.loc[11, "parallax_label"] == pytest.approx(2.0) and out.loc[11, "parallax_label_err"] == pytest.approx(0.2)
    assert np.isnan(out.loc[12, "parallax_label"])  # -9999 distance is missing, not 1000/-9999


def test_galah_and_rave_labels_and_combination(tmp_path):
    galah = _write(Table({
        "gaiadr3_source_id": np.array([21, 22, 23, 12], np.int64), "flag_sp": [0, 0, 1, 0],
        "teff": [5800.0, 5000, 4000, 4700], "e_teff": np.full(4, 80.0), "logg": [4.4, 3.0, 2.0, 2.4],
        "e_logg": np.full(4, 0.1), "fe_h": [0.0, -1.0, 0.0, 0.2], "e_fe_h": np.full(4, 0.05),
        "flag_fe_h": [0, 2, 0, 0], "alpha_fe": [0.0, 0.3, 0.0, 0.1], "e_alpha_fe": np.full(4, 0.04),
        "flag_alpha_fe": [1, 0, 0, 0], "age": [4.5, 11.0, 1.0, 3.0], "e_age": np.full(4, 1.0),
    }), tmp_path / "galah.fits")
    g = L.galah_labels(galah).set_index("source_id")
    assert g.index.tolist() == [21, 22, 12]  # 23: flag_sp != 0
    assert np.isnan(g.loc[22, "fe_h"]) and np.isnan(g.loc[22, "fe_h_err"])  # upper limit
    assert np.isnan(g.loc[21, "alpha_fe"]) and g.loc[22, "alpha_fe"] == 0.3
    assert g[C.LABELS].loc[21].drop(["fe_h", "alpha_fe", "parallax_label"]).notna().all()
    rave_csv = tmp_path / "rave.csv"
    pd.DataFrame({"gaiaedr3_source_id": [31, 31, 32], "teff_bdasp": [5000, 5100, 6000],
                  "teff_error_bdasp": [100, 100, 90], "logg_bdasp": [3, 3, 4], "logg_error_bdasp": [.2, .2, .2],
                  "m_h_bdasp": [-.3, -.3, 0], "m_h_error_bdasp": [.1, .1, .1], "alpha_m_cnn": [.1, .1, 0],
                  "alpha_m_error_cnn": [.05, .05, .05], "age_bdasp": [5, 5, 2], "age_error_bdasp": [1, 1, 1],
                  "parallax_bdasp": [1.0, 1.0, 2.0], "parallax_error_bdasp": [.1, .1, .1]}).to_csv(rave_csv, index=False)
    r = L.rave_labels(rave_csv)
    assert r["source_id"].tolist() == [32] and r.loc[0, "parallax_label"] == 2.0  # 31 twice: dropped
    apogee = L._empty_labels(np.array([12], np.int64)).assign(teff=4650.0)
    both = L.combine({"apogee": apogee, "galah": g.reset_index(), "rave": r}).set_index("source_id")
    assert both.loc[12, "teff"] == 4650.0 and both.loc[12, "label_survey"] == "apogee"
    assert both.loc[32, "label_survey"] == "rave" and len(both) == 4
    out = tmp_path / "labels.parquet"
    assert steps.build_labels(out, galah=str(galah), rave=str(rave_csv)) == 4
    part = steps.labels_in_range(out, 21, 22)
    assert part["source_id"].tolist() == [21, 22]


def test_unreadable_label_file_is_named(tmp_path):
    bad = tmp_path / "allStar.fits"
    bad.write_bytes(b"SIMPLE  = T" + b"\0" * 10)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": cannot read label catalogue"):
        L.apogee_labels(bad)


# ----------------------------------------------------------------------------- merge and write


def test_partition_end_to_end_merge_and_atomic_write(tmp_path):
    good, err = _arr(np.arange(55.0)), _arr(np.full(55, 0.5))
    bulk = tmp_path / "XpContinuousMeanSpectrum_000000-786431.csv.gz"
    _xp_csv(bulk, [(sid, good, good, err, err) for sid in _ids(6)[[0, 1]]])
    import hashlib
    index = tmp_path / "_MD5SUM.txt"
    index.write_text(f"{hashlib.md5(bulk.read_bytes()).hexdigest()}  {bulk.name}\n")
    labels = tmp_path / "labels.parquet"
    L.combine({"galah": L._empty_labels(_ids(6)[[2]]).assign(teff=5000.0, teff_err=80.0)}).to_parquet(labels)
    out = tmp_path / "raw" / "hpx17.parquet"
    with TapServer(gaia_answer) as srv, TapServer(skymapper_answer) as sm:
        client, _ = _client(srv)
        cfg = {"gaia": {"crossmatches": ["tmass"]}, "retry": vars(FAST),
               "skymapper": {"url": sm.tap_url("skymapper")}}
        n = steps.fetch_partition(HPX, LEVEL, out, cfg=cfg, xp_index=index, xp_dir=tmp_path, labels=labels,
                                  gaia_client=client)
    frame = pq.read_table(out).to_pandas()
    ids = _ids(6)
    # cuts: ids[3] is a QSO candidate, ids[5] has no parallax
    assert n == 4 and frame["source_id"].tolist() == [ids[0], ids[1], ids[2], ids[4]]
    assert list(frame.columns) == OUTPUT_COLUMNS
    assert OUTPUT_COLUMNS[: len(C.RAW_COLUMNS)] == C.RAW_COLUMNS
    assert (frame["healpix"] == HPX).all()
    f = frame.set_index("source_id")
    assert f.loc[ids[0], "bp_54"] == 54.0 and f.loc[ids[2], C.XP].isna().all()  # no XP -> NaN, not 0
    np.testing.assert_allclose(f.loc[ids[0], C.XP_ERR].to_numpy(float), canonical_errors(np.full((1, 110), 0.5))[0])
    assert f.loc[ids[2], C.XP_ERR].isna().all()
    assert f.loc[ids[0], "tmass_j"] == 10.0 and np.isnan(f.loc[ids[1], "tmass_j"])
    assert f.loc[ids[0], "sm_r"] == 15.1 and np.isnan(f.loc[ids[1], "sm_r"])
    assert f.loc[ids[2], "teff"] == 5000.0 and f.loc[ids[2], "label_survey"] == "galah"
    assert np.isnan(f.loc[ids[0], "teff"]) and pd.isna(f.loc[ids[0], "label_survey"])
    assert f[["w1", "ps1_g", "sdss_u", "ebv"]].isna().all().all()  # not queried: missing, never 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["hpx17.parquet"]


def test_merge_rejects_duplicates_and_write_is_atomic(tmp_path, monkeypatch):
    gaia = G.to_frame(_in_range(gaia_table(), f"BETWEEN {LO} AND {HI}"))
    dup = pd.concat([gaia, gaia.iloc[[0]]])
    with pytest.raises(ValueError, match="p: gaia_source has 2 rows with a duplicated source_id"):
        merge_partition(dup, healpix_level=LEVEL, what="p")
    frame = merge_partition(gaia, healpix_level=LEVEL, what="p", cuts=False)
    assert len(frame) == 6 and frame["in_qso_candidates"].tolist() == [0, 0, 0, 1, 0, 0]
    out = tmp_path / "hpx17.parquet"
    import specfm.stars.archive.merge as M

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(M.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_partition(frame, out)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the rules


@pytest.mark.slow
def test_archive_and_targets_rules_run_against_the_local_archive(tmp_path):
    """The Snakemake rules (partition + cone) end to end: real scripts, real clients, local server."""
    import os
    import subprocess
    import sys

    import yaml
    from fakes import copy_workflow

    wf = copy_workflow(tmp_path / "wf")
    ids = _ids(6)

    cone = votable_bytes(_in_range(gaia_table(), RANGE)[:3])
    cone_xp = {"XP_RAW.xml": votable_bytes(Table({"source_id": ids[:3], "bp_coefficients": np.ones((3, 55)),
                                                 "rp_coefficients": np.full((3, 55), 2.0)}))}

    def answer(query):
        if "CONTAINS" in query:
            return cone
        if "tmass_psc_xsc_best_neighbour" in query and RANGE not in query:
            return REPLIES["tmass"]  # the cone's crossmatch asks for its id span, then keeps its ids
        return skymapper_answer(query) if "dr4.master" in query else gaia_answer(query)

    def datalink(params):
        return cone_xp if params["ID"] == ",".join(map(str, ids[:3])) else Fail(f"unexpected ids {params['ID']}")

    with TapServer(answer, datalink=datalink) as srv:
        overlay = {"stars": {
            "healpix_level": LEVEL,
            "samples": {"sky": {"kind": "archive", "pixels": [HPX]},
                        "cluster": {"kind": "targets", "ra": 10.5, "dec": -4.5, "radius": 0.3,
                                    "model": "sky"}},
            "archive": {"gaia": {"url": srv.gaia_url, "crossmatches": ["tmass"], "socket_timeout": 10},
                        "skymapper": {"url": srv.tap_url("skymapper")}, "xp_bulk": {"enabled": False},
                        "retry": {"retries": 1, "backoff": 0.01, "timeout": 20, "poll": 0.02}}}}
        (wf / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        targets = [f"resources/stars/sky/raw/hpx{HPX}.parquet", "resources/stars/cluster/raw/cone.parquet"]
        run = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "1", *targets,
                              "--configfile", "config/config.yaml", "overlay.yaml"],
                             cwd=wf, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    sky = pq.read_table(wf / targets[0]).to_pandas()
    assert sky["source_id"].tolist() == [ids[0], ids[1], ids[2], ids[4]]  # thesis cuts on by default
    assert sky.set_index("source_id").loc[ids[0], "sm_r"] == 15.1 and sky[C.XP].isna().all().all()
    cone = pq.read_table(wf / targets[1]).to_pandas()
    assert cone["source_id"].tolist() == ids[:3].tolist()  # no cuts on targets
    assert (cone[C.XP_BP] == 1.0).all().all() and (cone[C.XP_RP] == 2.0).all().all()
    assert cone["tmass_j"].tolist()[0] == 10.0 and np.isnan(cone["tmass_j"].tolist()[1])  # only cone ids kept
    assert "gaia_source rows 6" in (wf / f"logs/stars/sky/archive_hpx{HPX}.log").read_text()
