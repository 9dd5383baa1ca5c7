"""The emulator chain end to end on the tiny config: the real MILES stars (sdss-mangadap wheel from
the package index, first 300) -> grid -> four emulators at one size (80), TransformerPayne
pretrained + fine-tuned -> inference -> metrics, figures, throughput, all through Snakemake, every
product with a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from fakes import copy_workflow
from specfm.emulator.products import FIGURES as EMU_FIGURES

BIN = os.path.dirname(sys.executable)
TARGETS = ["results/emulator/metrics.json", "results/bench/emulator_speed.json"]


@pytest.mark.slow
def test_tiny_emulator_chain_on_real_miles_stars(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cmd = [f"{BIN}/snakemake", "--cores", "2", *TARGETS, "--configfile", "config/config.yaml",
           "tests/config/tiny.yaml"]
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    verify = subprocess.run([f"{BIN}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    m = json.loads((wf / TARGETS[0]).read_text())
    assert m["grid"]["spectra"] == 300 and m["grid"]["n_wave"] == 1111
    assert m["grid"]["ok"] + m["grid"]["excluded"] == 300 and m["grid"]["missing_labels"] > 0  # counted
    floor = m["mean_spectrum"]
    scratch = [r for r in m["runs"] if r["mode"] == "scratch"]
    assert {r["model"] for r in scratch} == {"payne", "bigpayne", "conv", "transformer_payne"}
    for r in scratch:  # every emulator beats the grid's mean spectrum on the held-out stars
        assert r["test"]["mse"] < floor["mse"] and r["test"]["mae"] < floor["mae"], (r["model"], r["test"], floor)
    assert {(r["model"], r["n_train"]) for r in m["finetune_vs_scratch"]} == {("transformer_payne", 80)}
    assert m["headline"] and all({"metric", "value", "reference", "reference_value", "target"} <= set(h)
                                 for h in m["headline"])
    assert set(m["inference"]) == {"payne", "transformer_payne"}
    table = pd.read_parquet(wf / "results/emulator/inference/transformer_payne_n80_s0.parquet")
    assert len(table) == 2 and table[["teff_fit", "logg_fit", "feh_fit"]].notna().all().all()
    summary = pd.read_csv(wf / "results/emulator/inference_summary.csv")
    assert set(summary["label"]) == {"teff", "logg", "feh"} and (summary["seconds_per_star"] > 0).all()
    speed = json.loads((wf / TARGETS[1]).read_text())["models"]
    assert all(v["spectra_per_second"] > 0 and v["n_wave"] == 1111 for v in speed.values())
    for name in EMU_FIGURES:
        assert (wf / f"results/emulator/figures/{name}.png").stat().st_size > 10_000, name
