"""Speed of GalProTE against pPXF: one run, one machine, the same spectra, the same templates.

GalProTE Sect. 5.1: the model fits NGC 4254's 64,985 bins in 245 s (< 4 ms per spectrum on an RTX
4090), pPXF "up to 11 seconds" per spectrum (Woo et al. 2024, one core): a factor > 2,750. The paper
compares numbers from different machines; here both are timed in one process:

* model: ``training.predict`` (batched, ``batch_size``) on the bins' 876-px model inputs, after a
  warm-up batch, with ``torch.set_num_threads`` = the cores this process may use; the pass is
  repeated until it has run >= ``min_seconds`` so small inputs still give a stable number;
  seconds per spectrum = total time / spectra predicted. The weights -> light-weighted age/[M/H]
  step is negligible and not timed; neither is reading the file. ``predict`` is what the maps rule
  runs: inference mode, BatchNorm folded into the convolutions, the attention context as plain
  matrix products (see ``model``), 256 spectra per batch (a batch's [B, C, L] feature maps then stay
  ~20 MB instead of ~86 MB at 1024);
* pPXF: ``ppxf_fit.fit_bins`` (the two-fit PHANGS recipe) on ``n_ppxf`` bins spread evenly over the
  bin list (the S/N and the population mix vary across a galaxy), one process with its BLAS / OpenMP
  pools limited to one thread (threadpoolctl): one core, as the paper's pPXF time. Unlimited, BLAS
  starts a thread per core, and on a loaded 2-core machine that made pPXF 4-6x slower (4.6-5.8 s
  instead of 1.06 s per spectrum, README), which inflated the ratio; seconds per spectrum = mean wall
  time of the two fits of a bin.

* inference variants (`fast_inference`): each backend (eager, ONNX Runtime, int8 dynamic quantisation,
  bf16 autocast, torch.compile) on the same spectra, with its accuracy against eager and its seconds
  per spectrum over thread counts and batch sizes (``variants``). The headline ``model`` timing is the
  full predict path (clipping and A_V included) of ``backend``, the one the maps rule runs
  (``galaxies.inference.backend``); ``model_eager`` is `training.predict`'s, timed the same way;
  ``interleaved``: the backends within tolerance timed again round-robin (`interleaved_timings`), the
  fair comparison between backends on a machine whose load changes during the run.

The ratio is pPXF / model, and the projection is the time for 65,000 bins (NGC 4254's size) at the
measured rates. Run as ``python -m specfm.galaxies.bench --model M --templates T --bins B --out J``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from dataclasses import replace

import numpy as np

from .cube import Bins
from .fast_inference import time_model
from .ppxf_fit import available_cores
from .template_table import TemplateGrid

log = logging.getLogger(__name__)

PROJECTION_BINS = 65000  # NGC 4254: 64,985 Voronoi bins (GalProTE Sect. 5.1)
PAPER = {"model_seconds_per_spectrum": 245.0 / 64985, "ppxf_seconds_per_spectrum": 11.0, "speed_ratio": 2750.0,
         "note": "GalProTE Sect. 5.1: model on an RTX 4090 (245 s for NGC 4254's 64,985 bins); pPXF time "
                 "quoted from Woo et al. 2024, one core of an i9-13900K; not measured on one machine"}


def subset_bins(bins: Bins, index) -> Bins:
    """The bins ``index`` only (per-bin arrays sliced; the spatial maps are left as they are)."""
    index = np.asarray(index, dtype=int)
    per_bin = ("spectra_full", "noise_full", "spectra", "norm", "snr", "xbar", "ybar", "n_spaxels", "n_filtered")
    return replace(bins, **{k: np.asarray(getattr(bins, k))[index] for k in per_bin})


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "ppxf", "numpy", "scipy", "onnxruntime", "onnx", "openvino"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _cycled(spectra, n_model: int | None) -> np.ndarray:
    spectra = np.asarray(spectra, dtype=np.float32)
    n = spectra.shape[0] if n_model is None else int(n_model)
    return spectra[np.arange(n) % spectra.shape[0]]


def _backend_predict(model, backend: str, threads: int, batch_size: int):
    """``predict_fn`` of `time_model` for ``backend``, its runner built once (export/compile not timed)."""
    from .fast_inference import finish, run_batches, runner

    run = runner(model, backend, threads=threads, batch_size=batch_size)
    return lambda m, spectra, bs: finish(m, *run_batches(run, spectra, bs))


def benchmark_speed(model, templates: TemplateGrid, bins: Bins, *, n_ppxf: int = 20, batch_size: int = 256,
                    n_model: int | None = None, predict_fn=None, min_seconds: float = 2.0, degree: int = 12,
                    threads: int | None = None, progress: bool = False, backend: str = "eager",
                    variants=()) -> dict:
    """Time the model and pPXF on ``bins`` (module docstring); returns the JSON-ready record.

    ``model``: a GalProTE module (or any module ``predict_fn`` accepts); ``n_model``: spectra for the
    model timing (default all bins; more cycles through them). ``threads``: torch threads (default
    the available cores). ``backend``: the headline inference path (`fast_inference`; ignored when
    ``predict_fn`` is given); ``variants``: backends swept and checked against eager (none: no sweep).
    """
    import torch

    from .fast_inference import benchmark_variants, cpu_features, fastest_accurate, interleaved_timings
    from .ppxf_fit import fit_bins

    cores = available_cores()
    torch.set_num_threads(int(threads or cores))
    try:
        device = str(next(model.parameters()).device)
    except (AttributeError, StopIteration):
        device = "cpu"
    extra = {}
    if variants:
        extra["variants"] = benchmark_variants(model, _cycled(bins.spectra, n_model), backends=tuple(variants),
                                               cores=torch.get_num_threads(), batch_size=batch_size,
                                               min_seconds=min_seconds / 2)
        extra["fastest_within_tolerance"] = fastest_accurate(extra["variants"])
        extra["cpu"] = cpu_features()
        accurate = [b for b, v in extra["variants"].items() if v.get("accuracy", {}).get("within_tolerance")]
        if len(accurate) > 1:
            extra["interleaved"] = interleaved_timings(model, _cycled(bins.spectra, n_model), accurate,
                                                       cores=torch.get_num_threads(), batch_size=batch_size)
    custom = predict_fn is not None
    if not custom and backend != "eager":
        predict_fn = _backend_predict(model, backend, torch.get_num_threads(), batch_size)
        extra["model_eager"] = time_model(model, bins.spectra, batch_size=batch_size, n_model=n_model,
                                          min_seconds=min_seconds)
    m = time_model(model, bins.spectra, batch_size=batch_size, n_model=n_model, min_seconds=min_seconds,
                   predict_fn=predict_fn)
    m["backend"] = "custom" if custom else backend
    log.info("model (%s): %.3g s per spectrum (%d spectra x %d, batch %d, %d torch threads, %s)", m["backend"],
             m["seconds_per_spectrum"], m["n_spectra"], m["repeats"], batch_size, torch.get_num_threads(), device)

    k = int(min(max(n_ppxf, 1), bins.n_bins))
    idx = np.unique(np.linspace(0, bins.n_bins - 1, k).round().astype(int))
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(limits=1):  # one core (module docstring)
        res = fit_bins(subset_bins(bins, idx), templates, degree=degree, progress=progress, n_jobs=1)
    wall = time.perf_counter() - t0
    ok = res["OK"]
    p = {"seconds_per_spectrum": float(res["SECONDS"][ok].mean()) if ok.any() else float("nan"),
         "wall_seconds_per_spectrum": wall / idx.size, "n_spectra": int(idx.size), "n_failed": int((~ok).sum()),
         "bins": idx.tolist(), "degree": int(degree), "n_templates": int(np.prod(templates.flux.shape[:2])),
         "recipe": res["meta"]["method"], "blas_threads": 1}
    log.info("pPXF: %.3g s per spectrum (%d bins, %d failed)", p["seconds_per_spectrum"], idx.size, p["n_failed"])

    s_m, s_p = m["seconds_per_spectrum"], p["seconds_per_spectrum"]
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "cpus_available": cores, "torch_threads": torch.get_num_threads(),
                    "device": device, **_versions()},
        "model": m,
        "ppxf": p,
        "model_seconds_per_spectrum": s_m,
        "ppxf_seconds_per_spectrum": s_p,
        "speed_ratio": s_p / s_m,
        **({"speed_ratio_eager": s_p / extra["model_eager"]["seconds_per_spectrum"]} if "model_eager" in extra else {}),
        **extra,
        "projection": {"n_bins": PROJECTION_BINS, "galaxy": "NGC4254 (64,985 bins in the paper)",
                       "model_seconds": PROJECTION_BINS * s_m, "ppxf_seconds": PROJECTION_BINS * s_p},
        "paper": PAPER,
    }


__all__ = ["PAPER", "PROJECTION_BINS", "available_cores", "benchmark_speed", "main", "subset_bins", "time_model"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specfm.galaxies.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="GalProTE model file (training.train_galprote)")
    ap.add_argument("--templates", required=True, help="template table HDF5 (template_table)")
    ap.add_argument("--bins", required=True, help="bins HDF5 (cube.write_bins)")
    ap.add_argument("--out", required=True, help="JSON output, e.g. results/bench/galaxies_speed.json")
    ap.add_argument("--n-ppxf", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-model", type=int, default=None)
    ap.add_argument("--degree", type=int, default=12)
    ap.add_argument("--backend", default=None, help="headline inference path (fast_inference.BACKENDS); "
                    "default fast_inference.DEFAULT_BACKEND")
    ap.add_argument("--variants", nargs="*", default=["eager", "onnx", "onnx_nospin", "openvino", "openvino_traced",
                                                      "int8", "bf16", "compile"],
                    help="backends swept and checked against eager (none: no sweep)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from specfm.io import write_json_atomic

    from .cube import read_bins
    from .fast_inference import DEFAULT_BACKEND
    from .template_table import read_template_table
    from .training import load_galprote

    model, _ = load_galprote(args.model)
    result = benchmark_speed(model, read_template_table(args.templates), read_bins(args.bins), n_ppxf=args.n_ppxf,
                             batch_size=args.batch_size, n_model=args.n_model, degree=args.degree,
                             backend=args.backend or DEFAULT_BACKEND, variants=args.variants)
    result["inputs"] = {"model": args.model, "templates": args.templates, "bins": args.bins}
    write_json_atomic(args.out, result)
    log.info("wrote %s: model %.3g s, pPXF %.3g s per spectrum, ratio %.0f", args.out,
             result["model_seconds_per_spectrum"], result["ppxf_seconds_per_spectrum"], result["speed_ratio"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

