"""The cost curve (issue 13 part 3): wall time and peak memory of each system's dominant steps at two
or more input sizes, everything else identical, with a fitted scaling law and a projection to the
sizes of config/fullscale.yaml.

    python -m specfm.report.cost_curve --system galaxies                      # its steps, default sizes
    python -m specfm.report.cost_curve --system redshift --step redrock --sizes 5 20
    python -m specfm.report.cost_curve --system all                           # every step (~20 min here)

Writes ``results/bench/cost_<system>.json``: per step and size the wall seconds of the step, the peak
RSS of the process that ran it (a fresh interpreter per size, VmHWM; imports included, so the RSS
before the step is recorded too), the CPU seconds of that process (imports included), the input size in the step's unit, the settings, the machine's
load average before and after, and the commit. Each step runs on one thread (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``) so that a shared 2-core machine gives a stable number.

Scaling law: t(N) = a + b N fitted by least squares (a = the fixed cost: imports not included, but
model export, numba compilation, a first epoch's set-up), and the log-log slope k of t against N (k
~ 1: linear). The projection to a full-scale size is a + b N_full on this machine's one core; the
README states what else it assumes (GPU speed-up factors, model sizes). Inputs are synthetic where the
step's cost does not depend on the values (stars feature rows, cube pixels, emulator grid fluxes), or
the demo's own products (galaxies bins, model, templates: run the demo first) and the E-MILES SSPs of
``resources/ppxf_sdist`` (redshift mocks and Redrock templates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

DEMO = {"bins": "results/interim/galaxies/mockgal_bins.h5",
        "templates": "results/interim/galaxies/templates_emiles_ppxf.h5",
        "model": "results/models/galaxies/galprote_emiles_ppxf.pt",
        "ssps": "resources/ppxf_sdist/manifest.json"}


# ------------------------------------------------------------------ scaling law (no I/O: tested)


def fit_scaling(sizes, seconds) -> dict:
    """t = a + b N (least squares; a exact line through two points) and the log-log slope k."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    if n.size < 2 or np.unique(n).size < 2:
        raise ValueError("a scaling law needs two or more distinct sizes")
    if np.any(n <= 0) or np.any(t <= 0):
        raise ValueError("sizes and times must be positive")
    b, a = np.polyfit(n, t, 1)
    k = np.polyfit(np.log(n), np.log(t), 1)[0]
    return {"law": "t = a + b N", "a_seconds": float(a), "b_seconds_per_unit": float(b), "loglog_slope": float(k)}


def project(fit: dict, n: float) -> float:
    """Seconds at size n from `fit_scaling`'s line (never below the per-unit part alone)."""
    return float(max(fit["a_seconds"] + fit["b_seconds_per_unit"] * n, fit["b_seconds_per_unit"] * n))


def check_monotone(runs: list[dict]) -> None:
    sizes = [r["size"] for r in runs]
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must increase strictly: {sizes}")


def fits(entry: dict) -> dict:
    """Scaling laws of one step's runs (wall seconds, CPU seconds, peak RSS) and the projection to
    ``entry["full"]["size"]``; the RSS of a ``bounded_rss`` step is projected as its largest measured."""
    runs = entry["runs"]
    if len(runs) < 2:
        return {}
    n = [r["size"] for r in runs]
    out = {"fit": fit_scaling(n, [r["seconds"] for r in runs]),
           "cpu_fit": fit_scaling(n, [r["cpu_seconds"] for r in runs]),
           "rss_fit": fit_scaling(n, [r["peak_rss_mb"] for r in runs])}
    full = entry.get("full")
    if full:
        rss = (max(r["peak_rss_mb"] for r in runs) if entry.get("bounded_rss")
               else project(out["rss_fit"], full["size"]))
        out["projection"] = {**full, "seconds_one_core": round(project(out["fit"], full["size"]), 1),
                             "cpu_seconds": round(project(out["cpu_fit"], full["size"]), 1),
                             "peak_rss_mb": round(rss, 1),
                             "rss_law": "largest measured (bounded)" if entry.get("bounded_rss") else "a + b N"}
    return out


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(paths) -> str:
    """The README's cost-curve table (markdown) from cost_<system>.json files."""
    rows = ["| system / step | size unit | sizes | wall s | CPU s | peak RSS MiB | k (log-log) | b: s per unit "
            "| full-scale size | projected: wall / CPU, 1 core | projected RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        res = json.loads(Path(path).read_text())
        for name, e in res["steps"].items():
            st = STEPS.get(res["system"], {}).get(name)
            if st is not None:  # a file written before these fields were recorded: the step's own
                e = {"full": st.full, "bounded_rss": st.bounded_rss, **e}
            e = {**e, **fits(e)}
            r, p = e["runs"], e.get("projection", {})
            col = lambda key: " / ".join(_fmt(x[key]) for x in r)  # noqa: E731
            proj = (f"{_duration(p['seconds_one_core'])} / {_duration(p['cpu_seconds'])}" if p else "")
            rows.append(f"| {res['system']} / {name} | {e['unit']} | {col('size')} | {col('seconds')} | "
                        f"{col('cpu_seconds')} | {col('peak_rss_mb')} | {e['fit']['loglog_slope']:.2f} | "
                        f"{e['fit']['b_seconds_per_unit']:.3g} | {_fmt(p.get('size', float('nan')))} | {proj} | "
                        f"{_fmt(p['peak_rss_mb']) + (' (bounded)' if e.get('bounded_rss') else '') if p else ''} |")
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------ steps


@dataclass
class Step:
    unit: str
    sizes: tuple
    run: Callable[[float, Path, dict], dict]        # in the child: does the work, returns details
    setup: Callable[[float, Path, dict], None] = lambda n, work, cfg: None   # in the parent, not timed
    settings: Callable[[dict], dict] = lambda cfg: {}
    full: dict = field(default_factory=dict)        # {"size": N, "what": "..."}: the projection target
    bounded_rss: bool = False  # the step streams (strips, batches, a reservoir): memory is not projected linearly


def _cfg(path="config/config.yaml") -> dict:
    """The validated config; a .json path is a snapshot `measure` wrote (every size reads the same)."""
    if str(path).endswith(".json"):
        return json.loads(Path(path).read_text())
    from specfm.config import load

    return load(path)


def _need(path: str) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} missing: build the demo first (README command 1)")
    return Path(path)


# galaxies ---------------------------------------------------------


def _cube_path(n, work):
    return work / f"cube_{int(n)}.fits"


def _galaxies_cube_setup(n, work, cfg):
    from specfm.galaxies.bench_memory import write_synthetic_cube

    side = int(round(np.sqrt(n)))
    if not _cube_path(n, work).exists():
        write_synthetic_cube(_cube_path(n, work), side, side)


def _galaxies_binning(n, work, cfg):
    from specfm.galaxies.bench_memory import Z
    from specfm.galaxies.cube import preprocess_file

    bins = preprocess_file(_cube_path(n, work), Z, target_snr=50.0, min_snr=1.0, max_chunk_mb=32.0)
    return {"n_bins": int(bins.n_bins)}


def _galaxies_ppxf(n, work, cfg):
    from specfm.galaxies.bench import subset_bins
    from specfm.galaxies.cube import read_bins
    from specfm.galaxies.ppxf_fit import fit_bins
    from specfm.galaxies.template_table import read_template_table

    bins = read_bins(_need(DEMO["bins"]))
    idx = np.arange(int(n)) % bins.n_bins
    res = fit_bins(subset_bins(bins, idx), read_template_table(_need(DEMO["templates"])),
                   degree=cfg["galaxies"]["ppxf"]["degree"], progress=False, n_jobs=1)
    return {"n_failed": int((~res["OK"]).sum())}


def _galaxies_inference(n, work, cfg):
    from specfm.galaxies.cube import read_bins
    from specfm.galaxies.fast_inference import DEFAULT_BACKEND, predict
    from specfm.galaxies.training import load_galprote

    model, _ = load_galprote(_need(DEMO["model"]))
    spectra = np.asarray(read_bins(_need(DEMO["bins"])).spectra, np.float32)
    spectra = spectra[np.arange(int(n)) % spectra.shape[0]]
    predict(model, spectra, 256, backend=DEFAULT_BACKEND, threads=1)
    return {"backend": DEFAULT_BACKEND}


def _trainset_path(n, work):
    return work / f"trainset_{n:g}.h5"


def _galaxies_trainset(n, work, cfg):
    from specfm.galaxies.template_table import read_template_table
    from specfm.galaxies.trainset import build_training_set

    g = cfg["galaxies"]["trainset"]
    info = build_training_set(read_template_table(_need(DEMO["templates"])), _trainset_path(n, work),
                              size_factor=float(n), seed=0, **g.get("augment", {}))
    return {"counts": info["counts"], "spectra": int(sum(info["counts"].values()))}


def _galaxies_train_setup(n, work, cfg):
    if not _trainset_path(n, work).exists():
        _galaxies_trainset(n, work, cfg)


def _galaxies_train(n, work, cfg):
    from specfm.galaxies.training import train_galprote

    arch = {k: v for k, v in cfg["galaxies"]["model"].items() if k != "av_estimate"}
    t = cfg["galaxies"]["train"]
    summary = train_galprote(_trainset_path(n, work), work / f"galprote_{n:g}.pt", epochs=1, patience=None,
                             batch_size=t["batch_size"], gpu=0, seed=0, threads=1, progress=False, **arch)
    return {k: summary[k] for k in ("n_train", "n_validation", "n_params", "train_samples_per_s")}


# stars --------------------------------------------------------------


def _stars_dir(n, work):
    return work / f"stars_{int(n)}"


def _stars_features(n, work, cfg):
    import pandas as pd

    from specfm.stars.bench import random_raw, replicated_chunks
    from specfm.stars.features import build_features

    d = _stars_dir(n, work)
    d.mkdir(parents=True, exist_ok=True)
    f = cfg["stars"]["features"]
    template = random_raw(f["chunk_rows"])
    counts = build_features(replicated_chunks(pd.DataFrame(template), int(n), f["chunk_rows"]),
                            d / "features.parquet", d / "scaling.json", reservoir=f["reservoir"])
    return {"rows_out": int(counts["rows_out"]), "input": "random values in the contract's columns"}


def _stars_pretrain_setup(n, work, cfg):
    if not (_stars_dir(n, work) / "scaling.json").exists():
        _stars_features(n, work, cfg)


def _stars_pretrain(n, work, cfg):
    from specfm.stars.training import train_stage

    d, s = _stars_dir(n, work), cfg["stars"]
    summary = train_stage("pretrain", [d / "features.parquet"], d / "scaling.json", d / "msa.pt",
                          arch=s["model"], train={**s["pretrain"], "epochs": 1, "workers": 0}, seed=0, gpu=0,
                          threads=1, progress=False)
    return {"train_rows": summary["train_rows"], "n_params": summary["n_params"],
            "rows_per_second": summary["rows_per_second"]}


# redshift -------------------------------------------------------------


def _spectra_path(n, work):
    return work / f"mock_{int(n)}.h5"


def _redshift_mock(n, work, cfg):
    from specfm.redshift.steps import make_spectra

    rz = cfg["redshift"]
    make_spectra("mock", _spectra_path(n, work), grid=rz["grid"], sample="cost", seed=0,
                 inputs=[_need(DEMO["ssps"])], mock={**rz["mock"], "n_spectra": int(n)})
    return {}


def _mock_setup(n, work, cfg):
    if not _spectra_path(n, work).exists():
        _redshift_mock(n, work, cfg)


REDROCK_POOL = 2400  # the Redrock and SpecPT-prediction steps take their spectra from one mock of this size


def _redrock_setup(n, work, cfg):
    from specfm.redshift.steps import build_rr_templates

    _mock_setup(REDROCK_POOL, work, cfg)
    r = cfg["redshift"]["redrock"]
    if not (work / "rr_templates.fits").exists():
        build_rr_templates(_need(DEMO["ssps"]), work / "rr_templates.fits", n_basis=r["n_basis"],
                           n_galaxies=r["n_galaxies"], blue=r["template_blue"], seed=0)


def _redshift_redrock(n, work, cfg):
    from specfm.redshift import rrfit
    from specfm.redshift.spectra import read_meta, read_rows
    from specfm.redshift.steps import read_rr_templates, redrock_rows

    r, path = cfg["redshift"]["redrock"], _spectra_path(REDROCK_POOL, work)
    meta = read_meta(path)
    rows = redrock_rows(meta, int(n))
    if rows.size < n:
        raise ValueError(f"{path}: {rows.size} test spectra, {int(n)} asked")
    flux, ivar = read_rows(path, rows)
    rrfit.fit_full(read_rr_templates(work / "rr_templates.fits"), meta["wave"], flux, ivar, meta["targetid"][rows],
                   zmin=r["zmin"], zmax=r["zmax"], dlogz=r["dlogz"])
    return {}


def _redshift_pretrain(n, work, cfg):
    from specfm.redshift.training import train_autoencoder

    rz = cfg["redshift"]
    s = train_autoencoder(_spectra_path(n, work), work / f"ae_{int(n)}.pt", arch=rz["model"],
                          tcfg={**rz["pretrain"], "data": rz["data"], "epochs": 1}, seed=0, gpu=0, threads=1)
    return {"n_train": s["n_train"], "n_params": s["n_params"]}


def _predict_setup(n, work, cfg):
    from specfm.redshift.training import train_autoencoder, train_fold

    rz = cfg["redshift"]
    _mock_setup(REDROCK_POOL, work, cfg)
    small = _spectra_path(600, work)
    _mock_setup(600, work, cfg)
    if not (work / "fold0.pt").exists():
        train_autoencoder(small, work / "ae_setup.pt", arch=rz["model"],
                          tcfg={**rz["pretrain"], "data": rz["data"], "epochs": 1}, seed=0, gpu=0, threads=1)
        t = rz["train"]
        train_fold(small, work / "ae_setup.pt", work / "fold0.pt", fold=0, folds=rz["folds"], zarch=rz["head"],
                   tcfg={"epochs": 1, "patience": t["patience"], "batch_size": t["batch_size"], **rz["finetune"],
                         "data": rz["data"]}, seed=0, gpu=0, threads=1)


def _redshift_predict(n, work, cfg):
    import torch

    from specfm.redshift.spectra import model_input, read_rows
    from specfm.redshift.training import load_zmodel, predict_folds

    torch.set_num_threads(1)
    flux, ivar = read_rows(_spectra_path(REDROCK_POOL, work), np.arange(int(n)))
    predict_folds([load_zmodel(work / "fold0.pt")[0]], model_input(flux, ivar))
    return {"folds": 1}


# emulator -------------------------------------------------------------

EMU_RAW_PIXELS = 3000  # synthetic grids: 3,000 raw pixels over 3,900-5,100 A (the window 4,000-5,000 A + margins)


def _raw_grid_path(n, work):
    return work / f"raw_grid_{int(n)}.h5"


def _emulator_grid_setup(n, work, cfg):
    """A synthetic user grid (kind hdf5): a smooth continuum with 40 Gaussian lines per model."""
    import h5py

    path = _raw_grid_path(n, work)
    if path.exists():
        return
    rng = np.random.default_rng(0)
    wave = np.linspace(3900.0, 5100.0, EMU_RAW_PIXELS)
    labels = np.column_stack([rng.uniform(4000, 7000, n), rng.uniform(1, 5, n), rng.uniform(-2, 0.5, n)])
    centres = rng.uniform(3950, 5050, 40)
    flux = np.empty((int(n), wave.size), np.float32)
    for i in range(int(n)):
        depth = rng.uniform(0.05, 0.6, 40)
        lines = (depth[:, None] * np.exp(-0.5 * ((wave - centres[:, None]) / 1.5) ** 2)).sum(0)
        flux[i] = (wave / 4500.0) ** (-labels[i, 0] / 2000.0) * np.exp(-lines)
    with h5py.File(path, "w") as h:
        h["ids"] = np.array([f"s{i}" for i in range(int(n))], dtype="S")
        h["labels"] = labels
        h["labels"].attrs["names"] = ["teff", "logg", "fe_h"]
        h["labels"].attrs["units"] = ["K", "dex", "dex"]
        h["wavelength"] = wave
        h["flux"] = flux


def _emulator_grid(n, work, cfg):
    from specfm.emulator.steps import build_grid

    g = cfg["emulator"]["grid"]
    counts = build_grid("hdf5", [str(_raw_grid_path(n, work))], work / f"grid_{int(n)}.h5", window=g["window"],
                        margin=g["margin"], continuum=g["continuum"], max_bad_fraction=g["max_bad_fraction"],
                        split=g["split"])
    return {"counts": counts, "raw_pixels": EMU_RAW_PIXELS}


EMU_TRAIN_GRID = 1000  # the training step's grid: 1,000 synthetic models


def _emulator_train_setup(n, work, cfg):
    _emulator_grid_setup(EMU_TRAIN_GRID, work, cfg)
    if not (work / f"grid_{EMU_TRAIN_GRID}.h5").exists():
        _emulator_grid(EMU_TRAIN_GRID, work, cfg)


EMU_STEPS, EMU_PIXELS = 100, 256  # the fixed other axis of the two training curves


def _emulator_train_run(steps: int, pixels: int, work, cfg) -> dict:
    from specfm.emulator.training import train_emulator

    e = cfg["emulator"]
    train = {**e["optim"], "steps": int(steps), "eval_every": int(steps), "n_wave_train": int(pixels)}
    s = train_emulator(work / f"grid_{EMU_TRAIN_GRID}.h5", work / "tp.pt", model="transformer_payne",
                       arch=e["arch"]["transformer_payne"], train=train, mode="scratch", size="all", seed=0,
                       subset_seed=0, gpu=0, threads=1, progress=False)
    return {"steps": int(steps), "n_wave_train": int(pixels), "model": "transformer_payne",
            **{k: s[k] for k in ("n_params",) if k in s}}


def _tp_settings(cfg, **fixed):
    e = cfg["emulator"]
    return {"model": "transformer_payne", "arch": e["arch"]["transformer_payne"], **fixed,
            "batch_size": e["optim"]["batch_size"], "grid_models": EMU_TRAIN_GRID, "eval": "once, at the end"}


STEPS: dict[str, dict[str, Step]] = {
    "galaxies": {
        "binning": Step("spaxels (synthetic PHANGS-layout cube, 3,681 planes, S/N 50 bins)", (1600, 6400),
                        _galaxies_binning, _galaxies_cube_setup, bounded_rss=True,
                        full={"size": 1235 * 711, "what": "a 1235 x 711 PHANGS-MUSE mosaic (NGC 1672)"}),
        "ppxf": Step("bins (the demo's 116 mock bins, cycled)", (4, 16), _galaxies_ppxf, bounded_rss=True,
                     settings=lambda c: {"degree": c["galaxies"]["ppxf"]["degree"], "n_jobs": 1},
                     full={"size": 65000, "what": "NGC 4254's ~65,000 bins, one core"}),
        "inference": Step("spectra (the demo's bins cycled)", (4096, 32768), _galaxies_inference,
                          settings=lambda c: {"batch_size": 256, "threads": 1},
                          full={"size": 65000, "what": "NGC 4254's ~65,000 bins"}),
        "trainset": Step("size_factor (Table 1 counts x factor, 150 SSPs)", (0.05, 0.2), _galaxies_trainset,
                         settings=lambda c: {"augment": c["galaxies"]["trainset"].get("augment", {})},
                         full={"size": 1.0, "what": "size_factor 1.0 (150 SSPs; fullscale's 636 BaSTI SSPs are more)"}),
        "train": Step("size_factor of the training set (one epoch)", (0.05, 0.2), _galaxies_train,
                      _galaxies_train_setup,
                      settings=lambda c: {"model": c["galaxies"]["model"], "epochs": 1,
                                          "batch_size": c["galaxies"]["train"]["batch_size"]},
                      full={"size": 1.0, "what": "one epoch at size_factor 1.0 (fullscale: 50 epochs, channels 48)"}),
    },
    "stars": {
        "features": Step("rows (random values, streamed build)", (25000, 100000, 400000), _stars_features,
                         settings=lambda c: dict(c["stars"]["features"]), bounded_rss=True,
                         full={"size": 220e6, "what": "220 M XP sources (spread over partition jobs)"}),
        "pretrain": Step("rows in the feature table (one pretraining epoch over its train split)", (25000, 100000),
                         _stars_pretrain, _stars_pretrain_setup, bounded_rss=True,
                         settings=lambda c: {"model": c["stars"]["model"], "batch_size": c["stars"]["pretrain"]["batch_size"],
                                             "epochs": 1},
                         full={"size": 220e6, "what": "one epoch over 220 M rows (fullscale model is 11.5x larger)"}),
    },
    "redshift": {
        "mock": Step("spectra (DESI-like mocks from the E-MILES SSPs)", (600, 2400), _redshift_mock,
                     settings=lambda c: {"grid": c["redshift"]["grid"]},
                     full={"size": 200000, "what": "redshift.mock.n_spectra 200,000 (at 2.4 A; fullscale grid 0.8 A)"}),
        "redrock": Step("test spectra (full z scan)", (5, 20), _redshift_redrock, _redrock_setup,
                        settings=lambda c: {k: c["redshift"]["redrock"][k] for k in ("zmin", "zmax", "dlogz", "n_basis")},
                        full={"size": 5000, "what": "redrock.n_max 5,000 spectra"}),
        "pretrain": Step("spectra in the file (one autoencoder epoch over its train split)", (600, 2400),
                         _redshift_pretrain, _mock_setup,
                         settings=lambda c: {"model": c["redshift"]["model"],
                                             "batch_size": c["redshift"]["pretrain"]["batch_size"], "epochs": 1},
                         full={"size": 200000, "what": "one epoch over 200,000 spectra (fullscale model 1.1 B parameters)"}),
        "predict": Step("spectra (one fold model)", (600, 2400), _redshift_predict, _predict_setup,
                        full={"size": 200000, "what": "200,000 spectra, per fold"}),
    },
    "emulator": {
        "grid": Step("models (synthetic hdf5 grid, 3,000 raw pixels, continuum fit)", (500, 2000), _emulator_grid,
                     _emulator_grid_setup,
                     settings=lambda c: {k: c["emulator"]["grid"][k] for k in ("window", "margin", "continuum")},
                     full={"size": 100000, "what": "100,000 models (the paper's Korg grid; 22,315 px there)"}),
        "train_steps": Step("optimiser steps (n_wave_train 256)", (100, 400),
                            lambda n, work, cfg: _emulator_train_run(n, EMU_PIXELS, work, cfg), _emulator_train_setup,
                            settings=lambda c: _tp_settings(c, n_wave_train=EMU_PIXELS), bounded_rss=True,
                            full={"size": 1_000_000, "what": "10^6 steps (fullscale optim.steps), at 256 px per step"}),
        "train_pixels": Step("pixels per step (n_wave_train; 100 steps)", (256, 2048),
                             lambda n, work, cfg: _emulator_train_run(EMU_STEPS, n, work, cfg), _emulator_train_setup,
                             settings=lambda c: _tp_settings(c, steps=EMU_STEPS),
                             full={"size": 8192, "what": "n_wave_train 8,192 (fullscale), 100 steps"}),
    },
}


# ------------------------------------------------------------------ running


def _child(system: str, step: str, size: float, work: Path, config: str) -> dict:
    """In a fresh interpreter: run one step at one size, report its wall seconds and RSS before it."""
    import resource

    import torch

    torch.set_num_threads(1)
    cfg = _cfg(config)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    details = STEPS[system][step].run(size, work, cfg)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before_step_mb": before, "peak_rss_mb": peak_rss_mb(), "details": details}


def peak_rss_mb() -> float:
    """This process's peak resident set (MiB) since its exec: /proc/self/status VmHWM.

    Not getrusage's ru_maxrss, in this process or from the parent's wait4: Linux carries the
    high-water mark of the pre-exec image (the parent's forked copy) over exec, so a child of a
    1 GB parent reports >= 1 GB whatever it does itself."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CHILD = "import sys; from specfm.report.cost_curve import child_main; child_main(sys.argv[1:])"


def child_main(argv) -> None:
    system, step, size, work, config = argv
    print(json.dumps(_child(system, step, float(size) if "." in size or "e" in size else int(size),
                            Path(work), config)))


def _commit() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return {"commit": head, "src_modified": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "src_modified": None}


def run_size(system: str, step: str, size: float, work: Path, config: str) -> dict:
    """One child process: wall seconds of the step, the child's own peak RSS (`peak_rss_mb`) and its CPU
    seconds (os.wait4: user + system of the whole child, imports included)."""
    ckpt = work / "checkpoints"
    shutil.rmtree(ckpt, ignore_errors=True)  # never resume a previous measurement's checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "SPECFM_CHECKPOINT_DIR": str(ckpt)}
    load0 = os.getloadavg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: no pipe to fill
        # the child imports this module (not `-m`, which would run a second copy as __main__)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, system, step, repr(size), str(work), config],
                                stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (Popen.wait would hide it)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        out, err = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{system}/{step} at {size} failed:\n{err[-3000:]}")
    rec = json.loads(out.strip().splitlines()[-1])
    return {"size": size, "seconds": round(rec["seconds"], 3), "peak_rss_mb": round(rec["peak_rss_mb"], 1),
            "rss_before_step_mb": round(rec["rss_before_step_mb"], 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
            "details": rec["details"]}


def measure(system: str, steps=None, sizes=None, *, work: Path, config: str = "config/config.yaml",
            log=print, on_step=None) -> dict:
    """Every size of `steps` (default: all of the system's); ``on_step(result)`` after each step."""
    cfg = _cfg(config)
    work.mkdir(parents=True, exist_ok=True)
    snapshot = work / "config.json"  # the children read this copy: a config edited meanwhile changes nothing
    snapshot.write_text(json.dumps(cfg, default=str))
    result = {"system": system, "config": config, "work": str(work), **_commit(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "how": "one fresh interpreter per size, 1 thread; seconds: the step only; peak_rss_mb: the whole "
                     "process (VmHWM), imports included; cpu_seconds: the whole process (os.wait4)", "steps": {}}
    for name in steps or STEPS[system]:
        st = STEPS[system][name]
        chosen = sorted(float(s) for s in (sizes or st.sizes))
        runs = []
        for n in chosen:
            n = int(n) if float(n).is_integer() and n >= 1 else n
            st.setup(n, work, cfg)
            runs.append(run_size(system, name, n, work, str(snapshot)))
            log(f"{system}/{name} {n}: {runs[-1]['seconds']:.2f} s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MiB")
        check_monotone(runs)
        entry = {"unit": st.unit, "settings": st.settings(cfg), "runs": runs, "bounded_rss": st.bounded_rss,
                 "full": st.full}
        result["steps"][name] = {**entry, **fits(entry)}
        if on_step:
            on_step(result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specfm.report.cost_curve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=[*STEPS, "all"])
    ap.add_argument("--step", nargs="+", help="steps of the system (default: all of them)")
    ap.add_argument("--sizes", nargs="+", type=float, help="input sizes (default: the step's own)")
    ap.add_argument("--work", default="results/bench/cost_work", help="inputs built for the runs (reused)")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--out-dir", default="results/bench")
    ap.add_argument("--table", action="store_true", help="print the README table from the out-dir's JSON files")
    args = ap.parse_args(argv)
    if args.table:
        print(table(sorted(Path(args.out_dir).glob("cost_*.json"))))
        return 0
    if not args.system:
        ap.error("--system is required")
    from specfm.io import write_json_atomic

    for system in STEPS if args.system == "all" else [args.system]:
        out = Path(args.out_dir) / f"cost_{system}.json"
        old = json.loads(out.read_text()).get("steps", {}) if args.step and out.exists() else {}

        def write(res, out=out, old=old):  # after every step, so an interrupted run keeps what it measured
            write_json_atomic(out, {**res, "steps": {**old, **res["steps"]}})

        measure(system, args.step, args.sizes, work=Path(args.work) / system, config=args.config, on_step=write)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
