"""Workflow steps of the emulator stage: read files, call the library, write a product and its
provenance record. The rule scripts call these and nothing else."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from specfm import provenance
from specfm.fetch.sources import manifest_files
from specfm.io import atomic_path, write_json_atomic

from .grid import GridError, read

log = logging.getLogger("specfm.emulator")

GRID_CODE = ["specfm.emulator.grid", "specfm.emulator.build", "specfm.emulator.continuum",
             "specfm.emulator.miles", "specfm.emulator.user_grid", "specfm.emulator.fits_grid",
             "specfm.emulator.phoenix", "specfm.emulator.resample", "specfm.fetch.grid_source",
             "specfm.emulator.steps", "specfm.io"]
MODEL_CODE = [*GRID_CODE, "specfm.train", "specfm.emulator.models", "specfm.emulator.payne",
              "specfm.emulator.bigpayne", "specfm.emulator.conv", "specfm.emulator.transformer_payne",
              "specfm.emulator.schedule", "specfm.emulator.training"]
INFER_CODE = [*MODEL_CODE, "specfm.emulator.inference"]
EVAL_CODE = [*INFER_CODE, "specfm.emulator.scores", "specfm.emulator.figures"]
BENCH_CODE = [*MODEL_CODE, "specfm.emulator.bench"]


def _named(prefix, paths) -> dict:
    return {f"{prefix}{i}": str(p) for i, p in enumerate(paths)}


def _checked_grid_files(paths: list[str], pin: dict) -> list[str]:
    """Each file of an http_grid source against its lock entry (key SOURCE/FILENAME), as every reader
    of a declared source does: a file placed or edited by hand is never used silently."""
    from specfm.fetch.grid_source import grid_lock_key
    from specfm.fetch.sources import checked_source_file

    return [str(checked_source_file(p, {"lock_path": pin["lock_path"],
                                        "lock_key": grid_lock_key(pin["source"], Path(p).name)}))
            for p in paths]


def read_raw_grid(kind: str, inputs: list[str], *, window, margin: float, max_spectra=None,
                  medium: str = "air", pin: dict | None = None):
    """(raw Grid, source text, error kind) of one grid kind. Kind phoenix: inputs[0] is the
    wavelength file, the rest one file per point."""
    if kind == "miles":
        from .miles import read_miles

        return read_miles(manifest_files(inputs[0]), max_spectra), "sdss-mangadap 4.5.0 MILES", None
    if kind == "phoenix":
        from .phoenix import read_phoenix

        files = inputs[: 1 + max_spectra] if max_spectra else inputs
        files = _checked_grid_files(files, pin) if pin else files
        raw = read_phoenix(files[0], files[1:], window=window, margin=margin, medium=medium)
        return raw, f"PHOENIX-ACES ({len(files) - 1} files of {Path(files[0]).parent})", None
    if kind not in ("hdf5", "fits"):
        raise GridError(f"emulator.grid.kind: unknown grid kind {kind!r} (miles, hdf5, fits, phoenix)")
    if kind == "hdf5":
        from .user_grid import read_user_grid as reader
    else:
        from .fits_grid import read_fits_grid as reader
    raw = reader(inputs[0])
    if max_spectra:
        raw.ids, raw.labels, raw.flux = raw.ids[:max_spectra], raw.labels[:max_spectra], raw.flux[:max_spectra]
        raw.flux_error = None if raw.flux_error is None else raw.flux_error[:max_spectra]
    return raw, str(inputs[0]), "given" if raw.flux_error is not None else None


def build_grid(kind: str, inputs: list[str], out, *, window, margin: float, continuum: dict,
               max_bad_fraction: float, split: dict, max_spectra=None, normalised: bool = False,
               n_pixels: int | None = None, medium: str = "air", pin: dict | None = None,
               code_files=()) -> dict:
    """A `miles` (unpacked manifest), `hdf5` / `fits` (user file) or `phoenix` (fetched files,
    checked against `pin`: {lock_path, source}) grid -> the HDF5 layout."""
    from .build import finish
    from .grid import write

    raw, source, error_kind = read_raw_grid(kind, inputs, window=window, margin=margin,
                                            max_spectra=max_spectra, medium=medium, pin=pin)
    grid = finish(raw, window=window, margin=margin, continuum=None if normalised else continuum,
                  max_bad_fraction=max_bad_fraction, split=split, error_kind=error_kind,
                  source=source, kind=kind, n_pixels=n_pixels)
    write(grid, out)
    params = {"kind": kind, "window": window, "margin": margin, "continuum": continuum,
              "max_bad_fraction": max_bad_fraction, "split": split, "max_spectra": max_spectra,
              "n_pixels": n_pixels, "medium": medium if kind == "phoenix" else None}
    provenance.write(out, inputs=_named("input", inputs), params=params, code=GRID_CODE,
                     code_files=code_files, step="emulator_grid")
    return grid.attrs["counts"]


def train(grid, out, *, model: str, arch: dict, train: dict, mode: str, size, seed: int,
          subset_seed: int, log_labels, domain=None, init=None, gpu: int = 0, threads=None,
          code_files=()) -> dict:
    from .training import train_emulator

    summary = train_emulator(grid, out, model=model, arch=arch, train=train, mode=mode, size=size,
                             seed=seed, subset_seed=subset_seed, log_labels=log_labels,
                             domain=domain, init=init, gpu=gpu, threads=threads)
    provenance.write(out, inputs={"grid": grid, **({"pretrained": init} if init else {})},
                     params={"model": model, "arch": arch, "train": train, "mode": mode, "size": size,
                             "subset_seed": subset_seed, "log_labels": list(log_labels),
                             "domain": domain}, seed=seed, code=MODEL_CODE, code_files=code_files,
                     step=f"emulator_{mode}")
    return summary


def inference_stars(grid, settings: dict) -> np.ndarray:
    """The held-out (test) stars to fit: inside settings['domain'], the first n_stars by id."""
    from .grid import domain_rows

    rows = grid.rows("test")
    if settings.get("domain"):
        rows = domain_rows(grid, rows, settings["domain"], "emulator.inference.domain")
    return rows[: settings["n_stars"]]


def device_name(device) -> str:
    """The device a product was measured on, e.g. "cuda:0 (NVIDIA H200)" or "cpu (8 threads)":
    a throughput or seconds-per-star number means nothing without it."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def infer(grid_path, model_path, out, *, settings: dict, seed: int, gpu: int = 0, threads=None,
          code_files=()) -> dict:
    """Fit the labels of held-out stars through one emulator -> a Parquet table (one row per star),
    on the GPU when the rule was granted one (choose_device, as training)."""
    import pandas as pd
    import torch

    from specfm.train import choose_device

    from .inference import fit_labels, summarise
    from .training import load_emulator

    if threads:
        torch.set_num_threads(threads)
    grid = read(grid_path)
    emu, meta = load_emulator(model_path)
    device = choose_device(gpu)
    rows = inference_stars(grid, settings)
    weight = np.isfinite(grid.flux_error[rows]).astype(np.float32) if grid.flux_error is not None \
        else np.ones(grid.flux[rows].shape, np.float32)
    fitted, mse, seconds = fit_labels(emu, grid.flux[rows], weight, restarts=settings["restarts"],
                                      steps=settings["steps"], lr=settings["lr"],
                                      clip=settings["clip"], warmup=settings["warmup"], seed=seed,
                                      device=device, batch=settings["batch"])
    table = pd.DataFrame({"id": grid.ids[rows].astype(str), "fit_mse": mse})
    for j, name in enumerate(grid.label_names):
        table[f"{name}_true"] = grid.labels[rows, j]
        table[f"{name}_fit"] = fitted[:, j]
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    summary = {"model": meta["model"], "device": device_name(device), "n_stars": int(len(rows)),
               "seconds": seconds,
               "seconds_per_star": seconds / max(len(rows), 1),
               "labels": summarise(grid.labels[rows], fitted, grid.label_names)}
    log.info("inference %s: %s", model_path, summary)
    provenance.write(out, inputs={"grid": grid_path, "model": model_path},
                     params={"settings": settings, "summary": summary}, seed=seed,
                     code=INFER_CODE, code_files=code_files, step="emulator_infer")
    return summary


_RUN = re.compile(r"(?P<model>[a-z_]+)/(?P<mode>scratch|finetune)_n(?P<size>\w+)_s(?P<seed>\d+)\.pt$")


def _test_predictions(grid, model_path):
    import torch

    from .training import load_emulator

    emu, meta = load_emulator(model_path)
    rows = grid.rows("test")
    with torch.no_grad():
        pred = emu.predict(emu.scale(torch.as_tensor(grid.labels[rows], dtype=torch.float32))).numpy()
    return pred, meta


def score_runs(grid, models: list[str]) -> tuple[dict, list[dict], dict]:
    """(mean-spectrum scores, one record per trained run, the largest scratch run per model with
    its test predictions): every score of the stage comes from the same held-out split."""
    from .scores import scores

    test, train_rows = grid.rows("test"), grid.rows("train")
    err = grid.flux_error[test] if grid.flux_error is not None else None
    mask = grid.pixel_mask[test] if grid.pixel_mask is not None else None
    mean_scores = scores(np.broadcast_to(grid.flux[train_rows].mean(0), grid.flux[test].shape),
                         grid.flux[test], err, mask)
    runs, largest = [], {}
    for path in models:
        m = _RUN.search(Path(path).as_posix())
        pred, meta = _test_predictions(grid, path)
        s = meta["summary"]
        run = {"model": s["model"], "mode": s["mode"], "size": m["size"], "seed": int(m["seed"]),
               "n_train": s["n_train"], "n_params": s["n_params"], "steps": s["steps"],
               "train_seconds": s["seconds"], "best_val_mse": s["best_val_mse"],
               "history": s["history"], "test": scores(pred, grid.flux[test], err, mask),
               "path": str(path)}
        runs.append(run)
        best = largest.get(run["model"])
        if run["mode"] == "scratch" and (best is None or run["n_train"] > best["run"]["n_train"]):
            largest[run["model"]] = {"run": run, "pred": pred}
        log.info("%s: test %s", path, run["test"])
    return mean_scores, runs, largest


def draw_figures(grid, runs: list[dict], largest: dict, mean_scores: dict, ft: list[dict],
                 figure_paths: dict) -> float:
    """The Figs 1, 4-8 analogues from the scored runs -> the median residual correlation."""
    from . import figures

    test = grid.rows("test")
    preds = {k: v["pred"] for k, v in largest.items()}
    residuals = {k: p - grid.flux[test] for k, p in preds.items()}
    figures.vs_size(runs, mean_scores, figure_paths["vs_size"])
    figures.vs_steps([v["run"] for v in largest.values()], figure_paths["vs_steps"])
    figures.residual_bands(grid.wavelength, residuals, figure_paths["residuals"])
    star = 0
    figures.example_spectrum(grid.wavelength, grid.flux[test[star]],
                             {k: v[star] for k, v in preds.items()}, str(grid.ids[test[star]]),
                             figure_paths["example"])
    corr = figures.correlation(grid.wavelength, residuals, figure_paths["correlation"])
    figures.finetune(ft, figure_paths["finetune"])
    return corr


def collect_inference(grid, inference: list[str], figure_path, summary_csv) -> dict:
    """The per-model inference summaries (from each table's provenance record), their figure and
    the summary CSV -> {model: summary}."""
    import pandas as pd

    from . import figures

    inf, tables = {}, {}
    for path in inference:
        name = re.sub(r"_n\w+_s\d+\.parquet$", "", Path(path).name)
        tables[name] = pd.read_parquet(path)
        inf[name] = json.loads(Path(str(path) + ".prov.json").read_text())["params"]["summary"]
    figures.inference(tables, grid.label_names, figure_path)
    write_summary_csv(inf, summary_csv)
    return inf


def evaluate(grid_path, models: list[str], inference: list[str], metrics_out, figure_paths: dict,
             summary_csv, *, headline_model: str, sizes, finetune_sizes, targets: dict,
             threads=None, code_files=()) -> dict:
    """Held-out scores of every trained emulator, the figures, and metrics.json with a headline."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    grid = read(grid_path)
    mean_scores, runs, largest = score_runs(grid, models)
    ft = finetune_rows(runs)
    corr = draw_figures(grid, runs, largest, mean_scores, ft, figure_paths)
    inf = collect_inference(grid, inference, figure_paths["inference"], summary_csv)
    largest_runs = {k: v["run"] for k, v in largest.items()}
    metrics = {"grid": {**grid.attrs["counts"], "n_wave": int(len(grid.wavelength)),
                        "window": grid.attrs.get("window"), "kind": grid.attrs.get("kind"),
                        "flux_error_kind": grid.attrs.get("flux_error_kind")},
               "mean_spectrum": mean_scores, "runs": runs, "finetune_vs_scratch": ft,
               "residual_correlation_median": corr, "inference": inf,
               "headline": headline(largest_runs, ft, inf, mean_scores, headline_model, targets,
                                    grid.attrs.get("flux_error_kind"))}
    write_json_atomic(metrics_out, metrics)
    for product in (metrics_out, summary_csv, *figure_paths.values()):
        provenance.write(product, inputs={"grid": grid_path, **_named("model", models),
                                          **_named("inference", inference)},
                         params={"sizes": sizes, "finetune_sizes": finetune_sizes}, code=EVAL_CODE,
                         code_files=code_files, step="emulator_metrics")
    return metrics


def finetune_rows(runs: list[dict]) -> list[dict]:
    out = []
    for ft in (r for r in runs if r["mode"] == "finetune"):
        sc = [r for r in runs if r["mode"] == "scratch" and r["model"] == ft["model"]
              and r["n_train"] == ft["n_train"] and r["seed"] == ft["seed"]]
        if sc:
            out.append({"model": ft["model"], "n_train": ft["n_train"], "seed": ft["seed"],
                        "scratch": sc[0]["test"], "finetune": ft["test"],
                        "mae_ratio": ft["test"]["mae"] / sc[0]["test"]["mae"]})
    return sorted(out, key=lambda r: (r["model"], r["n_train"]))


def write_summary_csv(inf: dict, path) -> None:
    import pandas as pd

    rows = [{"model": m, "label": lab, **v, "seconds_per_star": rec["seconds_per_star"]}
            for m, rec in inf.items() for lab, v in rec["labels"].items()]
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def claim(metric: str, value, reference: str, reference_value, target) -> dict:
    """One headline entry; with a target (an upper bound: lower is better for every emulator
    score) it also says whether the target was `met` and by how much (`ratio` = value / target,
    < 1 when met), so a missed paper claim shows in metrics.json, not only in a figure."""
    entry = {"metric": metric, "value": value, "reference": reference,
             "reference_value": reference_value, "target": target}
    if target is not None:
        known = value is not None and target != 0
        entry["met"] = bool(value <= target) if value is not None else None
        entry["ratio"] = float(value / target) if known else None
    return entry


def _beats_baselines(largest: dict, model: str) -> list[dict]:
    """Claim 1 (paper): at the largest size the model beats The Payne and BigPayne on MAE and
    MAQE_0.95; the target is the baseline's own score, so `ratio` < 1 means it beat it."""
    tp, out = largest[model], []
    for ref in ("bigpayne", "payne"):
        for key in ("mae", "maqe_0.95") if ref in largest else ():
            ref_value = largest[ref]["test"][key]
            out.append(claim(f"{model} test {key} (n={tp['n_train']})", tp["test"][key],
                             f"{ref} at the same size", ref_value, ref_value))
    return out


def _finetune_beats_scratch(ft: list[dict], model: str) -> list[dict]:
    """Claim 2 (paper): at the smallest fine-tuning size the fine-tuned model's MAE is below the
    same model trained from scratch on the same spectra (target: the scratch MAE)."""
    small = [r for r in ft if r["model"] == model]
    if not small:
        return []
    r = min(small, key=lambda r: r["n_train"])
    return [claim(f"{model} fine-tuned test mae (n={r['n_train']})", r["finetune"]["mae"],
                  "trained from scratch at the same size", r["scratch"]["mae"], r["scratch"]["mae"])]


def _inference_scatter(inf: dict, model: str, targets: dict) -> list[dict]:
    """Issue 9's inference targets: per label scatter against the catalogue <= targets[label]."""
    out = []
    for name, rec in inf.items():
        if name != model:
            continue
        for lab, v in rec["labels"].items():
            out.append(claim(f"{model} inference {lab} scatter ({v['n']} held-out stars)", v["scatter"],
                             "catalogue labels (MILES_params.db)", None, targets.get(lab)))
        out.append(claim(f"{model} inference seconds per star", rec["seconds_per_star"], "", None, None))
    return out


ERROR_WORDS = {"der_snr": "the DER_SNR noise estimates (one per star)", "given": "the grid's flux errors"}


def headline(largest: dict, ft: list[dict], inf: dict, mean_scores: dict, model: str, targets: dict,
             error_kind: str | None = "given") -> list[dict]:
    """The few numbers the report shows: the paper's two claims, inference scatter, noise floor.
    error_kind (the grid's flux_error_kind) names what chi2 is against: MILES has no flux errors,
    so there it is a DER_SNR estimate, and the row must not claim real errors."""
    out = []
    tp = largest.get(model)
    if tp:
        out += _beats_baselines(largest, model)
        against = ERROR_WORDS.get(error_kind, "the flux errors")
        out.append(claim(f"{model} chi2 per pixel against {against}", tp["test"].get("chi2_per_pixel"),
                         "the noise floor", 1.0, None))
        out.append(claim(f"{model} test mae vs the grid's mean spectrum", tp["test"]["mae"],
                         "mean spectrum of the training split", mean_scores["mae"], mean_scores["mae"]))
    return out + _finetune_beats_scratch(ft, model) + _inference_scatter(inf, model, targets)


def bench(models: list[str], out, *, batch: int, min_seconds: float, gpu: int = 0, threads=None,
          code_files=()) -> dict:
    """spectra/s of each emulator (one run, batched, full grid) -> results/bench/emulator_speed.json,
    on the GPU when the rule was granted one, with the device it was measured on."""
    import torch

    from specfm.train import choose_device

    from .bench import spectra_per_second
    from .training import load_emulator

    if threads:
        torch.set_num_threads(threads)
    device, result = choose_device(gpu), {}
    for path in models:
        emu, meta = load_emulator(path)
        result[meta["model"]] = {**spectra_per_second(emu, len(meta["lo"]), batch=batch,
                                                      min_seconds=min_seconds, device=device),
                                 "n_params": meta["summary"]["n_params"], "model_file": str(path)}
        log.info("%s: %.1f spectra/s", meta["model"], result[meta["model"]]["spectra_per_second"])
    write_json_atomic(out, {"device": device_name(device), "models": result})
    return result
