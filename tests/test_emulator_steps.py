"""The emulator stage's headline: the paper's two claims and the inference targets, each with
whether it was met and by how much, in a form the report reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
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
    assert "met" not in rows["transformer_payne chi2 per pixel against the grid's flux errors"]  # no target
    der_snr = headline(*fake_inputs(), "transformer_payne", {}, "der_snr")
    assert any(r["metric"].endswith("against the DER_SNR noise estimates (one per star)") for r in der_snr)


def test_the_report_reads_the_headline(tmp_path):
    entries = headline(*fake_inputs(), "transformer_payne", {"teff": 100})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"headline": entries}))
    rows = headline_rows("emulator", path)
    assert len(rows) == len(entries) and rows[0].target == 0.015


ARCHS = {"payne": {"widths": [8]}, "transformer_payne": {"d": 8, "tokens": 2, "blocks": 1, "heads": 2,
                                                         "line_fwhm": 2.0}}


def saved_emulator(path, wave, name="payne", mode="scratch", n_train=10):
    """A small untrained emulator saved as training saves one (load_emulator reads it)."""
    from specfm.emulator.models import Emulator, n_params
    from specfm.train import save_final

    torch.manual_seed(n_train)
    lo, hi, log_mask = [4000.0, 1.0], [6000.0, 5.0], [False, False]
    emu = Emulator(name, ARCHS[name], wave, np.ones(len(wave)), lo, hi, log_mask)
    history = [{"step": s, "val_loss": 0.1, "mse": 0.1, "mae": 0.2, "maqe_0.95": 0.5} for s in (10, 20)]
    summary = {"model": name, "mode": mode, "n_train": n_train, "n_params": n_params(emu), "steps": 20,
               "seconds": 1.0, "best_val_mse": 0.1, "history": history}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_final(emu, path, metadata={"model": name, "arch": ARCHS[name], "wavelength": list(map(float, wave)),
                                    "label_names": ["teff", "logg"], "lo": lo, "hi": hi,
                                    "log_mask": log_mask, "summary": summary})
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


def test_evaluate_scores_every_run_draws_every_figure_and_writes_the_headline(tmp_path, monkeypatch):
    from test_emulator_models import toy_grid

    from specfm.emulator.grid import read
    from specfm.emulator.products import FIGURES as EMU_FIGURES
    from specfm.emulator.steps import evaluate, infer

    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    grid = toy_grid(tmp_path, n=120)
    wave, m = read(grid).wavelength, tmp_path / "models"
    models = [saved_emulator(m / "payne/scratch_n10_s0.pt", wave, "payne", n_train=10),
              saved_emulator(m / "payne/scratch_n20_s0.pt", wave, "payne", n_train=20),
              saved_emulator(m / "transformer_payne/scratch_n10_s0.pt", wave, "transformer_payne", n_train=10),
              saved_emulator(m / "transformer_payne/scratch_n20_s0.pt", wave, "transformer_payne", n_train=20),
              saved_emulator(m / "transformer_payne/finetune_n10_s0.pt", wave, "transformer_payne",
                             mode="finetune", n_train=10)]
    table = tmp_path / "inference/transformer_payne_n20_s0.parquet"
    table.parent.mkdir()
    infer(grid, models[3], table, settings={"n_stars": 2, "restarts": 2, "steps": 2, "lr": 0.01, "clip": 1.0,
                                            "warmup": 0.1, "batch": 8, "domain": None}, seed=0, threads=1)
    figs = {name: tmp_path / f"figures/{name}.png" for name in EMU_FIGURES}
    figs["vs_size"].parent.mkdir()
    metrics = evaluate(grid, [str(p) for p in models], [str(table)], tmp_path / "metrics.json", figs,
                       tmp_path / "summary.csv", headline_model="transformer_payne", sizes=[10, 20],
                       finetune_sizes=[10], targets={"teff": 100}, threads=1)
    assert [(r["model"], r["mode"], r["n_train"]) for r in metrics["runs"]][-1] == ("transformer_payne", "finetune", 10)
    assert [(r["model"], r["n_train"]) for r in metrics["finetune_vs_scratch"]] == [("transformer_payne", 10)]
    assert set(metrics["inference"]) == {"transformer_payne"}
    rows = {r["metric"]: r for r in metrics["headline"]}
    assert rows["transformer_payne test mae (n=20)"]["reference"] == "payne at the same size"  # the largest
    assert "transformer_payne fine-tuned test mae (n=10)" in rows
    assert all(p.stat().st_size > 1000 for p in figs.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["headline"] == metrics["headline"]
    assert set(pd.read_csv(tmp_path / "summary.csv")["label"]) == {"teff", "logg"}
