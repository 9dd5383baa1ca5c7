"""Workflow targets of kinds `spectra` and `manga`: a spectra target end to end on the tiny config
(offline fake E-MILES sdist), and the MaNGA cube target's plan (fetch -> bins -> maps -> compare)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy.table import Table

from fakes import copy_workflow, offline_workflow
from test_galaxies_single import write_1d

BIN = os.path.dirname(sys.executable)


def snakemake(wf, *args, timeout=900):
    return subprocess.run([f"{BIN}/snakemake", *args], cwd=wf, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})


def test_manga_target_plans_fetch_bins_maps_and_compare(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    proc = snakemake(wf, "-n", "results/galaxies/manga8485_metrics.json", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rule in ("fetch_manga_8485_1901_logcube", "galaxies_bin", "galaxies_predict", "galaxies_ppxf",
                 "galaxies_compare"):
        assert rule in proc.stdout, rule
    # a spectra target has no maps: asking for them names the target and its real product
    (wf / "config/spectra.yaml").write_text(yaml.safe_dump(
        {"galaxies": {"targets": {"mine": {"kind": "spectra", "files": ["s.csv"], "redshift": 0.01}}}}))
    (wf / "s.csv").write_text("wavelength,flux,error\n")
    proc = snakemake(wf, "-n", "results/mine_maps.fits", "--configfile", "config/config.yaml", "config/spectra.yaml")
    assert proc.returncode != 0
    assert "galaxies.targets.mine is of kind spectra" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_spectra_target_end_to_end(tmp_path):
    wf = offline_workflow(tmp_path)
    wave = 4700.0 + 1.25 * np.arange(2200)
    (wf / "data").mkdir()
    write_1d(wf / "data/a.fits", wave, 10.0 + 0.001 * (wave - 6000.0), np.full(wave.size, 0.2))
    Table({"wavelength": wave, "flux": np.full(wave.size, 5.0), "error": np.full(wave.size, 0.1)}).write(
        wf / "data/b.csv", format="ascii.csv")
    overlay = {"galaxies": {"targets": {"mine": {"kind": "spectra", "files": ["data/a.fits", "data/b.csv"],
                                                 "redshift": 0.0, "redshifts": [0.004, 0.006]}},
                            "build": ["mine"], "trainset": {"size_factor": 1.0}}}  # 6 fake SSPs
    (wf / "config/spectra.yaml").write_text(yaml.safe_dump(overlay))
    out = "results/galaxies/mine_spectra.parquet"
    proc = snakemake(wf, "--cores", "2", out, "--configfile", "config/config.yaml", "config/offline.yaml",
                     "tests/config/tiny.yaml", "config/spectra.yaml")
    assert proc.returncode == 0, proc.stderr[-5000:]
    table = Table.read(wf / out)
    assert list(table["spectrum"]) == ["a.fits", "b.csv"] and list(table["redshift"]) == [0.004, 0.006]
    assert np.all(table["ppxf_ok"]) and np.all(np.isfinite(table["log_age"]))
    import json

    agreement = json.loads((wf / "results/galaxies/mine_spectra_metrics.json").read_text())
    d = np.asarray(table["log_age"]) - np.asarray(table["ppxf_log_age"])
    assert agreement["model_vs_ppxf"]["LOGAGE"]["mean_abs"] == pytest.approx(np.abs(d).mean(), rel=1e-6)
    assert agreement["n_ppxf_ok"] == 2 and len(agreement["headline"]) == 3
    verify = subprocess.run([f"{BIN}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
