"""GalProTE synthetic evaluation (issue #3 step 4): attention variants, the kept predictions, the
metrics computed from them, the Figures 8-12 and the ablation record. Tiny template grid and model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from specfm.galaxies.figures import KINDS, confusion_matrix, nearest_node, plot_quantity, plot_synthetic
from specfm.galaxies.model import GalProTE, GalProTEConfig, fused_for_inference
from specfm.galaxies.training import (RESID_EDGES_PCT, ablation_table, light_weighted, metrics_from_predictions,
                                      predict, read_predictions, synthetic_metrics, synthetic_predictions, write_predictions)
from specfm.galaxies.trainset import build_training_set, load_split, read_meta
from test_galaxies_model import N_AGE, N_Z, TINY, TINY_ARCH, tiny_grid


@pytest.fixture(scope="module")
def trainset(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "trainset.h5"
    build_training_set(tiny_grid(), path, seed=5, progress=False, **TINY)
    return path


def tiny_model(attention="patch", seed=0) -> GalProTE:
    torch.manual_seed(seed)
    meta_axes = dict(log_age=np.array([8.0, 8.7, 9.4, 10.1]), mh=np.array([-1.0, -0.3, 0.2]),
                     av_levels=np.arange(16) / 10)
    return GalProTE(GalProTEConfig(n_z=N_Z, n_age=N_AGE, attention=attention, **TINY_ARCH), **meta_axes).eval()


@pytest.fixture(scope="module")
def predictions(trainset):
    return synthetic_predictions(tiny_model(), trainset, batch_size=64, block=100)


# ----------------------------------------------------------------------------- attention variants


def test_attention_variants_shapes_and_parameters():
    x = 1 + 0.1 * torch.randn(4, 876)
    n_ctx = {}
    for attention in ("patch", "global", "none"):
        model = tiny_model(attention)
        w, av = model(x)
        assert w.shape == (4, N_Z, N_AGE) and av.shape == (4, 16)
        assert torch.allclose(w.sum(dim=(1, 2)), torch.ones(4), atol=1e-6)
        ctx = model.blocks[0].context
        n_ctx[attention] = 0 if ctx is None else sum(p.numel() for p in ctx.parameters())
    assert n_ctx["none"] == 0
    assert n_ctx["global"] == 876 * 876 + 876  # the literal one-token reading: V = Linear(L, L)
    assert 0 < n_ctx["patch"] < n_ctx["global"]
    with pytest.raises(ValueError, match="attention"):
        tiny_model("pixel")


def test_model_files_without_the_attention_option_load_as_patch(tmp_path):
    """Models written before `attention` existed had patch contexts; they must load as such."""
    from specfm.galaxies.training import MODEL_FORMAT, load_galprote
    from specfm.train import save_final

    model = tiny_model("patch")
    config = {k: v for k, v in model.cfg.to_dict().items() if k != "attention"}
    axes = {k: getattr(model, k).tolist() for k in ("log_age", "mh", "av_levels")}
    save_final(model, tmp_path / "old.pt", {"format": MODEL_FORMAT, "config": config, **axes})
    loaded, _ = load_galprote(tmp_path / "old.pt")
    assert loaded.cfg.attention == "patch"
    x = 1 + 0.1 * torch.randn(2, 876)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_no_attention_block_sees_the_bare_spectrum():
    """attention='none' feeds the spectrum itself to the convolution; 'patch' adds a non-zero context."""
    x = 1 + 0.1 * torch.randn(3, 876)
    for attention, same in (("none", True), ("patch", False)):
        blk = tiny_model(attention).blocks[0]
        seen = {}
        hook = blk.conv.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))  # returns None
        blk(x)
        hook.remove()
        assert torch.equal(seen["x"][:, 0], x) is same


def test_inference_copy_folds_batchnorm_and_keeps_the_function():
    model = tiny_model("patch", seed=1).train()
    x = 1 + 0.1 * torch.randn(64, 876)
    model(x)  # one training step's worth of BatchNorm statistics, so the folding has something to fold
    model.eval()
    fused = fused_for_inference(model)
    assert all(isinstance(b.bn, torch.nn.Identity) for b in fused.blocks)
    assert all(isinstance(b.bn, torch.nn.BatchNorm1d) for b in model.blocks)  # the original is untouched
    with torch.no_grad():
        (w0, a0), (w1, a1) = model(x), fused(x)
    torch.testing.assert_close(w1, w0, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(a1, a0, atol=1e-4, rtol=1e-4)
    model.train()
    predict(model, x.numpy()[:5])
    assert model.training  # predict evaluates a copy; the caller's mode is left alone


# ---------------------------------------------------------------------- predictions and metrics


def test_predictions_match_the_split_and_feed_the_metrics(trainset, predictions):
    meta = read_meta(trainset)
    for split in ("test", "test_unseen"):
        p = predictions[split]
        truth = load_split(trainset, split, ("weights", "av"))
        n = truth["av"].shape[0]
        assert p["n"] == n > 0 and p["n_points"] == n * 876
        age_t, mh_t = light_weighted(truth["weights"], meta["log_age"], meta["mh"])
        np.testing.assert_allclose(p["log_age_true"], age_t)
        np.testing.assert_allclose(p["mh_true"], mh_t)
        np.testing.assert_allclose(p["av_true"], truth["av"])
        assert p["resid_hist"].sum() + p["resid_below"] + p["resid_above"] == p["n_points"]
        m = metrics_from_predictions({split: p})[split]
        d = p["log_age_pred"] - p["log_age_true"]
        assert m["log_age"]["bias"] == pytest.approx(d.mean()) and m["log_age"]["scatter"] == pytest.approx(d.std())
        assert m["pct_mse_mean"] == pytest.approx(p["pct_mse"].mean())
        assert m["av_accuracy"] == pytest.approx(np.mean(np.abs(p["av_pred"] - p["av_true"]) < 1e-3))
    # the one-call form gives the same numbers (blocks of a different size: nothing depends on them)
    again = synthetic_metrics(tiny_model(), trainset, batch_size=32, block=57)
    for split in predictions:
        for key in ("pct_mse_mean", "resid_mean_pct", "resid_std_pct"):
            assert again[split][key] == pytest.approx(metrics_from_predictions(predictions)[split][key], rel=1e-5)


def test_predictions_file_round_trip_is_byte_identical(predictions, tmp_path):
    axes = dict(log_age=[8.0, 8.7, 9.4, 10.1], mh=[-1.0, -0.3, 0.2], av_levels=np.arange(16) / 10)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_predictions(a, predictions, **axes)
    write_predictions(b, predictions, **axes)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    back, got_axes = read_predictions(a)
    np.testing.assert_allclose(got_axes["mh"], axes["mh"])
    for split, p in predictions.items():
        for key, value in p.items():
            np.testing.assert_array_equal(back[split][key], value)
    with pytest.raises(ValueError, match="not a synthetic predictions file"):
        read_predictions(_other_h5(tmp_path))


def _other_h5(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "something else"
    return path


# ------------------------------------------------------------------------------------ figures


def test_nearest_node_and_confusion_matrix_by_hand():
    np.testing.assert_array_equal(nearest_node([8.1, 8.9, 10.5, 9.05], [8.0, 9.0, 10.0]), [0, 1, 2, 1])
    m = confusion_matrix([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 0, 2], 3)
    np.testing.assert_allclose(m, [[2 / 3, 1 / 3, 0], [0, 1, 0], [0.5, 0, 0.5]])
    counts = confusion_matrix([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 0, 2], 4, normalise=False)
    assert counts.sum() == 6 and counts[3].sum() == 0  # an empty row stays zero, no division by zero


def test_synthetic_figures_are_written_and_deterministic(predictions, tmp_path):
    axes = {"log_age": np.array([8.0, 8.7, 9.4, 10.1]), "mh": np.array([-1.0, -0.3, 0.2]),
            "av_levels": np.arange(16) / 10, "resid_edges_pct": RESID_EDGES_PCT}
    paths = {k: tmp_path / f"{k}.png" for k in KINDS}
    plot_synthetic(predictions["test_unseen"], axes, paths, split="test_unseen")
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    again = tmp_path / "again.png"
    plot_quantity(predictions["test_unseen"], axes, "av", again, split="test_unseen")
    assert again.read_bytes() == paths["av"].read_bytes()  # no timestamps: same data, same bytes
    with pytest.raises(ValueError, match="no output path"):
        plot_synthetic(predictions["test"], axes, {"av": tmp_path / "av.png"})
    with pytest.raises(ValueError, match="no spectra"):
        plot_synthetic({**predictions["test"], "n": 0}, axes, {k: tmp_path / f"{k}.png" for k in KINDS}, split="x")


# ------------------------------------------------------------------------------------ ablation


def _record(scatter, best):
    split = {"n": 10, "pct_mse_mean": 0.3, "av_accuracy": 0.2,
             **{k: {"bias": 0.01, "scatter": scatter, "rmse": scatter, "r": 0.9} for k in ("log_age", "mh", "av")}}
    return {"training": {"best_val_loss": best, "epochs_run": 4, "n_params": 100, "seconds": 1.0},
            "synthetic": {"test": split, "test_unseen": {**split, "n": 0}}}


def test_ablation_table_by_hand():
    out = ablation_table({"none": _record(0.3, 1.2), "patch": _record(0.2, 1.0)}, chosen="patch",
                         budget={"epochs": 4})
    assert out["chosen"] == "patch" and out["budget"] == {"epochs": 4}
    assert out["table"]["none"]["test"]["log_age_scatter"] == 0.3
    assert out["table"]["patch"]["best_val_grid_loss"] == 1.0
    assert "test_unseen" not in out["table"]["patch"]  # an empty split is left out, not scored as zeros
    with pytest.raises(ValueError, match="chosen attention 'global'"):
        ablation_table({"none": _record(0.3, 1.2)}, chosen="global", budget={})
