"""The galaxies chain end to end on the tiny config: E-MILES (real, from the ppxf sdist on the
package index) -> training set -> GalProTE (2 epochs) -> mock cube -> bins -> model and pPXF maps.

It checks what a user looks at: the maps exist with the cube's celestial WCS, every product has a
provenance record that verifies, and the recovered maps follow the mock's truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.wcs import WCS

from fakes import copy_workflow
from specfm.galaxies.cube import read_bins
from specfm.galaxies.figures import KINDS
from specfm.galaxies.maps import read_maps
from specfm.galaxies.mock_cube import read_truth, truth_per_bin

pytestmark = pytest.mark.slow  # Snakemake runs of the workflow (pytest -m "not slow" skips them)

BIN = os.path.dirname(sys.executable)
TARGETS = ["results/mockgal_maps.fits", "results/mockgal_ppxf_maps.fits"]
METRICS = "results/galaxies/mockgal_metrics.json"
ABLATION = "results/galaxies/ablation.json"
SYNTHETIC = [ABLATION] + [f"results/galaxies/figures/synthetic_{split}_{kind}.png" for split in ("test", "test_unseen")
                          for kind in KINDS]


def per_bin(image, bin_id, n_bins):
    first = [np.argwhere(bin_id == i)[0] for i in range(n_bins)]
    return np.array([image[y, x] for y, x in first])


def test_tiny_galaxies_chain_recovers_the_mock_truth(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cmd = [f"{BIN}/snakemake", "--cores", "2", METRICS, *SYNTHETIC, "--configfile", "config/config.yaml",
           "tests/config/tiny.yaml"]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-5000:]

    verify = subprocess.run([f"{BIN}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout

    bins = read_bins(wf / "results/interim/galaxies/mockgal_bins.h5")
    truth = read_truth(wf / "results/mockgal_truth.fits")
    expected = truth_per_bin(truth, bins.bin_id)
    for target in TARGETS:
        maps = read_maps(wf / target)
        assert WCS(maps.wcs_header).celestial.to_header_string() == truth.wcs.celestial.to_header_string()
        assert np.all(np.isnan(maps.images["LOGAGE"][bins.bin_id < 0]))
        for name in ("LOGAGE", "AV"):
            got = per_bin(maps.images[name], bins.bin_id, bins.n_bins)
            r = np.corrcoef(got, expected[name])[0, 1]
            assert r > 0.5, f"{target} {name}: correlation with truth {r:.2f}"

    metrics = json.loads((wf / METRICS).read_text())
    assert metrics["reference"] == "truth" and metrics["n_bins"] == bins.n_bins
    for method in ("model", "ppxf"):
        assert set(metrics[method]["vs_truth"]) == {"LOGAGE", "MH", "AV"}
        assert metrics[method]["seconds_per_spectrum"] > 0
    speed = json.loads((wf / "results/bench/galaxies_speed.json").read_text())
    assert metrics["speed_ratio"] == speed["ppxf_seconds_per_spectrum"] / speed["model_seconds_per_spectrum"]
    for fig in ("panels", "running", "residuals"):
        assert (wf / f"results/galaxies/figures/mockgal_{fig}.png").stat().st_size > 10_000
    # synthetic evaluation (paper Figs 8-12) and the attention ablation (tiny: none vs global, 1 epoch)
    for fig in SYNTHETIC[1:]:
        assert (wf / fig).stat().st_size > 10_000, fig
    ablation = json.loads((wf / ABLATION).read_text())
    assert ablation["chosen"] == "global" and set(ablation["table"]) == {"none", "global"}
    assert ablation["budget"]["epochs"] == 1 and all(r["epochs_run"] == 1 for r in ablation["table"].values())
    synthetic = json.loads((wf / "results/galaxies/synthetic_metrics.json").read_text())
    assert synthetic["see_also"] == {"ablation": ABLATION} and synthetic["model"]["attention"] == "global"
