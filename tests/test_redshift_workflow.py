"""The redshift chain end to end on the tiny config through Snakemake: mock DESI-like spectra from the
real E-MILES SSPs (ppxf sdist from the package index) -> autoencoder -> 2 fold models + the pooling
ablation -> SpecPT z; PCA templates -> Redrock and the hybrid on the test subset -> catalogue,
metrics, figures, speed benchmark; every product with a verifying record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fakes import copy_workflow
from specfm.redshift.products import FIGURES

BIN = os.path.dirname(sys.executable)
METRICS = "results/redshift/mockdesi_metrics.json"


@pytest.mark.slow
def test_tiny_redshift_chain(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cmd = [f"{BIN}/snakemake", "--cores", "2", METRICS, "results/bench/redshift_speed.json",
           "--configfile", "config/config.yaml", "tests/config/tiny.yaml"]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    verify = subprocess.run([f"{BIN}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    cat = pd.read_parquet(wf / "results/redshift/mockdesi_redshifts.parquet")
    assert len(cat) == 240 and cat["TARGETID"].is_unique
    test = cat[cat["split"] == "test"]
    assert np.corrcoef(test["z_specpt"], test["z_true"])[0, 1] > 0.5  # learned something in a few epochs
    rr = test.dropna(subset=["z_redrock"])
    assert len(rr) == 16
    ok = np.abs(rr["z_redrock"] - rr["z_true"]) / (1 + rr["z_true"]) < 0.01
    assert ok.mean() > 0.6, rr[["z_true", "z_redrock"]]  # Redrock recovers the mock z
    assert rr["z_hybrid"].notna().all()

    m = json.loads((wf / METRICS).read_text())
    assert m["specpt"]["all"]["n"] == len(test) and {"flatten", "mean"} <= set(m["ablation"]["test"])
    assert all({"metric", "value", "reference", "reference_value", "target"} <= set(h) for h in m["headline"])
    assert m["speed"]["redrock_over_specpt"] > 1
    speed = json.loads((wf / "results/bench/redshift_speed.json").read_text())
    assert speed["n"] == 4 and speed["seconds_per_spectrum"]["redrock"] > speed["seconds_per_spectrum"]["specpt"]
    for name in FIGURES:
        assert (wf / f"results/redshift/figures/mockdesi_{name}.png").stat().st_size > 10_000, name
    log = (wf / "logs/redshift/mockdesi_spectra.log").read_text()
    assert "pixels bluer than the SSPs' rest coverage" in log
