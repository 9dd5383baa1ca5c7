"""Faster CPU inference of a trained GalProTE, checked against the eager reference (issue 13, part 2).

`training.predict` (eager PyTorch, BatchNorm folded) is the reference. The backends here run the same
folded network another way; `predict` is what the maps and single-spectrum steps call, with the backend
from config (``galaxies.inference``):

* ``eager``: `training.predict` itself;
* ``onnx``: the folded network, its encoder layers rewritten for export (`export_graph`), exported once
  with the TorchScript ONNX exporter (``dynamo=False``: the dynamo exporter needs onnxscript) and run
  by ONNX Runtime, which fuses
  conv + ReLU and the encoder's matrix products. Same float32 arithmetic, reordered: outputs agree with
  eager to ~1e-6;
* ``onnx_nospin``: the same session with its intra-op threads not spinning while they wait
  (``session.intra_op.allow_spinning`` 0): on a machine with more runnable jobs than cores a spinning
  thread takes a core from the job that would feed it;
* ``openvino`` (default): the same ONNX graph compiled by OpenVINO for the CPU, reshaped to static batch
  shapes (``batch_size``, and a shorter last batch's own, each compiled once: padded to 256 rows, the
  demo's 116 bins cost 2.2x the rows they need), float32 kept (``INFERENCE_PRECISION_HINT`` f32: OpenVINO
  would use bf16 on CPUs that have it), latency hint, ``threads`` inference threads;
* ``openvino_traced``: the same with PyTorch's encoder layer traced as it is instead of `export_graph`'s
  batch-first rewrite (the graph before that rewrite), kept so the benchmark measures what it gained;
* ``int8``: `torch.ao.quantization.quantize_dynamic` of the Linear layers (the 876 x 876 contexts, the
  encoders, the heads); the convolutions stay float;
* ``bf16``: CPU autocast to bfloat16 (slow where the CPU has no native bf16, e.g. AVX-512 without
  AVX512_BF16: the bench records which);
* ``compile``: `torch.compile` (inductor; needs a C compiler; the first call compiles for a minute).

Tolerance (`TOLERANCE`): a backend may replace eager only if, on the same spectra, >= 99 % of them have
light-weighted log age and [M/H] within 0.005 dex of eager's and the same A_V class. 0.005 dex is ~1/20
of the model's scatter against the mock truth (~0.1 dex), so maps are unchanged within their noise; the
1 % allows for grid cells sitting exactly at the 5 % clipping threshold, where a 1e-6 change flips a cell.
A model with the mean head (`model` docstring) has a third output, ``means`` [b, 3]; every runner passes
it through, and its three values must be within the same 0.005 of eager's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings

import numpy as np
import torch

from .export_graph import for_export
from .model import GalProTE, clip_grid, fused_for_inference

log = logging.getLogger(__name__)

BACKENDS = ("eager", "onnx", "onnx_nospin", "openvino", "openvino_traced", "int8", "bf16", "compile")
DEFAULT_BACKEND = "openvino"  # fastest within TOLERANCE in the 2026-12-03 16:15 bench run (README)
TOLERANCE = {"dex": 0.005, "min_fraction": 0.99}


# ------------------------------------------------------------------------------------ runners


def _torch_runner(net, threads: int | None, autocast: bool = False, pad_to: int | None = None):
    """numpy batch -> raw (weights, av_logits[, means]) numpy, with torch's thread count set for the call."""
    def run(x: np.ndarray):
        old = torch.get_num_threads()
        torch.set_num_threads(int(threads or old))
        n = x.shape[0]
        if pad_to and n < pad_to:  # compiled graphs: one static shape, no recompilation for the last batch
            x = np.concatenate([x, np.repeat(x[-1:], pad_to - n, axis=0)])
        try:
            with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
                                          else contextlib.nullcontext()):
                out = net(torch.from_numpy(x))
        finally:
            torch.set_num_threads(old)
        return tuple(o.float().numpy()[:n] for o in out)
    return run


def onnx_bytes(model: GalProTE, *, traced_encoder: bool = False) -> bytes:
    """The BatchNorm-folded network as an ONNX model (batch axis dynamic), its encoder layers written out
    for export (`export_graph`); ``traced_encoder``: PyTorch's own layer traced, as before that rewrite."""
    net = fused_for_inference(model).cpu() if traced_encoder else for_export(model)
    names = ["weights", "av_logits"] + (["means"] if model.cfg.mean_head else [])
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of dynamo (needs onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.ones(2, model.cfg.n_pix),), buf, dynamo=False, opset_version=17,
                          input_names=["spectra"], output_names=names,
                          dynamic_axes={"spectra": {0: "n"}, **{k: {0: "n"} for k in names}})
    return buf.getvalue()


def _onnx_runner(model: GalProTE, threads: int | None, spinning: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_bytes(model), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray):
        return tuple(session.run(None, {"spectra": np.ascontiguousarray(x, dtype=np.float32)}))
    return run


def _openvino_runner(model: GalProTE, threads: int | None, batch_size: int, traced_encoder: bool = False):
    import openvino as ov

    core = ov.Core()
    graph = onnx_bytes(model, traced_encoder=traced_encoder)  # the weights inside
    config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled = {}  # rows -> (infer request, outputs): one static shape per batch size met, compiled once

    def request(n: int):
        if n not in compiled:
            net = core.read_model(graph, b"")
            net.reshape({net.inputs[0]: ov.PartialShape([n, model.cfg.n_pix])})
            c = core.compile_model(net, "CPU", config)
            compiled[n] = (c.create_infer_request(), c.outputs)
        return compiled[n]

    request(batch_size)  # the full batches' graph now, outside any timed call

    def run(x: np.ndarray):
        n = x.shape[0]
        if n > batch_size:
            raise ValueError(f"openvino runner built for batches of {batch_size}, got {n}")
        infer, outputs = request(n)  # a short last batch gets its own shape, not padding
        res = infer.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return tuple(np.array(res[o]) for o in outputs)
    return run


def runner(model: GalProTE, backend: str = DEFAULT_BACKEND, *, threads: int | None = None, batch_size: int = 256):
    """A function numpy spectra batch [b, L] -> raw (weights [b, n_Z, n_age], A_V logits [b, n_av]), and
    the means [b, 3] of a model with the mean head.

    Built once (export, quantisation, compilation happen here or on the first call); ``threads``:
    intra-op threads (default: torch's current count)."""
    model = model.cpu().eval()
    if backend == "onnx":
        return _onnx_runner(model, threads)
    if backend == "onnx_nospin":
        return _onnx_runner(model, threads, spinning=False)
    if backend == "openvino":
        return _openvino_runner(model, threads, batch_size)
    if backend == "openvino_traced":
        return _openvino_runner(model, threads, batch_size, traced_encoder=True)
    if backend == "eager":
        return _torch_runner(fused_for_inference(model), threads)
    if backend == "int8":
        with warnings.catch_warnings():  # torch.ao quantisation is deprecated in favour of torchao (not a dependency)
            warnings.simplefilter("ignore")
            net = torch.ao.quantization.quantize_dynamic(fused_for_inference(model), {torch.nn.Linear}, torch.qint8)
        return _torch_runner(net, threads)
    if backend == "bf16":
        return _torch_runner(fused_for_inference(model), threads, autocast=True)
    if backend == "compile":
        return _torch_runner(torch.compile(fused_for_inference(model), dynamic=False), threads, pad_to=batch_size)
    raise ValueError(f"GalProTE inference backend {backend!r}: expected one of {BACKENDS}")


def run_batches(run, spectra, batch_size: int = 256) -> tuple:
    """Raw outputs of ``run`` over ``spectra`` [N, L] in batches (each output concatenated)."""
    spectra = np.asarray(spectra, dtype=np.float32)
    outs = [run(spectra[lo:lo + batch_size]) for lo in range(0, spectra.shape[0], batch_size)]
    if not outs:
        raise ValueError("no spectra to predict")
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(len(outs[0])))


def finish(model: GalProTE, weights, av_logits, means=None, *, frac: float = 0.05, av: str | None = None):
    """Raw outputs -> (clipped weights, A_V in mag[, means]), as `training.predict` returns them."""
    from .training import av_from_logits

    av = model.cfg.av_estimate if av is None else av
    w = clip_grid(torch.from_numpy(np.asarray(weights, np.float32)), frac).float().numpy()
    a = av_from_logits(torch.from_numpy(np.asarray(av_logits, np.float32)), model.av_levels.cpu(), av)
    return (w, a.float().numpy()) + (() if means is None else (np.asarray(means, np.float32),))


def predict(model: GalProTE, spectra, batch_size: int | None = 256, *, frac: float = 0.05, av: str | None = None,
            backend: str = DEFAULT_BACKEND, threads: int | None = None, with_means: bool = False) -> tuple:
    """`training.predict` through ``backend`` (module docstring); ``eager`` is `training.predict` itself."""
    from .training import check_means, predict as eager_predict

    if backend == "eager":
        return eager_predict(model, spectra, int(batch_size or 256), frac=frac, av=av, with_means=with_means)
    check_means(model, with_means)
    batch_size = int(batch_size or 256)
    spectra = np.asarray(spectra, dtype=np.float32)
    if spectra.shape[0] == 0:
        return eager_predict(model, spectra, frac=frac, av=av, with_means=with_means)  # the empty arrays
    run = runner(model, backend, threads=threads, batch_size=batch_size)
    out = finish(model, *run_batches(run, spectra, batch_size), frac=frac, av=av)
    return out if with_means else out[:2]


ESTIMATES = ("grid", "head")


def estimates(model: GalProTE, spectra, log_age, mh, *, frac: float = 0.05, estimate: str = "grid",
              inference: dict | None = None) -> dict:
    """What maps and tables show, from one forward pass (`predict` with ``inference``):
    log_age, mh, av [N] from ``estimate`` -- ``grid``, light-weighted over the clipped grid (axes
    ``log_age``, ``mh``) with A_V from the class head (the paper), or ``head``, the mean head's
    regression, which no clip changes -- plus the clipped grid ``weights`` and its class-head ``av_grid``:
    a reconstruction (fit residuals) needs a grid, which the head does not give."""
    from .training import light_weighted

    if estimate not in ESTIMATES:
        raise ValueError(f"GalProTE estimate {estimate!r}: expected one of {ESTIMATES}")
    head = estimate == "head"
    out = predict(model, spectra, frac=frac, with_means=head, **(inference or {}))
    age, z = light_weighted(out[0], log_age, mh)
    values = (out[2][:, 0], out[2][:, 1], out[2][:, 2]) if head else (age, z, out[1])
    return {"log_age": values[0], "mh": values[1], "av": values[2], "weights": out[0], "av_grid": out[1]}


# ------------------------------------------------------------------------------------ accuracy


def compare(model: GalProTE, ref: tuple, got: tuple, *, frac: float = 0.05) -> dict:
    """Differences of raw outputs ``got`` from ``ref`` (each (weights, A_V logits[, means])) and of what
    the maps show: light-weighted log age / [M/H] (after clipping), the A_V class and the mean head's values."""
    from .training import light_weighted

    log_age, mh = model.log_age.cpu().numpy(), model.mh.cpu().numpy()
    (w0, l0, *h0), (w1, l1, *h1) = ref, got
    a0, m0 = light_weighted(clip_grid(w0, frac), log_age, mh)
    a1, m1 = light_weighted(clip_grid(w1, frac), log_age, mh)
    da, dm = np.abs(a1 - a0), np.abs(m1 - m0)
    same_av = np.argmax(l0, axis=1) == np.argmax(l1, axis=1)
    ok = (da <= TOLERANCE["dex"]) & (dm <= TOLERANCE["dex"]) & same_av
    d_w, d_l = np.abs(np.asarray(w1, float) - w0), np.abs(np.asarray(l1, float) - l0)
    head = {}
    if h0:  # the mean head: each of its three values within the same tolerance
        d_h = np.abs(np.asarray(h1[0], float) - h0[0]).max(axis=1)
        ok &= d_h <= TOLERANCE["dex"]
        head = {"means_max": float(d_h.max()), "means_mean": float(d_h.mean())}
    return {"weights_max": float(d_w.max()), "weights_mean": float(d_w.mean()),
            "av_logits_max": float(d_l.max()), "av_logits_mean": float(d_l.mean()),
            "log_age_max": float(da.max()), "log_age_mean": float(da.mean()),
            "mh_max": float(dm.max()), "mh_mean": float(dm.mean()),
            "av_class_agree": float(same_av.mean()), "fraction_within": float(ok.mean()),
            "n_spectra": int(len(ok)), "within_tolerance": bool(ok.mean() >= TOLERANCE["min_fraction"])} | head


def check(model: GalProTE, spectra, backend: str, *, threads: int | None = None, batch_size: int = 256,
          frac: float = 0.05) -> dict:
    """`compare` of ``backend`` against eager on ``spectra``."""
    ref = run_batches(runner(model, "eager"), spectra, batch_size)
    got = run_batches(runner(model, backend, threads=threads, batch_size=batch_size), spectra, batch_size)
    return compare(model, ref, got, frac=frac)


# ------------------------------------------------------------------------------------ timing


def time_model(model, spectra, *, batch_size: int = 256, n_model: int | None = None, min_seconds: float = 2.0,
               max_repeats: int = 50, predict_fn=None) -> dict:
    """Seconds per spectrum of ``predict_fn(model, spectra, batch_size)`` (default ``training.predict``)."""
    if predict_fn is None:
        from .training import predict as predict_fn
    spectra = np.asarray(spectra, dtype=np.float32)
    if spectra.shape[0] == 0:
        raise ValueError("no spectra to time the model on")
    n = spectra.shape[0] if n_model is None else int(n_model)
    if n > spectra.shape[0]:  # cycle through the bins to reach n spectra
        spectra = spectra[np.arange(n) % spectra.shape[0]]
    else:
        spectra = spectra[:n]
    predict_fn(model, spectra[: min(batch_size, n)], batch_size)  # warm-up: allocations, kernels, caches
    repeats, total = 0, 0.0
    while repeats < max_repeats and (repeats == 0 or total < min_seconds):
        t0 = time.perf_counter()
        predict_fn(model, spectra, batch_size)
        total += time.perf_counter() - t0
        repeats += 1
    sps = total / (repeats * n)
    return {"seconds_per_spectrum": sps, "spectra_per_second": 1.0 / sps, "n_spectra": n, "repeats": repeats,
            "total_seconds": total, "batch_size": int(batch_size)}


def sweep_settings(backend: str, *, cores: int, batch_size: int = 256, batch_sizes=(64, 256, 1024)) -> list[tuple]:
    """(threads, batch size) pairs timed per backend: threads 1..cores at ``batch_size`` and the batch
    sizes at all cores; one setting for bf16 and compile (each costs more to set up than it can win)."""
    if backend in ("bf16", "compile"):
        return [(cores, batch_size)]
    pairs = [(t, batch_size) for t in sorted({1, cores})] + [(cores, b) for b in batch_sizes]
    return list(dict.fromkeys(pairs))


def benchmark_variants(model: GalProTE, spectra, *, backends=BACKENDS, cores: int = 1, batch_size: int = 256,
                       min_seconds: float = 1.0, frac: float = 0.05) -> dict:
    """Per backend: build seconds, the accuracy against eager (`check`) and seconds per spectrum at each
    `sweep_settings` pair, or the error that stopped it (e.g. no C compiler for ``compile``)."""
    spectra = np.asarray(spectra, dtype=np.float32)
    ref = run_batches(runner(model, "eager"), spectra, batch_size)
    out = {}
    for backend in backends:
        rec = {"timings": []}
        try:
            t0 = time.perf_counter()
            run = runner(model, backend, threads=cores, batch_size=batch_size)
            run(spectra[:batch_size])  # compile / first-call costs land here
            rec["build_seconds"] = time.perf_counter() - t0
            rec["accuracy"] = compare(model, ref, run_batches(run, spectra, batch_size), frac=frac)
            for threads, bs in sweep_settings(backend, cores=cores, batch_size=batch_size):
                run = runner(model, backend, threads=threads, batch_size=bs) if backend != "compile" else run
                rec["timings"].append({"threads": threads, **time_model(
                    model, spectra, batch_size=bs, min_seconds=min_seconds,
                    predict_fn=lambda _m, x, b, run=run: run_batches(run, x, b))})
            best = min(rec["timings"], key=lambda r: r["seconds_per_spectrum"])
            rec["best"] = best
            log.info("%s: best %.3g ms per spectrum (threads %d, batch %d), within tolerance: %s", backend,
                     1e3 * best["seconds_per_spectrum"], best["threads"], best["batch_size"],
                     rec["accuracy"]["within_tolerance"])
        except Exception as exc:  # a backend that cannot run here is a result, not a failed benchmark
            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.warning("%s: %s", backend, rec["error"])
        out[backend] = rec
    return out


def interleaved_timings(model: GalProTE, spectra, backends, *, cores: int = 1, batch_size: int = 256,
                        rounds: int = 30) -> dict:
    """Seconds per spectrum of ``backends`` timed round-robin: each round runs one pass of every backend
    over ``spectra``, so a load that comes and goes on a shared machine hits all of them alike (timed one
    after the other, as in `benchmark_variants`, one backend can get a quiet minute and the next a busy
    one). The order is shuffled each round (seeded), so no backend always runs after the same one: ONNX
    Runtime's threads keep spinning for a while after a call and slow whatever runs next. Per backend:
    the median and minimum over rounds, and the median over rounds of its time over the first backend's
    in the same round (the paired ratio)."""
    spectra = np.asarray(spectra, dtype=np.float32)
    backends = list(backends)
    runs = {b: runner(model, b, threads=cores, batch_size=batch_size) for b in backends}
    for run in runs.values():
        run_batches(run, spectra, batch_size)  # warm-up
    times, rng = {b: [] for b in backends}, np.random.default_rng(0)
    for _ in range(int(rounds)):
        for b in rng.permutation(backends):  # a fresh order each round (docstring)
            run = runs[b]
            t0 = time.perf_counter()
            run_batches(run, spectra, batch_size)
            times[b].append((time.perf_counter() - t0) / spectra.shape[0])
    first = np.asarray(times[backends[0]])
    return {"rounds": int(rounds), "threads": int(cores), "batch_size": int(batch_size), "n_spectra": len(spectra),
            "reference": backends[0], "backends": {b: {
                "median_seconds_per_spectrum": float(np.median(t)), "min_seconds_per_spectrum": float(np.min(t)),
                "median_ratio_to_reference": float(np.median(np.asarray(t) / first))} for b, t in times.items()}}


def fastest_accurate(variants: dict) -> str | None:
    """The backend with the lowest best seconds per spectrum among those within `TOLERANCE`."""
    ok = {k: v["best"]["seconds_per_spectrum"] for k, v in variants.items()
          if "best" in v and v.get("accuracy", {}).get("within_tolerance")}
    return min(ok, key=ok.get) if ok else None


def cpu_features() -> dict:
    """What decides bf16 and int8 speed: native bf16 (AVX512_BF16 / AMX) and VNNI."""
    flags = set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags}


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ESTIMATES", "TOLERANCE", "benchmark_variants", "check", "compare",
           "cpu_features", "estimates", "fastest_accurate", "finish", "interleaved_timings", "onnx_bytes", "predict", "run_batches", "runner",
           "sweep_settings"]
