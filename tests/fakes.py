"""Small fake inputs shared by the tests: E-MILES-like SSP files and a workflow copy to run in.

The fake SSPs have the real naming scheme and header layout, tiny and smooth, so tests never
need the 25 MB download.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
FWHM_TO_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

FAKE_MH = {"m0.40": -0.40, "p0.00": 0.0}
FAKE_AGES = ("01.0000", "02.5119", "10.0000")


def gaussian(x, mu, fwhm):
    return np.exp(-0.5 * ((x - mu) / (fwhm / FWHM_TO_SIGMA)) ** 2)


def fake_name(z="m0.40", age="01.0000"):
    return f"Eun1.30Z{z}T{age}_iPp0.00_baseFe_linear_FWHM_variable.fits"


def write_fake_ssp(path, mh, age, *, crval=4600.0, cdelt=0.9, n=2950, drop=None, comment=True):
    """A smooth continuum whose slope depends on age and depth on [M/H], plus one absorption line."""
    wave = crval + np.arange(n) * cdelt
    flux = (1.0 + 0.2 * (wave - 5900) / 1000 * np.log10(age)) * (1 - (0.3 + 0.1 * mh) * gaussian(wave, 5175, 5.0))
    hdu = fits.PrimaryHDU(flux.astype(np.float32))
    hdu.header.update(CRVAL1=crval, CDELT1=cdelt, CRPIX1=1.0)
    if comment:
        hdu.header["COMMENT"] = f"# Age (Gyr):           {age:.4f}"
        hdu.header["COMMENT"] = f"# [M/H]:               {mh:+.2f}"
    if drop:
        del hdu.header[drop]
    hdu.writeto(path)


FAKE_SDSS = ("NGC3073_SDSS_DR8.fits", "NGC3522_SDSS_DR8.fits", "NGC4636_SDSS_DR12.fits")  # config's sdss3


def write_fake_sdss(path, z: float = 0.004, seed: int = 0):
    """An SDSS spectrum laid out like the pPXF sdist's (wavelength [vacuum], flux, inverse_variance,
    best_fit, masks), log-uniform 3800-9200 A, the fake SSPs' shape redshifted, S/N ~ 50."""
    from astropy.table import Table

    wave = 3800.0 * 10 ** (1e-4 * np.arange(3840))
    rest = wave / (1 + z)
    flux = (1.0 + 0.1 * (rest - 5900) / 1000) * (1 - 0.3 * gaussian(rest, 5175, 5.0))
    noise = np.full(wave.size, 0.02)
    flux = flux + noise * np.random.default_rng(seed).standard_normal(wave.size)
    Table({"flux": flux, "best_fit": flux, "wavelength": wave, "and_mask": np.zeros(wave.size, np.int32),
           "or_mask": np.zeros(wave.size, np.int32), "inverse_variance": 1 / noise**2}).write(path)


def fake_emiles_sdist(tmp_path: Path) -> tuple[Path, str]:
    """A tar.gz laid out like the ppxf sdist (ppxf-X/ppxf/miles_models/Eun1.30*.fits and the SDSS
    example spectra ppxf-X/ppxf/spectra/NGC*_SDSS_DR*.fits); returns (path, sha256)."""
    src = tmp_path / "fake-sdist" / "ppxf-0.0.0" / "ppxf" / "miles_models"
    src.mkdir(parents=True)
    for age in FAKE_AGES:
        for z, mh in FAKE_MH.items():
            write_fake_ssp(src / fake_name(z, age), mh, float(age))
    spectra = src.parent / "spectra"
    spectra.mkdir()
    for i, name in enumerate(FAKE_SDSS):
        write_fake_sdss(spectra / name, seed=i)
    archive = tmp_path / "fake-ppxf.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src.parents[1], arcname="ppxf-0.0.0")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "scripts", "envs", "tests/config")


def copy_workflow(dest: Path) -> Path:
    """Copy what Snakemake needs into `dest`, so a test run never writes into the repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", ".snakemake", "checksums.lock.yaml*", ".checksums.lock.yaml*"))
        else:
            shutil.copy2(src, dest / part)
    return dest


OFFLINE_CONFIG = "config/offline.yaml"


def offline_workflow(tmp_path: Path) -> Path:
    """A workflow copy whose ppxf sdist source is a fake tarball behind a file:// URL.

    Run it with ``--configfile config/config.yaml config/offline.yaml`` (plus any other overrides).
    """
    archive, digest = fake_emiles_sdist(tmp_path)
    wf = copy_workflow(tmp_path / "wf")
    fake = {"kind": "http", "urls": [archive.as_uri()], "filename": archive.name, "sha256": digest}
    override = {"sources": {"ppxf_sdist": fake, "ppxf_sdist_spectra": dict(fake)}}
    (wf / OFFLINE_CONFIG).write_text(yaml.safe_dump(override))
    return wf
