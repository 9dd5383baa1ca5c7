"""BGS / ELG cuts on a hand-made catalogue; DESI file readers refuse bad files by name."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.redshift.desi import read_coadd, read_redrock, select

CUTS = {"BGS": {"target_column": "BGS_TARGET", "target_mask": 1, "zerr_frac": 0.0005, "deltachi2_min": 40.0,
                "spectype": "GALAXY", "z_range": [0.0, 0.6]},
        "ELG": {"target_column": None, "target_mask": 0, "foii_snr_column": "FOII_SNR", "foii_a": 0.9,
                "foii_b": -0.2, "z_range": [0.6, 1.6]}}


def table():
    return {  # rows: BGS ok, ZWARN set, STAR, ZERR too big, DELTACHI2 too small, not a BGS target,
        #        ELG ok, ELG with too weak [O II] for its DELTACHI2, ELG z out of range
        "Z": np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 1.0, 1.0, 1.7]),
        "ZERR": np.array([1e-5, 1e-5, 1e-5, 1e-3, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]),
        "ZWARN": np.array([0, 4, 0, 0, 0, 0, 0, 0, 0]),
        "SPECTYPE": np.array(["GALAXY", "GALAXY", "STAR", "GALAXY", "GALAXY", "GALAXY", "GALAXY", "GALAXY", "GALAXY"]),
        "DELTACHI2": np.array([100.0, 100, 100, 100, 20, 100, 10.0, 10.0, 100]),
        # ELG: log10 FOII_SNR > 0.9 - 0.2 log10(10) = 0.7 -> SNR > 5.01
        "FOII_SNR": np.array([0, 0, 0, 0, 0, 0, 6.0, 4.0, 50.0]),
        "BGS_TARGET": np.array([1, 1, 1, 1, 1, 0, 0, 0, 0]),
    }


def test_cuts_by_hand():
    assert select(table(), CUTS).tolist() == ["BGS", "", "", "", "", "", "ELG", "", ""]


def test_zcat_primary_is_honoured():
    t = table()
    t["ZCAT_PRIMARY"] = np.array([False] + [True] * 8)
    assert select(t, CUTS)[0] == ""


def test_a_catalogue_without_the_cut_columns_is_named():
    t = table()
    del t["DELTACHI2"]
    with pytest.raises(ValueError, match="zall.fits: the ELG cut needs column.*DELTACHI2"):
        select(t, CUTS, name="zall.fits")


def test_a_coadd_without_the_arms_is_named(tmp_path):
    import fitsio

    path = tmp_path / "coadd-bad.fits"
    fitsio.write(str(path), np.zeros(3), extname="B_FLUX")
    with pytest.raises(ValueError, match="coadd-bad.fits: not a DESI coadd, missing HDU.*FIBERMAP"):
        read_coadd(path)
    with pytest.raises(ValueError, match="coadd-bad.fits: no readable REDSHIFTS"):
        read_redrock(path)


def test_fiberstatus_and_pixel_masks_are_honoured(tmp_path):
    import fitsio

    path = tmp_path / "coadd-t.fits"
    fm = np.zeros(2, dtype=[("TARGETID", "i8"), ("COADD_FIBERSTATUS", "i4")])
    fm["TARGETID"], fm["COADD_FIBERSTATUS"] = [11, 12], [0, 8]
    fitsio.write(str(path), fm, extname="FIBERMAP", clobber=True)
    for arm in "BRZ":
        fitsio.write(str(path), np.arange(5.0), extname=f"{arm}_WAVELENGTH")
        fitsio.write(str(path), np.ones((2, 5)), extname=f"{arm}_FLUX")
        fitsio.write(str(path), np.ones((2, 5)), extname=f"{arm}_IVAR")
        fitsio.write(str(path), np.array([[0, 1, 0, 0, 0]] * 2, "i4"), extname=f"{arm}_MASK")
    d = read_coadd(path)
    assert d["targetid"].tolist() == [11] and d["dropped_fiberstatus"] == 1
    assert d["ivars"][0][0].tolist() == [1, 0, 1, 1, 1]


def test_select_and_fetch_one_healpix_pixel_from_a_local_server(tmp_path):
    """zcatalog -> selection + pixel list; the pixel's coadd fetched over HTTP (127.0.0.1) with its sha256
    recorded on first use and enforced afterwards."""
    import functools
    import http.server
    import json
    import threading

    import fitsio

    from specfm.fetch.errors import ChecksumError
    from specfm.redshift.steps import fetch_pixel, pixel_url, select_targets

    t = table()
    cat = np.zeros(len(t["Z"]), dtype=[("TARGETID", "i8"), ("SURVEY", "U4"), ("PROGRAM", "U6"), ("HEALPIX", "i8"),
                                       ("Z", "f8"), ("ZERR", "f8"), ("ZWARN", "i8"), ("SPECTYPE", "U6"),
                                       ("DELTACHI2", "f8"), ("FOII_SNR", "f8"), ("BGS_TARGET", "i8")])
    for c in t:
        cat[c] = t[c]
    cat["TARGETID"], cat["SURVEY"], cat["PROGRAM"] = np.arange(len(cat)) + 100, "sv3", "bright"
    cat["HEALPIX"] = [26065, 0, 0, 0, 0, 0, 10378, 0, 0]
    fitsio.write(str(tmp_path / "zall.fits"), cat, extname="ZCATALOG")
    select_targets(tmp_path / "zall.fits", tmp_path / "sel.parquet", tmp_path / "pixels.json", cuts=CUTS)
    pixels = json.loads((tmp_path / "pixels.json").read_text())
    assert pixels["n_targets"] == 2 and [p["healpix"] for p in pixels["pixels"]] == [10378, 26065]

    root = tmp_path / "tree"
    url = pixel_url("http://x/healpix", "sv3", "bright", 26065, "coadd")
    assert url == "http://x/healpix/sv3/bright/260/26065/coadd-sv3-bright-26065.fits"
    served = root / "sv3/bright/260/26065/coadd-sv3-bright-26065.fits"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"SIMPLE fake coadd bytes")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        out, lock = tmp_path / "res/coadd-sv3-bright-26065.fits", tmp_path / "lock.yaml"
        kw = dict(base_url=base, survey="sv3", program="bright", healpix=26065, kind="coadd", lock=lock,
                  fetch={"retries": 1, "backoff": 0.0, "timeout": 5})
        fetch_pixel(out, **kw)
        assert out.read_bytes() == served.read_bytes() and "26065" in lock.read_text()
        out.unlink()
        served.write_bytes(b"SIMPLE changed on the server")
        with pytest.raises(ChecksumError):
            fetch_pixel(out, **kw)
        assert not out.exists()
    finally:
        srv.shutdown()


# ------------------------------------------------------------------ coadd + redrock + selection -> spectra

GRID = {"wmin": 3600.0, "wmax": 9824.0, "dw": 8.0}
ARM_RANGES = {"B": (3500.0, 5990.0), "R": (5660.0, 7720.0), "Z": (7470.0, 9900.0)}


def write_coadd_pair(d, name="sv3-bright-26065"):
    """A coadd (targets 101-104, 104 with a bad fibre) and its Redrock file, written with astropy the
    way DESI lays them out; the Redrock labels differ from the selection's on purpose."""
    from astropy.io import fits
    from astropy.table import Table

    ids = np.array([101, 102, 103, 104])
    hdus = [fits.PrimaryHDU(),
            fits.table_to_hdu(Table({"TARGETID": ids, "COADD_FIBERSTATUS": np.array([0, 0, 0, 8], "i4")}))]
    hdus[1].name = "FIBERMAP"
    for arm, (lo, hi) in ARM_RANGES.items():
        w = np.arange(lo, hi, 2.0)
        flux = np.ones((ids.size, w.size)) * (1.0 + np.arange(ids.size))[:, None]
        for ext, data in (("WAVELENGTH", w), ("FLUX", flux), ("IVAR", np.ones_like(flux)),
                          ("MASK", np.zeros(flux.shape, "i4"))):
            hdus.append(fits.ImageHDU(data, name=f"{arm}_{ext}"))
    fits.HDUList(hdus).writeto(d / f"coadd-{name}.fits")
    rr = fits.table_to_hdu(Table({"TARGETID": ids, "Z": [0.55, 0.0001, 0.3, 0.7], "ZERR": [1e-4] * 4,
                                  "ZWARN": [0, 4, 0, 0], "SPECTYPE": ["GALAXY", "STAR", "GALAXY", "GALAXY"],
                                  "DELTACHI2": [50.0, 5.0, 60.0, 70.0]}))
    rr.name = "REDSHIFTS"
    fits.HDUList([fits.PrimaryHDU(), rr]).writeto(d / f"redrock-{name}.fits")
    return d / f"coadd-{name}.fits", d / f"redrock-{name}.fits"


def write_selection(path):
    """101 (BGS) and 103 (ELG) selected in this coadd; 102 selected in another survey's file; 104
    selected but its fibre is bad."""
    import pandas as pd

    pd.DataFrame({"TARGETID": [101, 102, 103, 104], "SURVEY": ["sv3", "sv1", "sv3", "sv3"],
                  "PROGRAM": ["bright"] * 4, "HEALPIX": [26065] * 4, "population": ["BGS", "BGS", "ELG", "ELG"],
                  "Z": [0.1, 0.2, 1.1, 1.2], "ZERR": [1e-5] * 4, "ZWARN": [0] * 4,
                  "DELTACHI2": [100.0, 100.0, 30.0, 40.0], "SPECTYPE": ["GALAXY"] * 4}).to_parquet(path)
    return path


def test_desi_kind_keeps_only_selected_targets_labelled_by_the_selection(tmp_path):
    import json

    from specfm import provenance
    from specfm.redshift.spectra import read_meta
    from specfm.redshift.steps import make_spectra

    files = write_coadd_pair(tmp_path)
    sel = write_selection(tmp_path / "s_selection.parquet")
    out = tmp_path / "s_spectra.h5"
    make_spectra("desi", out, grid=GRID, sample="s", seed=0, inputs=list(files), selection=sel)
    m = read_meta(out)
    assert m["targetid"].tolist() == [101, 103]  # 102 is not selected for this file, 104 has a bad fibre
    assert m["population"].tolist() == ["BGS", "ELG"]  # from the selection, not guessed from z
    assert m["z"].tolist() == [0.1, 1.1] and m["z_cat"].tolist() == [0.1, 1.1]  # not Redrock's 0.55 / 0.3
    assert m["deltachi2_cat"].tolist() == [100.0, 30.0] and m["spectype_cat"].tolist() == ["GALAXY", "GALAXY"]
    record = json.loads(provenance.record_path(out).read_text())
    assert record["params"]["counts"]["dropped_unselected"] == 1  # 102
    assert record["params"]["counts"]["selected_not_found"] == 2  # 102 (another file) and 104 (bad fibre)
    assert "selection" in record["inputs"]


def test_desi_kind_without_its_selection_is_refused(tmp_path):
    from specfm.redshift.steps import make_spectra

    with pytest.raises(ValueError, match="sample s: the desi kind needs its selection table"):
        make_spectra("desi", tmp_path / "x.h5", grid=GRID, sample="s", seed=0,
                     inputs=list(write_coadd_pair(tmp_path)))


def test_a_selection_without_its_columns_is_named(tmp_path):
    import pandas as pd

    from specfm.redshift.steps import read_selection

    pd.DataFrame({"TARGETID": [1], "Z": [0.1]}).to_parquet(tmp_path / "sel.parquet")
    with pytest.raises(ValueError, match="sel.parquet: not a redshift selection table.*SURVEY"):
        read_selection(tmp_path / "sel.parquet")


def test_desi_files_kind_keeps_every_good_fibre_with_its_redrock_labels(tmp_path):
    from specfm.redshift.spectra import read_meta
    from specfm.redshift.steps import make_spectra

    files = write_coadd_pair(tmp_path)
    out = tmp_path / "f_spectra.h5"
    make_spectra("desi_files", out, grid=GRID, sample="f", seed=0, inputs=list(files))
    m = read_meta(out)
    assert m["targetid"].tolist() == [101, 102, 103]
    assert m["z"].tolist() == [0.55, 0.0001, 0.3] and m["zwarn_cat"].tolist() == [0, 4, 0]
    assert m["spectype_cat"].tolist() == ["GALAXY", "STAR", "GALAXY"]
    assert set(m["split"]) == {"test"} and m["source_file"].tolist() == ["coadd-sv3-bright-26065.fits"] * 3
