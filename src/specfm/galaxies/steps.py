"""Workflow steps of the galaxies stage: each reads files, calls the library, writes a product
and its provenance record. The rule scripts call these and nothing else."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from specfm import provenance
from specfm.fetch.sources import checked_source_file, manifest_files

from .template_table import plot_templates, prepare_templates, read_template_table, write_template_table

log = logging.getLogger(__name__)

# The modules whose source enters the code digest of the template products (not the whole
# sub-package: a change to the model must not invalidate the template grid).
CODE = ["specfm.galaxies.templates", "specfm.galaxies.spectra", "specfm.galaxies.template_table",
        "specfm.galaxies.steps", "specfm.io", "specfm.fetch.sources"]


def build_templates(manifest: str | Path, out: str | Path, *, code_files=()) -> None:
    """SSP files listed (and checksum-verified) by `manifest` -> processed template grid (HDF5)."""
    paths = manifest_files(manifest, "*.fits")
    if not paths:
        raise ValueError(f"{manifest}: lists no .fits SSP files")
    log.info("processing %d SSP files from %s", len(paths), manifest)
    start = time.perf_counter()
    grid = prepare_templates(paths)
    write_template_table(grid, out)
    log.info("wrote %s: %d [M/H] x %d ages x %d px (%d kept by the emission mask) in %.1f s", out,
             *grid.flux.shape, int(grid.mask.sum()), time.perf_counter() - start)
    provenance.write(out, inputs={"manifest": manifest}, code=CODE, code_files=code_files,
                     params={"grid": "paper", "lsf": grid.meta["fwhm_out"]}, step="galaxies_templates")


def templates_figure(table: str | Path, out: str | Path, *, code_files=()) -> None:
    grid = read_template_table(table)
    plot_templates(grid, out)
    log.info("wrote %s", out)
    provenance.write(out, inputs={"templates": table}, code=CODE, code_files=code_files,
                     step="galaxies_templates_figure")


def mock_cube(manifest: str | Path, out_cube: str | Path, out_truth: str | Path, *, shape, snr_center: float,
              seed: int, redshift: float, code_files=()) -> None:
    """A mock MUSE cube with known truth maps, from the raw SSP files of `manifest`."""
    from .mock_cube import make_mock_cube

    paths = manifest_files(manifest, "*.fits")
    start = time.perf_counter()
    make_mock_cube(paths, out_cube, out_truth, shape=tuple(shape), seed=seed, redshift=redshift,
                   snr_center=snr_center)
    log.info("wrote mock cube %s and truth %s (%s spaxels, z=%g, seed %d) in %.1f s", out_cube, out_truth,
             "x".join(map(str, shape)), redshift, seed, time.perf_counter() - start)
    params = {"shape": list(shape), "snr_center": snr_center, "redshift": redshift}
    code = [*CODE, "specfm.galaxies.mock_cube", "specfm.galaxies.cube_io"]
    for out in (out_cube, out_truth):
        provenance.write(out, inputs={"manifest": manifest}, params=params, seed=seed, code=code,
                         code_files=code_files, step="galaxies_mock_cube")


def bin_cube(cube_path: str | Path, out: str | Path, *, redshift: float, target_snr: float, min_snr: float,
             kind: str = "phangs", source_pin: dict | None = None, code_files=()) -> None:
    """IFU cube -> de-redshifted, masked, Voronoi-binned spectra on the paper grid (HDF5).

    ``kind``: the file layout, "phangs" (also the mock's) or "manga" (`specfm.galaxies.manga`).
    ``source_pin``: a fetched cube's pin, checked before use (`fetch.sources.checked_source_file`);
    None for a cube the workflow built (the mock)."""
    from .cube import preprocess_file, write_bins

    checked_source_file(cube_path, source_pin)
    start = time.perf_counter()
    bins = preprocess_file(cube_path, redshift, target_snr=target_snr, min_snr=min_snr, kind=kind)  # in strips
    write_bins(bins, out)
    log.info("binned %s: %d bins from %d spaxels (target S/N %g) in %.1f s", cube_path, bins.n_bins,
             int((bins.bin_id >= 0).sum()), target_snr, time.perf_counter() - start)
    params = {"redshift": redshift, "target_snr": target_snr, "min_snr": min_snr}
    if kind != "phangs":
        params["kind"] = kind
    code = [*CODE, "specfm.galaxies.cube", "specfm.galaxies.cube_io", "specfm.galaxies.preprocessing"]
    if kind == "manga":
        code.append("specfm.galaxies.manga")
    provenance.write(out, inputs={"cube": cube_path}, code=code, code_files=code_files, params=params,
                     step="galaxies_bin")


# ------------------------------------------------------------------ training set, model, maps
MODEL_CODE = [*CODE, "specfm.galaxies.trainset", "specfm.galaxies.model", "specfm.galaxies.training", "specfm.train"]


def training_set(templates_path: str | Path, out: str | Path, *, size_factor: float, seed: int,
                 augment: dict | None = None, extended: float = 0.0, sfh: float = 0.0, code_files=()) -> None:
    """Templates -> GalProTE training set (Table 1 recipe; train/validation/test/test_unseen), with the
    ``augment`` fields of `trainset.Recipe` (kinematics, continuum tilt) where given, and ``extended`` /
    ``sfh`` x n_t extended populations / star-formation histories per A_V level."""
    from .trainset import build_training_set

    start = time.perf_counter()
    augment = dict(augment or {})
    info = build_training_set(read_template_table(templates_path), out, size_factor=size_factor, seed=seed,
                              extended=extended, sfh=sfh, **augment)
    log.info("wrote %s: %s spectra per split in %.1f s", out, info["counts"], time.perf_counter() - start)
    beyond = {k: v for k, v in (("extended", extended), ("sfh", sfh)) if v}
    params = {"size_factor": size_factor, **augment, **beyond}
    provenance.write(out, inputs={"templates": templates_path}, params=params,
                     seed=seed,
                     code=MODEL_CODE, code_files=code_files, step="galaxies_training_set")


def train_model(trainset_path: str | Path, out: str | Path, metrics_out: str | Path, *, train: dict, arch: dict,
                seed: int, threads: int, gpu: int, predictions_out: str | Path | None = None,
                see_also: dict | None = None, code_files=()) -> None:
    """Train GalProTE (checkpointed, resumable) and score it on the synthetic test splits.

    ``gpu`` is the number granted to the job (0 = CPU); it does not change the model, so it is not
    a parameter of the product. ``predictions_out``: also keep the per-spectrum predictions the
    scores come from (HDF5, `training.write_predictions`) for the figures. ``see_also``: related
    products (name -> path) recorded in the metrics JSON, e.g. the attention ablation."""
    from specfm.io import write_json_atomic

    from .training import load_galprote, metrics_from_predictions, synthetic_predictions, train_galprote, \
        write_predictions

    summary = train_galprote(trainset_path, out, epochs=train["epochs"], patience=train["patience"],
                             batch_size=train["batch_size"], gpu=gpu, seed=seed, threads=threads,
                             log=log, **arch)
    model, meta = load_galprote(out)
    predictions = synthetic_predictions(model, trainset_path)
    scores = metrics_from_predictions(predictions)
    record = {"training": summary, "model": meta["config"], "synthetic": scores}
    if see_also:
        record["see_also"] = dict(see_also)
    write_json_atomic(metrics_out, record)
    log.info("synthetic scores: %s", scores)
    products = [out, metrics_out]
    if predictions_out is not None:
        write_predictions(predictions_out, predictions, log_age=meta["log_age"], mh=meta["mh"],
                          av_levels=meta["av_levels"])
        products.append(predictions_out)
    params = {"train": train, "arch": arch}
    for product in products:
        provenance.write(product, inputs={"trainset": trainset_path}, params=params, seed=seed, code=MODEL_CODE,
                         code_files=code_files, step="galaxies_train")


def synthetic_figures(predictions_path: str | Path, split: str, figures: dict, *, code_files=()) -> None:
    """The paper's Figures 8-12 for one synthetic split, from the predictions training kept."""
    from .figures import plot_synthetic
    from .training import read_predictions

    predictions, axes = read_predictions(predictions_path)
    if split not in predictions:
        raise ValueError(f"{predictions_path}: no split {split!r} (has {sorted(predictions)})")
    plot_synthetic(predictions[split], axes, figures, split=split)
    log.info("wrote %d synthetic figures of split %s", len(figures), split)
    for product in figures.values():
        provenance.write(product, inputs={"predictions": predictions_path}, params={"split": split},
                         code=[*MODEL_CODE, "specfm.galaxies.figures"], code_files=code_files,
                         step="galaxies_synthetic_figures")


def ablation_summary(variant_metrics: dict, out: str | Path, *, chosen: str, budget: dict,
                     code_files=()) -> dict:
    """One JSON comparing the attention variants (name -> metrics JSON of `train_model`), same budget."""
    import json

    from specfm.io import write_json_atomic

    from .training import ablation_table

    records = {name: json.loads(Path(path).read_text()) for name, path in variant_metrics.items()}
    summary = ablation_table(records, chosen=chosen, budget=budget)
    write_json_atomic(out, summary)
    log.info("attention ablation: %s", summary["table"])
    provenance.write(out, inputs={f"metrics_{k}": v for k, v in variant_metrics.items()},
                     params={"chosen": chosen, "budget": budget}, code=MODEL_CODE, code_files=code_files,
                     step="galaxies_ablation")
    return summary


def model_maps(bins_path: str | Path, model_path: str | Path, templates_path: str | Path, out: str | Path, *,
               clip_frac: float, inference: dict | None = None, estimate: str = "grid", code_files=()) -> dict:
    """Per-bin GalProTE grids -> LOGAGE / MH / AV / residual maps (FITS with the cube's WCS).

    ``inference``: `fast_inference.predict` keywords (backend, threads, batch_size; None: its defaults);
    ``estimate``: what LOGAGE / MH / AV show (`fast_inference.estimates`: the grid, or the mean head); the
    residuals are always the grid's."""
    import numpy as np

    from .cube import read_bins
    from .maps import write_maps
    from .fast_inference import estimates
    from .training import load_galprote, reconstruct

    bins = read_bins(bins_path)
    templates = read_template_table(templates_path)
    model, meta = load_galprote(model_path)
    start = time.perf_counter()
    est = estimates(model, bins.spectra, templates.log_age, templates.mh, frac=clip_frac, estimate=estimate,
                    inference=inference)
    seconds = time.perf_counter() - start
    weights, logage, mh, av = est["weights"], est["log_age"], est["mh"], est["av"]
    resid = bins.spectra - reconstruct(templates, weights, est["av_grid"])
    log.info("GalProTE on %d bins of %s: %.3g s (%.3g ms per spectrum)", bins.n_bins, bins_path, seconds,
             1e3 * seconds / max(bins.n_bins, 1))
    quantities = {"LOGAGE": (logage, "log10(yr)"), "MH": (mh, "dex"), "AV": (av, "mag"),
                  "RESID_MEAN": (resid.mean(axis=1), ""), "RESID_STD": (resid.std(axis=1), ""),
                  "SNR": (bins.snr, "")}
    write_maps(out, bin_id=bins.bin_id, wcs_header=bins.wcs_header, quantities=quantities, grids=weights,
               grid_axes=(templates.log_age, templates.mh),
               meta={"method": "GalProTE", "clip_frac": clip_frac, "model_trainset_id": meta.get("trainset_id", ""),
                     **beyond_paper(estimate)})
    provenance.write(out, inputs={"bins": bins_path, "model": model_path, "templates": templates_path},
                     params={"clip_frac": clip_frac, "inference": inference or {}, **beyond_paper(estimate)},
                     code=[*MODEL_CODE, "specfm.galaxies.maps", "specfm.galaxies.fast_inference"],
                     code_files=code_files, step="galaxies_predict")
    return {"seconds_per_spectrum": seconds / max(bins.n_bins, 1)}


def beyond_paper(estimate: str) -> dict:
    """{"estimate": ...} where the maps do not show the paper's grid estimate, else nothing: a product of
    the paper's path keeps the bytes it had before the option existed."""
    return {} if estimate == "grid" else {"estimate": estimate}


def ppxf_maps(bins_path: str | Path, templates_path: str | Path, out: str | Path, *, degree: int, n_jobs: int,
              code_files=()) -> None:
    """The pPXF baseline on the same bins with the same templates, in the same maps layout."""
    from .cube import read_bins
    from .ppxf_fit import fit_bins, write_ppxf_maps

    bins = read_bins(bins_path)
    templates = read_template_table(templates_path)
    result = fit_bins(bins, templates, degree=degree, n_jobs=n_jobs)
    log.info("pPXF on %d bins: %.3g s per spectrum, %d failed", bins.n_bins,
             result["meta"]["seconds_per_spectrum"], int((~result["OK"]).sum()))
    write_ppxf_maps(out, bins, templates, result)
    provenance.write(out, inputs={"bins": bins_path, "templates": templates_path}, params={"degree": degree},
                     code=[*CODE, "specfm.galaxies.ppxf_fit", "specfm.galaxies.maps", "specfm.galaxies.cube"],
                     code_files=code_files, step="galaxies_ppxf")


def published_for(maps_path: str | Path, model_maps, *, units: dict | None = None, rv: float | None = None) -> dict:
    """The published PHANGS maps of ``maps_path`` on ``model_maps``' bins, in ``compare_maps``' form;
    {"available": False, "reason": ...} (and a warning) when the file has no stellar-population map."""
    import numpy as np

    from .phangs import RV_DEFAULT, NoStellarPopulations, published_per_bin, read_published_maps

    rv = RV_DEFAULT if rv is None else rv
    try:
        pub = read_published_maps(maps_path, units=units, rv=rv)
    except NoStellarPopulations as exc:
        log.warning("%s", exc)
        return {"available": False, "reason": str(exc), "source": Path(maps_path).name}
    values = published_per_bin(pub, model_maps)
    covered = {q: int(np.isfinite(v).sum()) for q, v in values.items()}
    if not any(covered.values()):
        raise ValueError(f"{maps_path}: the published maps have no value on any of our bins "
                         "(no sky overlap with the cube: another galaxy's file?)")
    return {"available": True, "source": Path(maps_path).name, "extensions": pub.extensions, "rv": rv,
            "per_bin": "mean over the spaxels of each of our bins (nearest published pixel)",
            "n_bins_covered": covered, "values": values}


def compare(model_path: str | Path, ppxf_path: str | Path, truth_path: str | Path | None, bench_path: str | Path,
            metrics_out: str | Path, figures: dict, *, published_path: str | Path | None = None,
            maps_units: dict | None = None, published_pin: dict | None = None, code_files=()) -> None:
    """Model vs pPXF (and vs truth for a mock, vs the published PHANGS maps for a real galaxy):
    metrics JSON and the map / difference / residual figures. ``published_pin``: the pin of the
    published maps' source, checked before they are read (`fetch.sources.checked_source_file`)."""
    import json

    from specfm.io import write_json_atomic

    from .compare import compare_maps, plot_map_panels, plot_residual_histograms, plot_running_differences
    from .maps import read_maps

    if published_path:
        checked_source_file(published_path, published_pin)
    model, ppxf = read_maps(model_path), read_maps(ppxf_path)
    truth = None
    if truth_path:
        from .mock_cube import read_truth

        truth = read_truth(truth_path)
    published = published_for(published_path, model, units=maps_units) if published_path else None
    timing = json.loads(Path(bench_path).read_text())
    metrics = compare_maps(model, ppxf, truth, timing=timing, published=published)
    write_json_atomic(metrics_out, metrics)
    plot_map_panels(model, ppxf, figures["panels"], truth=truth, published=published)
    plot_running_differences(model, ppxf, figures["running"], truth=truth, published=published)
    plot_residual_histograms(model, ppxf, figures["residuals"])
    log.info("compared %s with %s (reference: %s); speed ratio %.0f", model_path, ppxf_path, metrics["reference"],
             metrics["speed_ratio"])
    inputs = {"model_maps": model_path, "ppxf_maps": ppxf_path, "bench": bench_path}
    if truth_path:
        inputs["truth"] = truth_path
    if published_path:
        inputs["published"] = published_path
    for product in (metrics_out, *figures.values()):
        provenance.write(product, inputs=inputs, params={"maps_units": maps_units or {}},
                         code=[*CODE, "specfm.galaxies.compare", "specfm.galaxies.maps", "specfm.galaxies.phangs"],
                         code_files=code_files, step="galaxies_compare")


def bench(model_path: str | Path, templates_path: str | Path, bins_path: str | Path, out: str | Path, *,
          n_ppxf: int, degree: int, inference: dict | None = None, variants=(), code_files=()) -> None:
    """Model vs pPXF seconds per spectrum, measured in one run on the same machine and spectra; the
    model through ``inference`` (as in `model_maps`), plus the ``variants`` sweep (`fast_inference`)."""
    from specfm.io import write_json_atomic

    from .bench import benchmark_speed
    from .cube import read_bins
    from .fast_inference import DEFAULT_BACKEND
    from .training import load_galprote

    model, _ = load_galprote(model_path)
    inference = {"backend": DEFAULT_BACKEND, **(inference or {})}
    result = benchmark_speed(model, read_template_table(templates_path), read_bins(bins_path), n_ppxf=n_ppxf,
                             degree=degree, backend=inference["backend"], threads=inference.get("threads"),
                             batch_size=inference.get("batch_size") or 256, variants=variants)
    result["inputs"] = {"model": str(model_path), "templates": str(templates_path), "bins": str(bins_path)}
    write_json_atomic(out, result)
    log.info("benchmark: model %.3g s, pPXF %.3g s per spectrum, ratio %.0f", result["model_seconds_per_spectrum"],
             result["ppxf_seconds_per_spectrum"], result["speed_ratio"])


def source_members(manifest: str | Path, names) -> list[Path]:
    """The unpacked, checksum-checked files ``names`` (file names) that a source's manifest lists, in
    the order given; ValueError naming the manifest and the missing name."""
    listed = {}
    for path in manifest_files(manifest):  # one check of the archive and every member
        listed.setdefault(path.name, []).append(path)
    out = []
    for name in names:
        got = listed.get(name, [])
        if len(got) != 1:
            raise ValueError(f"{manifest}: lists {len(got)} files named {name!r} (expected one); "
                             "add it to the source's members")
        out += got
    return out


def predict_spectra(spectra, redshifts, model_path: str | Path, templates_path: str | Path, out: str | Path, *,
                    frame: str | None = None, clip_frac: float = 0.05, ppxf_degree: int | None = None,
                    max_bad_frac: float = 0.2, inference: dict | None = None, estimate: str = "grid",
                    metrics_out: str | Path | None = None, code_files=()) -> dict:
    """A user's single spectra (files; several per file allowed) -> GalProTE table (.parquet/.fits/.csv),
    and with ``metrics_out`` the GalProTE - pPXF agreement (`compare.spectra_agreement`, JSON).

    ``redshifts``: one per spectrum, one for all, or None (each file's own: `single.file_redshifts`).
    The preprocessing is the cube bins' (`specfm.galaxies.single`); ``ppxf_degree`` adds the pPXF
    baseline on the same spectra and templates; ``inference``, ``estimate``: as in `model_maps`. Returns the table
    (column -> array)."""
    import numpy as np

    from .single import file_redshifts, predict_table, read_spectra, write_table
    from .training import load_galprote

    loaded, per_file = [], []
    for path in spectra:
        got = read_spectra(path, frame=frame)
        loaded += got
        if redshifts is None:
            per_file.append(file_redshifts(path, len(got)))
    z = np.concatenate(per_file) if redshifts is None else np.asarray(redshifts, dtype=float).ravel()
    if z.size not in (1, len(loaded)):
        raise ValueError(f"{z.size} redshifts for {len(loaded)} spectra (in {len(spectra)} files): give one, or one "
                         "per spectrum")
    templates = read_template_table(templates_path)
    model, meta = load_galprote(model_path)
    if (model.cfg.n_z, model.cfg.n_age) != tuple(templates.flux.shape[:2]):
        raise ValueError(f"{templates_path}: template grid {templates.flux.shape[:2]} ([M/H] x age) is not the "
                         f"model's ({model.cfg.n_z}, {model.cfg.n_age}) from {model_path}")
    start = time.perf_counter()
    table = predict_table(loaded, np.broadcast_to(z, (len(loaded),)), model, templates, clip_frac=clip_frac,
                          ppxf_degree=ppxf_degree, max_bad_frac=max_bad_frac, inference=inference,
                          estimate=estimate)
    write_table(table, out)
    log.info("GalProTE on %d spectra%s in %.1f s -> %s", len(loaded), " (+ pPXF)" if ppxf_degree is not None else "",
             time.perf_counter() - start, out)
    params = {"redshifts": [float(v) for v in np.broadcast_to(z, (len(loaded),))], "frame": frame,
              "clip_frac": clip_frac, "ppxf_degree": ppxf_degree, "max_bad_frac": max_bad_frac,
              "inference": inference or {}, **beyond_paper(estimate)}
    inputs = {"model": model_path, "templates": templates_path, **{f"spectrum_{i}": p for i, p in enumerate(spectra)}}
    code = [*MODEL_CODE, "specfm.galaxies.single", "specfm.galaxies.preprocessing", "specfm.galaxies.cube",
            "specfm.galaxies.cube_io", "specfm.galaxies.manga", "specfm.galaxies.ppxf_fit",
            "specfm.galaxies.fast_inference"]
    provenance.write(out, inputs=inputs, params=params, code=code, code_files=code_files,
                     step="galaxies_predict_spectra")
    if metrics_out is not None:
        from specfm.io import write_json_atomic

        from .compare import spectra_agreement

        write_json_atomic(metrics_out, spectra_agreement(table))
        provenance.write(metrics_out, inputs={"table": out}, params=params, code=[*code, "specfm.galaxies.compare"],
                         code_files=code_files, step="galaxies_predict_spectra")
    return table
