"""A source read as one file (no `members`: a PHANGS cube or maps, a MaNGA LOGCUBE, the DESI zcatalog,
a stars label catalogue) is checked against the config's pin, or the lock, before every use: a file
placed by hand (as a failed fetch suggests) never went through the fetch rule's check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from specfm.fetch import ChecksumError, ChecksumLock
from specfm.fetch.sources import checked_source_file

GOOD = b"SIMPLE  =                    T / the bytes the config pins\n" * 4
KEY = "phangs_cube/cube.fits"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def placed(tmp_path: Path, data: bytes, name: str = "cube.fits") -> Path:
    """A source file placed by hand where the fetch would have written it."""
    path = tmp_path / "resources/archives/phangs_cube" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pinned(digest: str) -> dict:  # what the workflow's unpack_pin(name) gives for a pinned source
    return {"sha256": digest, "what": "config sources.phangs_cube.sha256", "lock_path": None, "lock_key": None}


def locked(lock: Path) -> dict:  # ... and for a trust-on-first-use one
    return {"sha256": None, "what": "", "lock_path": str(lock), "lock_key": KEY}


def assert_refusal(msg: str, path: Path, expected: str, found: str) -> None:
    assert str(path) in msg and f"expected {expected}" in msg and f"found {found}" in msg and "\n" not in msg


def test_wrong_bytes_are_refused_against_the_config_pin(tmp_path):
    path = placed(tmp_path, GOOD + b"tampered")
    with pytest.raises(ChecksumError) as info:
        checked_source_file(path, pinned(sha(GOOD)))
    assert_refusal(str(info.value), path, sha(GOOD), sha(GOOD + b"tampered"))
    assert "config sources.phangs_cube.sha256" in str(info.value)


def test_wrong_bytes_are_refused_against_the_lock_entry(tmp_path):
    lock = ChecksumLock(tmp_path / "config/checksums.lock.yaml")
    lock.record(KEY, sha256=sha(GOOD), size=len(GOOD))
    path = placed(tmp_path, b"other bytes")
    with pytest.raises(ChecksumError) as info:
        checked_source_file(path, locked(lock.path))
    assert_refusal(str(info.value), path, sha(GOOD), sha(b"other bytes"))
    assert str(lock.path) in str(info.value) and KEY in str(info.value)


def test_the_right_bytes_pass(tmp_path):
    path = placed(tmp_path, GOOD)
    assert checked_source_file(path, pinned(sha(GOOD).upper())) == path  # a pin is compared case-insensitively
    lock = ChecksumLock(tmp_path / "lock.yaml")
    lock.record(KEY, sha256=sha(GOOD))
    assert checked_source_file(str(path), locked(lock.path)) == path


def test_no_pin_and_no_lock_entry_is_trust_on_first_use_as_for_unpacked_sources(tmp_path, caplog):
    lock = tmp_path / "config/checksums.lock.yaml"
    path = placed(tmp_path, GOOD)
    checked_source_file(path, locked(lock))  # recorded now, with a warning
    entry = ChecksumLock(lock).get(KEY)
    assert entry["sha256"] == sha(GOOD) and entry["size"] == len(GOOD) and "not fetched by specfm" in entry["url"]
    assert "trust on first use" in caplog.text
    path.write_bytes(b"replaced later")  # ... and enforced from then on
    with pytest.raises(ChecksumError) as info:
        checked_source_file(path, locked(lock))
    assert_refusal(str(info.value), path, sha(GOOD), sha(b"replaced later"))


def test_not_a_declared_source_is_not_checked_and_a_pin_needs_a_checksum_or_lock(tmp_path):
    path = placed(tmp_path, GOOD)
    assert checked_source_file(path, None) == path  # e.g. the mock cube the workflow built
    with pytest.raises(ValueError, match="give the pinned sha256 or the lock"):
        checked_source_file(path, {"sha256": None, "lock_path": None, "lock_key": None})
    with pytest.raises(FileNotFoundError, match="missing"):
        checked_source_file(tmp_path / "nothing.fits", pinned(sha(GOOD)))


def test_galaxies_bin_refuses_a_hand_placed_cube_before_reading_it(tmp_path):
    from specfm.galaxies.steps import bin_cube

    cube = placed(tmp_path, b"not the pinned cube")
    out = tmp_path / "bins.h5"
    with pytest.raises(ChecksumError) as info:
        bin_cube(cube, out, redshift=0.01, target_snr=30, min_snr=1, kind="manga", source_pin=pinned(sha(GOOD)))
    assert_refusal(str(info.value), cube, sha(GOOD), sha(b"not the pinned cube"))
    assert not out.exists()


def test_galaxies_compare_refuses_hand_placed_published_maps_before_reading_anything(tmp_path):
    from specfm.galaxies.steps import compare

    maps = placed(tmp_path, b"not the pinned maps", "maps.fits")
    metrics = tmp_path / "metrics.json"
    with pytest.raises(ChecksumError) as info:
        compare(tmp_path / "absent_model.fits", tmp_path / "absent_ppxf.fits", None, tmp_path / "absent.json",
                metrics, {}, published_path=maps, published_pin=pinned(sha(GOOD)))
    assert_refusal(str(info.value), maps, sha(GOOD), sha(b"not the pinned maps"))
    assert not metrics.exists()


def test_redshift_selection_refuses_a_hand_placed_zcatalog(tmp_path):
    from specfm.redshift.steps import select_targets

    zcat = placed(tmp_path, b"not the pinned zcatalog", "zall-pix-fuji.fits")
    lock = ChecksumLock(tmp_path / "lock.yaml")
    lock.record(KEY, sha256=sha(GOOD))
    with pytest.raises(ChecksumError) as info:
        select_targets(zcat, tmp_path / "sel.parquet", tmp_path / "pixels.json", cuts={}, source_pin=locked(lock.path))
    assert_refusal(str(info.value), zcat, sha(GOOD), sha(b"not the pinned zcatalog"))
    assert not (tmp_path / "sel.parquet").exists() and not (tmp_path / "pixels.json").exists()


RAVE = (b"gaiaedr3_source_id,teff_bdasp,teff_error_bdasp,logg_bdasp,logg_error_bdasp,m_h_bdasp,m_h_error_bdasp,"
        b"alpha_m_cnn,alpha_m_error_cnn,age_bdasp,age_error_bdasp,parallax_bdasp,parallax_error_bdasp\n"
        b"32,6000,90,4,0.2,0,0.1,0,0.05,2,1,2.0,0.1\n")


def test_stars_labels_refuse_a_hand_placed_catalogue_and_read_the_right_one(tmp_path):
    from specfm.stars.archive import steps

    rave = placed(tmp_path, RAVE, "RAVE_DR6.csv")
    out = tmp_path / "labels.parquet"
    with pytest.raises(ChecksumError) as info:
        steps.build_labels(out, rave=str(rave), pins={"rave": pinned(sha(RAVE + b"x"))})
    assert_refusal(str(info.value), rave, sha(RAVE + b"x"), sha(RAVE))
    assert not out.exists()
    assert steps.build_labels(out, rave=str(rave), pins={"rave": pinned(sha(RAVE))}) == 1
