"""GalProTE training set, model, loss and training (issue #3 steps 2-4) on a tiny synthetic template grid."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch

from specfm.galaxies.model import GalProTE, GalProTEConfig, clip_grid, galprote_loss
from specfm.galaxies.spectra import emission_mask, paper_wavelength_grid
from specfm.galaxies.template_table import TemplateGrid
from specfm.galaxies.training import (light_weighted, load_galprote, predict, reconstruct, synthetic_metrics,
                                      train_galprote)
from specfm.galaxies.trainset import (ROWS, add_noise, build_training_set, combination_key,
                                      is_held_out, load_split, read_meta, read_templates, smoothing_matrix,
                                      split_counts, split_tensors, table1_counts, Recipe)

N_Z, N_AGE = 3, 4
TINY = dict(size_factor=0.25, val_fraction=0.5, test_fraction=0.5, unseen_fraction=0.25)
TINY_ARCH = dict(channels=6, n_heads=3, pool=16, patch=24, d_attn=8, dropout=0.0)


def tiny_grid() -> TemplateGrid:
    """3 [M/H] x 4 ages on the paper grid: age sets the continuum slope and a Balmer-like line, [M/H]
    the depth of metal-like lines; each template divided by its median over the kept pixels."""
    wave = paper_wavelength_grid()
    mask = emission_mask(wave)
    x = (wave - 5900.0) / 1200.0
    log_age = np.array([8.0, 8.7, 9.4, 10.1])
    mh = np.array([-1.0, -0.3, 0.2])
    flux = np.empty((N_Z, N_AGE, wave.size))
    for iz, z in enumerate(mh):
        for ia, a in enumerate(log_age):
            t = (a - 8.0) / 2.1  # 0 young .. 1 old
            cont = 1.0 + (0.8 * t - 0.4) * x
            balmer = 0.3 * (1 - t) * np.exp(-0.5 * ((wave - 4861.0) / 8.0) ** 2)
            balmer += 0.2 * (1 - t) * np.exp(-0.5 * ((wave - 6563.0) / 8.0) ** 2)
            metals = sum(np.exp(-0.5 * ((wave - c) / 3.0) ** 2) for c in (5175.0, 5270.0, 5335.0, 5890.0, 6495.0))
            spec = cont * (1 - balmer - 0.08 * (1.2 + z) * (0.5 + t) * metals)
            flux[iz, ia] = spec / np.median(spec[mask])
    return TemplateGrid(wave=wave, flux=flux.astype(np.float32), log_age=log_age, mh=mh, mask=mask,
                        norm=np.ones((N_Z, N_AGE)), meta={"format": "test"})


@pytest.fixture(scope="module")
def grid():
    return tiny_grid()


@pytest.fixture(scope="module")
def trainset(grid, tmp_path_factory):
    path = tmp_path_factory.mktemp("galaxies") / "trainset.h5"
    summary = build_training_set(grid, path, seed=3, progress=False, **TINY)
    return path, summary


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------- training set


def test_table1_counts_paper():
    c = table1_counts(636, size_factor=1)
    assert c["rows"] == {"original": 636, "replica": 1272, "combo2": 1272, "combo3": 1272, "combo4": 1272,
                         "combo5": 1272, "extended": 0, "sfh": 0}
    assert c["per_level"] == 6996 and c["n_av"] == 16 and c["total"] == 111936
    s = split_counts(636, Recipe())  # paper: validation and test are the whole set with new noise
    assert s["train"] == s["validation"] == s["test"] == 111936
    assert table1_counts(150, 0.5)["per_level"] == 75 + 150 * 5
    assert table1_counts(150, 0.5, extended=2.0)["rows"]["extended"] == 150


def test_trainset_shapes_and_weights(trainset, grid):
    path, summary = trainset
    counts = summary["counts"]
    assert counts == split_counts(N_Z * N_AGE, Recipe(**TINY))
    with h5py.File(path) as h5:
        assert list(h5.attrs["av_levels"]) == pytest.approx(np.arange(16) / 10)
        assert h5.attrs["wave"].shape == (876,)
        for split, n in counts.items():
            g = h5[split]
            assert n > 0
            assert g["spectra"].shape == (n, 876) and g["spectra"].dtype == np.float32
            assert g["weights"].shape == (n, N_Z, N_AGE) and g["weights"].dtype == np.float32
            assert g["av_index"].dtype == np.int8 and g["av"].shape == (n,)
            w = g["weights"][()]
            assert w.min() >= 0
            np.testing.assert_allclose(w.sum(axis=(1, 2)), 1.0, atol=1e-5)
            np.testing.assert_allclose(g["av"][()], np.round(g["av_index"][()] * 0.1, 6), atol=1e-6)
            assert np.isfinite(g["spectra"][()]).all()
        train = h5["train"]
        n_pop = (train["components"][()] >= 0).sum(axis=1)
        per_row = {r: int((train["row"][()] == i).sum()) for i, r in enumerate(ROWS)}
        assert per_row == {r: 16 * v for r, v in summary["table1"]["rows"].items()}
        assert set(np.unique(n_pop)) == {1, 2, 3, 4, 5}
        assert np.bincount(train["av_index"][()], minlength=16).tolist() == [summary["table1"]["per_level"]] * 16


def test_smoothing_preserves_weight():
    s = smoothing_matrix(N_Z, N_AGE, 0.7)
    np.testing.assert_allclose(s.sum(axis=1), 1.0)
    g = np.exp(-1 / (2 * 0.49))
    centre = 1 / (1 + 4 * g + 4 * g * g)  # interior point keeps ~34 % of its weight
    assert s[1 * N_AGE + 1, 1 * N_AGE + 1] == pytest.approx(centre)
    w = np.random.default_rng(0).random((5, N_Z * N_AGE))
    np.testing.assert_allclose((w @ s).sum(axis=1), w.sum(axis=1))


def test_noise_levels_by_phase(grid, tmp_path):
    path = tmp_path / "nopatch.h5"
    build_training_set(grid, path, seed=5, progress=False, n_patches=(0, 0), **TINY)
    templates = read_templates(path)
    for split in ("train", "test_unseen"):
        d = load_split(path, split, ("spectra", "weights", "av", "noise_level"))
        clean = reconstruct(templates, d["weights"], d["av"])
        noise = d["spectra"].astype(np.float64) - clean
        levels, n_per = np.unique(d["noise_level"], return_counts=True)
        np.testing.assert_allclose(levels, [0.0, 0.02, 0.04], atol=1e-7)
        assert n_per.max() - n_per.min() <= 1  # thirds
        for lev in levels:
            std = noise[d["noise_level"] == lev].std()
            assert std == pytest.approx(lev, rel=0.05, abs=1e-6), (split, lev, std)


def test_noise_patches():
    rng = np.random.default_rng(1)
    ramp = np.tile(np.linspace(0.5, 1.5, 876), (400, 1))
    out, patched, count = add_noise(ramp, np.zeros(400), rng, p_masked=0.0)
    assert count.min() >= 15 and count.max() <= 25
    np.testing.assert_array_equal(out[~patched], ramp[~patched])  # nothing outside the patches
    frac = patched.mean()
    assert 0.1 < frac < 0.4  # 15-25 patches of 3-15 px on 876 px, with overlaps
    # high-noise sigma ~ U(0, 25 %): rms of the injected noise sqrt(E[s^2]) = 0.25 / sqrt(3)
    assert (out - ramp)[patched].std() == pytest.approx(0.25 / np.sqrt(3), rel=0.1)
    # one masked patch: a run of 3-15 px set to the median of the values it replaced
    for i in range(20):
        one, p, _ = add_noise(ramp[:1], [0.0], np.random.default_rng(i), n_patches=(1, 1), p_masked=1.0)
        sel = np.flatnonzero(p[0])
        assert 3 <= sel.size <= 15 and np.all(np.diff(sel) == 1)
        assert np.allclose(one[0, sel], np.median(ramp[0, sel]))


def test_unseen_combinations_disjoint(trainset):
    path, _ = trainset
    keys = {s: {combination_key(c) for c in load_split(path, s, ("components",))["components"]}
            for s in ("train", "validation", "test", "test_unseen")}
    assert keys["validation"] <= keys["train"] and keys["test"] <= keys["train"]
    assert keys["test_unseen"] and not keys["test_unseen"] & keys["train"]
    assert all(is_held_out(k, TINY["unseen_fraction"]) for k in keys["test_unseen"])
    assert not any(is_held_out(k, TINY["unseen_fraction"]) for k in keys["train"])
    # validation/test share base spectra with train but not their noise
    d = load_split(path, "test", ("spectra", "base_index"))
    t = load_split(path, "train", ("spectra",))["spectra"][d["base_index"]]
    assert not np.allclose(d["spectra"], t)


def test_trainset_deterministic(grid, tmp_path):
    kw = dict(size_factor=0.1, val_fraction=0.3, test_fraction=0.3, unseen_fraction=0.3, progress=False)
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    build_training_set(grid, a, seed=11, **kw)
    build_training_set(grid, b, seed=11, **kw)
    build_training_set(grid, c, seed=12, **kw)
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)


# ------------------------------------------------------------------------------------- model


def test_model_shapes_and_softmax():
    torch.manual_seed(0)
    cfg = GalProTEConfig(n_z=N_Z, n_age=N_AGE, **TINY_ARCH)
    model = GalProTE(cfg, log_age=np.arange(N_AGE), mh=np.arange(N_Z), av_levels=np.arange(16) / 10).eval()
    w, av_logits = model(1 + 0.1 * torch.randn(5, 876))
    assert w.shape == (5, N_Z, N_AGE) and av_logits.shape == (5, 16)
    assert torch.allclose(w.sum(dim=(1, 2)), torch.ones(5), atol=1e-6)
    assert (w > 0).all()
    assert model.av_levels[3].item() == pytest.approx(0.3)


def test_clip_grid_by_hand():
    w = np.array([[[0.50, 0.02], [0.30, 0.18]]])  # 0.02 < 5 % of 0.50 -> dropped
    out = clip_grid(w, 0.05)
    np.testing.assert_allclose(out, [[[0.50 / 0.98, 0.0], [0.30 / 0.98, 0.18 / 0.98]]])
    t = clip_grid(torch.tensor(w), 0.5)  # keep only >= 0.25
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), [[[0.5 / 0.8, 0.0], [0.3 / 0.8, 0.0]]])


def test_loss_zero_for_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    true = torch.rand(8, N_Z, N_AGE, generator=g)
    true = true / true.sum(dim=(1, 2), keepdim=True)
    av = torch.randint(0, 16, (8,), generator=g)
    perfect_logits = 50.0 * torch.nn.functional.one_hot(av, 16).float()
    total, parts = galprote_loss(true, perfect_logits, true, av)
    assert total.item() < 1e-5
    wrong = torch.roll(true, 1, dims=2)
    total2, parts2 = galprote_loss(wrong, torch.zeros(8, 16), true, av)
    assert parts2["mse"] > 0 and parts2["age"] > 0.05 and parts2["av"] > 1
    assert total2 > total + 1


def test_light_weighted_by_hand():
    log_age, mh = np.array([8.0, 8.5, 9.0, 10.0]), np.array([-1.0, 0.0, 0.2])
    w = np.zeros((2, 3, 4))
    w[0, 0, 1] = w[0, 1, 3] = 0.5  # half at (-1.0, 8.5), half at (0.0, 10.0)
    w[1, 2, 0] = 2.0  # unnormalised single population at (0.2, 8.0)
    age, z = light_weighted(w, log_age, mh)
    np.testing.assert_allclose(age, [9.25, 8.0])
    np.testing.assert_allclose(z, [-0.5, 0.2])


# ---------------------------------------------------------------------------------- training


def test_tiny_training_run(trainset, tmp_path):
    path, _ = trainset
    out = tmp_path / "galprote.pt"
    torch.set_num_threads(1)
    summary = train_galprote(path, out, epochs=3, patience=3, batch_size=32, seed=0, gpu=0,
                             checkpoint_dir=tmp_path / "ckpt", progress=False, lr=1e-3, **TINY_ARCH)
    model, meta = load_galprote(out)
    hist = meta["history"]
    assert len(hist) == 3
    # validation grid loss went down (best/untrained 0.38-0.68 over 3 training sets x 3 seeds)
    assert summary["best_val_loss"] < 0.85 * summary["val_loss_init"]
    test = load_split(path, "test", ("spectra", "weights", "av"))
    w, av = predict(model, test["spectra"], batch_size=64)
    assert w.shape == test["weights"].shape and av.shape == test["av"].shape
    np.testing.assert_allclose(w.sum(axis=(1, 2)), 1.0, atol=1e-5)
    m = read_meta(path)
    age_p, _ = light_weighted(w, m["log_age"], m["mh"])
    age_t, _ = light_weighted(test["weights"], m["log_age"], m["mh"])
    assert np.corrcoef(age_p, age_t)[0, 1] > 0.7  # 0.88-0.95 over the same 9 runs
    metrics = synthetic_metrics(model, path, batch_size=64)
    for split in ("test", "test_unseen"):
        s = metrics[split]
        assert s["n"] > 0 and set(s["log_age"]) == {"bias", "scatter", "rmse", "r"}
        assert 0 <= s["av_accuracy"] <= s["av_within_0p1"] <= 1
        assert np.isfinite(s["pct_mse_mean"]) and np.isfinite(s["resid_std_pct"])
    # a second load of the saved model gives the same predictions, bit for bit, on the same batch
    # (a different batch size may take another convolution kernel: equal only to float rounding)
    model2, _ = load_galprote(out)
    w1, _ = predict(model, test["spectra"][:10])
    w2, _ = predict(model2, test["spectra"][:10])
    np.testing.assert_array_equal(w2, w1)
    np.testing.assert_allclose(w2, w[:10], rtol=0, atol=1e-6)


def test_split_tensors_hold_the_files_rows(trainset):
    path, _ = trainset
    data = split_tensors(path, "validation")
    rows = load_split(path, "validation")
    assert len(data) == len(rows["spectra"])
    for i in (0, len(data) - 1):
        spectrum, weights, av = data[i]
        np.testing.assert_array_equal(spectrum.numpy(), rows["spectra"][i])
        np.testing.assert_array_equal(weights.numpy(), rows["weights"][i])
        assert av.dtype == torch.int64 and int(av) == int(rows["av_index"][i])


def test_a_size_factor_too_small_for_the_grid_is_a_named_error(grid, tmp_path):
    path = tmp_path / "empty.h5"
    with pytest.raises(ValueError, match=r"empty.h5: size_factor 1e-06 .* raise galaxies.trainset.size_factor"):
        build_training_set(grid, path, seed=3, progress=False, **{**TINY, "size_factor": 1e-6})
    assert not path.exists()
