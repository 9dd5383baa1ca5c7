"""Fast GalProTE inference backends against the eager reference (issue 13, part 2), on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_galaxies_model import N_AGE, N_Z, TINY_ARCH, tiny_grid

from specfm.galaxies import fast_inference as fi
from specfm.galaxies.model import GalProTE, GalProTEConfig
from specfm.galaxies.training import predict as eager_predict


@pytest.fixture(scope="module")
def tiny():
    """A random tiny model with sharpened heads (a trained model's grids are peaked, not uniform) and
    spectra: the tiny grid's templates mixed at random, with 2 % noise."""
    torch.manual_seed(3)
    grid = tiny_grid()
    cfg = GalProTEConfig(n_z=N_Z, n_age=N_AGE, **TINY_ARCH)
    model = GalProTE(cfg, log_age=grid.log_age, mh=grid.mh, av_levels=np.arange(16) / 10).eval()
    with torch.no_grad():
        model.grid_head.weight.mul_(5.0)
        model.av_head.weight.mul_(5.0)
    rng = np.random.default_rng(0)
    flux = grid.flux.reshape(N_Z * N_AGE, -1)[:, grid.mask]
    mix = rng.dirichlet(np.full(N_Z * N_AGE, 0.3), size=300)
    spectra = mix @ flux
    spectra = spectra / np.median(spectra, axis=1, keepdims=True)
    spectra = (spectra * (1 + 0.02 * rng.standard_normal(spectra.shape))).astype(np.float32)
    return model, spectra


def _raw(model, spectra, backend):
    return fi.run_batches(fi.runner(model, backend, threads=1), spectra, 64)


def test_onnx_equals_eager_within_the_tolerance(tiny):
    model, spectra = tiny
    ref, got = _raw(model, spectra, "eager"), _raw(model, spectra, "onnx")
    d = fi.compare(model, ref, got)
    assert d["within_tolerance"] and d["fraction_within"] >= fi.TOLERANCE["min_fraction"]
    assert d["weights_max"] < 1e-5 and d["av_logits_max"] < 1e-4  # the same float32 network, reordered
    assert d["av_class_agree"] == 1.0 and d["log_age_max"] < fi.TOLERANCE["dex"]
    # the predictions spread over the grid: a model that said the same thing for every spectrum would
    # make the comparison empty
    age = fi.finish(model, *ref)[0].sum(axis=1) @ model.log_age.numpy()
    assert age.std() > 0.05


def test_a_perturbed_weight_breaks_the_tolerance(tiny):
    model, spectra = tiny
    ref = _raw(model, spectra, "eager")
    broken = GalProTE(model.cfg, model.log_age, model.mh, model.av_levels).eval()
    broken.load_state_dict(model.state_dict())
    cell = int(np.bincount(ref[0].reshape(len(spectra), -1).argmax(axis=1)).argmax())  # the most frequent peak
    with torch.no_grad():  # one weight of the grid head: that cell's bias, lowered by 1
        broken.grid_head.bias[cell] -= 1.0
    d = fi.compare(model, ref, _raw(broken, spectra, "onnx"))
    assert not d["within_tolerance"] and d["log_age_max"] > fi.TOLERANCE["dex"]
    # a change far below the tolerance passes
    with torch.no_grad():
        broken.grid_head.bias[cell] += 1.0 - 1e-5
    assert fi.compare(model, ref, _raw(broken, spectra, "onnx"))["within_tolerance"]


def test_predict_matches_training_predict(tiny):
    model, spectra = tiny
    w0, av0 = eager_predict(model, spectra, 64)
    w1, av1 = fi.predict(model, spectra, 64, backend="eager")
    assert np.array_equal(w0, w1) and np.array_equal(av0, av1)
    w2, av2 = fi.predict(model, spectra, 64, backend="onnx", threads=1)
    assert w2.shape == w0.shape and av2.shape == av0.shape
    assert np.array_equal(av2, av0)  # A_V: the most probable class, the same one
    for how in ("mean",):
        a_e = eager_predict(model, spectra, 64, av=how)[1]
        assert np.allclose(fi.predict(model, spectra, 64, av=how, backend="onnx")[1], a_e, atol=1e-4)
    empty = fi.predict(model, spectra[:0], backend="onnx")
    assert empty[0].shape == (0, N_Z, N_AGE) and empty[1].shape == (0,)


@pytest.mark.parametrize("backend", ["int8", "bf16"])
def test_lossy_backends_are_measured_not_assumed(tiny, backend):
    model, spectra = tiny
    d = fi.compare(model, _raw(model, spectra, "eager"), _raw(model, spectra, backend))
    assert d["weights_max"] > 0  # reduced precision: not bit-equal to eager
    assert set(d) >= {"log_age_max", "mh_max", "av_class_agree", "within_tolerance"}


def test_variants_record_and_choice(tiny):
    model, spectra = tiny
    rec = fi.benchmark_variants(model, spectra[:64], backends=("eager", "onnx", "nonsense"), cores=1,
                                batch_size=32, min_seconds=0.01)
    assert "error" not in rec["eager"] and rec["nonsense"]["error"].startswith("ValueError")
    assert [(t["threads"], t["batch_size"]) for t in rec["onnx"]["timings"]] == [(1, 32), (1, 64), (1, 256), (1, 1024)]
    assert rec["onnx"]["accuracy"]["within_tolerance"] and rec["eager"]["accuracy"]["weights_max"] < 1e-5
    assert fi.fastest_accurate(rec) in ("eager", "onnx")
    rec["onnx"]["accuracy"]["within_tolerance"] = False
    assert fi.fastest_accurate(rec) == "eager"
    assert fi.sweep_settings("compile", cores=2) == [(2, 256)]
    assert fi.sweep_settings("onnx", cores=2) == [(1, 256), (2, 256), (2, 64), (2, 1024)]


@pytest.mark.parametrize("backend", ["onnx_nospin", "openvino", "openvino_traced"])
def test_other_runtimes_equal_eager_within_the_tolerance(tiny, backend):
    """300 spectra in batches of 64: openvino compiles a second static shape for the last batch of 44."""
    model, spectra = tiny
    ref, got = _raw(model, spectra, "eager"), _raw(model, spectra, backend)
    assert got[0].shape == ref[0].shape and got[1].shape == ref[1].shape
    d = fi.compare(model, ref, got)
    assert d["within_tolerance"] and d["weights_max"] < 1e-5 and d["av_logits_max"] < 1e-4
    w, av = fi.predict(model, spectra, 64, backend=backend, threads=1)
    assert np.array_equal(av, eager_predict(model, spectra, 64)[1])


def test_openvino_refuses_a_batch_larger_than_its_shape(tiny):
    model, spectra = tiny
    run = fi.runner(model, "openvino", threads=1, batch_size=32)
    with pytest.raises(ValueError, match="batches of 32"):
        run(spectra[:33])
    w, logits = run(spectra[:7])  # fewer rows than the shape: their own graph, seven rows back
    ref = fi.runner(model, "eager", threads=1)(spectra[:7])
    assert w.shape[0] == logits.shape[0] == 7
    np.testing.assert_allclose(w, ref[0], atol=1e-5)


def test_interleaved_timings_pairs_each_round_with_the_reference(tiny):
    model, spectra = tiny
    rec = fi.interleaved_timings(model, spectra[:40], ["eager", "onnx"], cores=1, batch_size=16, rounds=4)
    assert rec["reference"] == "eager"
    assert rec["rounds"] == 4
    assert rec["n_spectra"] == 40
    assert set(rec["backends"]) == {"eager", "onnx"}
    assert rec["backends"]["eager"]["median_ratio_to_reference"] == 1.0
    for b in rec["backends"].values():
        assert 0 < b["min_seconds_per_spectrum"] <= b["median_seconds_per_spectrum"]
        assert b["median_ratio_to_reference"] > 0
