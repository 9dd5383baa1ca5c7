"""The emulator stage's headline: the paper's two claims and the inference targets, each with
whether it was met and by how much, in a form the report reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specfm.emulator.steps import headline
from specfm.report.headline import headline_rows


def run(model, n, mae, maqe):
    return {"model": model, "n_train": n, "test": {"mae": mae, "maqe_0.95": maqe, "chi2_per_pixel": 3.0}}


def fake_inputs():
    largest = {"transformer_payne": run("transformer_payne", 700, 0.010, 0.05),
               "payne": run("payne", 700, 0.020, 0.04), "bigpayne": run("bigpayne", 700, 0.015, 0.06)}
    ft = [{"model": "transformer_payne", "n_train": 100, "seed": 0, "scratch": {"mae": 0.03},
           "finetune": {"mae": 0.04}},
          {"model": "transformer_payne", "n_train": 400, "seed": 0, "scratch": {"mae": 0.02},
           "finetune": {"mae": 0.01}}]
    inf = {"transformer_payne": {"seconds_per_star": 0.5, "labels": {
        "teff": {"n": 4, "scatter": 80.0}, "logg": {"n": 4, "scatter": 0.3}, "feh": {"n": 4, "scatter": None}}},
        "payne": {"seconds_per_star": 0.1, "labels": {"teff": {"n": 4, "scatter": 500.0}}}}
    return largest, ft, inf, {"mae": 0.05}


def by_metric(rows):
    return {r["metric"]: r for r in rows}


def test_headline_says_which_claim_was_met_and_by_how_much():
    entries = headline(*fake_inputs(), "transformer_payne", {"teff": 100, "logg": 0.2, "feh": 0.15})
    rows = by_metric(entries)
    mae_vs = [r for r in entries if r["metric"].endswith("test mae (n=700)")]
    assert [(r["reference"], r["target"], r["met"]) for r in mae_vs] == [
        ("bigpayne at the same size", 0.015, True), ("payne at the same size", 0.020, True)]
    maqe = [r for r in entries if "maqe_0.95" in r["metric"]]
    assert [(r["met"], r["ratio"]) for r in maqe] == [(True, pytest.approx(0.05 / 0.06)),
                                                      (False, pytest.approx(0.05 / 0.04))]
    ft = rows["transformer_payne fine-tuned test mae (n=100)"]  # the smallest size, where it lost
    assert (ft["target"], ft["met"], ft["ratio"]) == (0.03, False, pytest.approx(4 / 3))
    teff = rows["transformer_payne inference teff scatter (4 held-out stars)"]
    assert (teff["target"], teff["met"], teff["ratio"]) == (100, True, pytest.approx(0.8))
    logg = rows["transformer_payne inference logg scatter (4 held-out stars)"]
    assert (logg["met"], logg["ratio"]) == (False, pytest.approx(1.5))
    feh = rows["transformer_payne inference feh scatter (4 held-out stars)"]
    assert feh["target"] == 0.15 and feh["met"] is None and feh["ratio"] is None  # nothing measured
    assert not any("payne inference" in m and not m.startswith("transformer") for m in rows)
    assert "met" not in rows["transformer_payne chi2 per pixel against the flux errors"]  # no target


def test_the_report_reads_the_headline(tmp_path):
    entries = headline(*fake_inputs(), "transformer_payne", {"teff": 100})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"headline": entries}))
    rows = headline_rows("emulator", path)
    assert len(rows) == len(entries) and rows[0].target == 0.015


def saved_emulator(path, wave, name="payne", arch=None):
    """A small untrained emulator saved as training saves one (load_emulator reads it)."""
    from specfm.emulator.models import Emulator, n_params
    from specfm.train import save_final

    arch = arch or {"widths": [8]}
    lo, hi, log_mask = [4000.0, 1.0], [6000.0, 5.0], [False, False]
    emu = Emulator(name, arch, wave, np.ones(len(wave)), lo, hi, log_mask)
    save_final(emu, path, metadata={"model": name, "arch": arch, "wavelength": list(map(float, wave)),
                                    "label_names": ["teff", "logg"], "lo": lo, "hi": hi,
                                    "log_mask": log_mask, "summary": {"n_params": n_params(emu)}})
    return path


def granted(monkeypatch):
    """choose_device replaced by a recorder: which gpu count the step passed, and CPU back."""
    import specfm.train

    calls = []
    monkeypatch.setattr(specfm.train, "choose_device", lambda gpu=None: calls.append(gpu) or torch.device("cpu"))
    return calls


def test_bench_runs_on_the_granted_device_and_says_which(tmp_path, monkeypatch):
    from specfm.emulator.steps import bench

    calls = granted(monkeypatch)
    model = saved_emulator(tmp_path / "payne.pt", np.linspace(4000, 4100, 50))
    out = tmp_path / "speed.json"
    bench([str(model)], out, batch=4, min_seconds=0.01, gpu=1, threads=1)
    speed = json.loads(out.read_text())
    assert calls == [1]
    assert speed["device"].startswith("cpu (") and speed["models"]["payne"]["device"] == "cpu"


def test_infer_fits_on_the_granted_device_in_batches(tmp_path, monkeypatch):
    from test_emulator_models import toy_grid

    import specfm.emulator.inference as inference
    from specfm.emulator.steps import infer

    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    calls, batches = granted(monkeypatch), []
    real = inference._fit_batch
    monkeypatch.setattr(inference, "_fit_batch", lambda emu, x, *a, **k: batches.append(len(x)) or real(emu, x, *a, **k))
    grid = toy_grid(tmp_path, n=120)
    model = saved_emulator(tmp_path / "payne.pt", np.linspace(4000, 4100, 80))
    settings = {"n_stars": 3, "restarts": 3, "steps": 2, "lr": 0.01, "clip": 1.0, "warmup": 0.1,
                "batch": 4, "domain": None}
    summary = infer(grid, model, tmp_path / "fit.parquet", settings=settings, seed=0, gpu=1, threads=1)
    assert calls == [1] and summary["device"].startswith("cpu (")
    assert batches == [4, 4, 1]  # 3 stars x 3 restarts, 4 fits at a time
