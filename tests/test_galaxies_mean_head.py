"""GalProTE's mean head (beyond the paper, issue 14): shapes, training, the off switch, every inference
backend, and the maps reading it when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_galaxies_model import N_AGE, N_Z, TINY_ARCH, grid, tiny_grid, trainset  # noqa: F401 (fixtures)

from specfm.galaxies import fast_inference as fi
from specfm.galaxies.model import MEAN_SCALE, GalProTE, GalProTEConfig, mean_head_loss, mean_targets
from specfm.galaxies.fast_inference import estimates
from specfm.galaxies.training import light_weighted, load_galprote, predict, synthetic_metrics, train_galprote
from specfm.galaxies.trainset import load_split

AV_LEVELS = np.arange(16) / 10


def tiny_model(mean_head: bool, seed: int = 3) -> GalProTE:
    torch.manual_seed(seed)
    grid = tiny_grid()
    cfg = GalProTEConfig(n_z=N_Z, n_age=N_AGE, mean_head=mean_head, **TINY_ARCH)
    return GalProTE(cfg, log_age=grid.log_age, mh=grid.mh, av_levels=AV_LEVELS).eval()


def test_head_shapes_and_range():
    model = tiny_model(True)
    w, logits, means = model(1 + 0.1 * torch.randn(5, 876))
    assert w.shape == (5, N_Z, N_AGE) and logits.shape == (5, 16) and means.shape == (5, 3)
    mid, half = model.mean_scale()  # log age 8.0-10.1, [M/H] -1.0-0.2, A_V 0-1.5
    np.testing.assert_allclose(mid.numpy(), [9.05, -0.4, 0.75], atol=1e-6)
    np.testing.assert_allclose(half.numpy(), [1.05, 0.6, 0.75], atol=1e-6)


def test_off_switch_is_the_papers_model():
    """Off: two outputs, no extra weights, the config record of before the option; the shared layers
    draw the same initial weights either way (the head is created last)."""
    off, on = tiny_model(False), tiny_model(True)
    assert "mean_head" not in off.cfg.to_dict() and on.cfg.to_dict()["mean_head"] is True
    assert set(on.state_dict()) - set(off.state_dict()) == {"mean_head.weight", "mean_head.bias"}
    for k, v in off.state_dict().items():
        assert torch.equal(v, on.state_dict()[k]), k
    x = 1 + 0.1 * torch.randn(4, 876)
    out_off, out_on = off(x), on(x)
    assert len(out_off) == 2 and torch.equal(out_off[0], out_on[0]) and torch.equal(out_off[1], out_on[1])
    with pytest.raises(ValueError, match="no mean head"):
        predict(off, x.numpy(), with_means=True)


def test_loss_is_zero_at_the_truth_and_scaled():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(6, N_Z, N_AGE, generator=g)
    w = w / w.sum(dim=(1, 2), keepdim=True)
    log_age, mh = torch.tensor([8.0, 8.7, 9.4, 10.1]), torch.tensor([-1.0, -0.3, 0.2])
    av_index = torch.tensor([0, 3, 5, 15, 1, 2])
    target = mean_targets(w, log_age, mh, av_index, torch.tensor(AV_LEVELS, dtype=torch.float32))
    age, z = light_weighted(w.numpy(), log_age.numpy(), mh.numpy())
    np.testing.assert_allclose(target[:, 0].numpy(), age, rtol=1e-6)
    np.testing.assert_allclose(target[:, 1].numpy(), z, rtol=1e-5)
    np.testing.assert_allclose(target[:, 2].numpy(), AV_LEVELS[av_index.numpy()], atol=1e-7)
    assert mean_head_loss(target, target).item() == 0.0
    assert mean_head_loss(target + MEAN_SCALE, target).item() == pytest.approx(1.0)


def test_training_with_the_head_learns_it(trainset, tmp_path):  # noqa: F811
    path, _ = trainset
    out = tmp_path / "galprote.pt"
    torch.set_num_threads(1)
    summary = train_galprote(path, out, epochs=3, patience=3, batch_size=32, seed=0, gpu=0,
                             checkpoint_dir=tmp_path / "ckpt", progress=False, lr=1e-3, mean_head=True, **TINY_ARCH)
    model, meta = load_galprote(out)
    assert model.cfg.mean_head and meta["loss_weights"]["w_mean"] == 1.0
    assert summary["best_val_loss"] < 0.85 * summary["val_loss_init"]  # grid + head criterion went down
    test = load_split(path, "test", ("spectra", "weights", "av"))
    w, av, means = predict(model, test["spectra"], 64, with_means=True)
    age_t, mh_t = light_weighted(test["weights"], model.log_age.numpy(), model.mh.numpy())
    assert np.corrcoef(means[:, 0], age_t)[0, 1] > 0.7
    assert np.abs(means[:, 2] - test["av"]).mean() < 0.35  # from ~0.4 mag, the spread of U(0, 1.5)
    m = synthetic_metrics(model, path, batch_size=64)["test"]
    assert set(m["head"]) >= {"log_age", "mh", "av"} and m["head"]["log_age"]["r"] > 0.7


def test_off_switch_trains_the_same_model(trainset, tmp_path):  # noqa: F811
    """mean_head=False given or left out: the same weights and the same record but for the wall-clock
    times (the paper's path unchanged)."""
    path, _ = trainset
    torch.set_num_threads(1)
    kw = dict(epochs=1, patience=3, batch_size=32, seed=0, gpu=0, progress=False, lr=1e-3, **TINY_ARCH)
    train_galprote(path, tmp_path / "a.pt", checkpoint_dir=tmp_path / "ca", **kw)
    train_galprote(path, tmp_path / "b.pt", checkpoint_dir=tmp_path / "cb", mean_head=False, **kw)
    (a, meta_a), (b, meta_b) = load_galprote(tmp_path / "a.pt"), load_galprote(tmp_path / "b.pt")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    def timeless(meta):
        return {k: v for k, v in meta.items() if k not in ("history", "summary")}
    assert timeless(meta_a) == timeless(meta_b)
    assert "mean_head" not in meta_a["config"] and "w_mean" not in meta_a["loss_weights"]


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_backends_pass_the_head_through(backend):
    model = tiny_model(True)
    with torch.no_grad():
        model.grid_head.weight.mul_(5.0)
    spectra = (1 + 0.05 * np.random.default_rng(0).standard_normal((70, 876))).astype(np.float32)
    ref = fi.run_batches(fi.runner(model, "eager", threads=1), spectra, 32)
    got = fi.run_batches(fi.runner(model, backend, threads=1, batch_size=32), spectra, 32)
    assert len(ref) == len(got) == 3 and got[2].shape == (70, 3)
    d = fi.compare(model, ref, got)
    assert d["within_tolerance"] and d["means_max"] < 1e-4
    w, av, means = fi.predict(model, spectra, 32, backend=backend, threads=1, with_means=True)
    np.testing.assert_allclose(means, predict(model, spectra, 32, with_means=True)[2], atol=1e-4)
    assert len(fi.predict(model, spectra, 32, backend=backend, threads=1)) == 2  # the paper's pair unless asked
    shifted = (ref[0], ref[1], ref[2] + 0.01)  # a head 0.01 off everywhere is out of tolerance
    assert not fi.compare(model, ref, shifted)["within_tolerance"]


def test_estimates_choose_the_grid_or_the_head():
    model = tiny_model(True)
    grid = tiny_grid()
    spectra = (1 + 0.05 * np.random.default_rng(1).standard_normal((9, 876))).astype(np.float32)
    eager = {"backend": "eager"}
    g = estimates(model, spectra, grid.log_age, grid.mh, estimate="grid", inference=eager)
    h = estimates(model, spectra, grid.log_age, grid.mh, estimate="head", inference=eager)
    w, av, means = predict(model, spectra, with_means=True)
    age, mh = light_weighted(w, grid.log_age, grid.mh)
    np.testing.assert_array_equal(g["log_age"], age)
    np.testing.assert_array_equal(g["av"], av)
    np.testing.assert_array_equal(h["log_age"], means[:, 0])
    np.testing.assert_array_equal(h["av"], means[:, 2])
    np.testing.assert_array_equal(h["weights"], g["weights"])  # residuals: always the grid's
    with pytest.raises(ValueError, match="estimate 'nonsense'"):
        estimates(model, spectra, grid.log_age, grid.mh, estimate="nonsense")


def test_maps_use_the_head_when_asked(tmp_path):
    from astropy.io import fits
    from test_galaxies_ppxf import LOG_AGE, MH, make_bins, toy_spectrum, toy_templates

    from specfm.galaxies.cube import write_bins
    from specfm.galaxies.steps import model_maps
    from specfm.galaxies.template_table import write_template_table
    from specfm.galaxies.training import MODEL_FORMAT
    from specfm.train import save_final

    templates = toy_templates()
    rng = np.random.default_rng(2)
    pairs = [toy_spectrum(templates, w, 0.3, rng=rng) for w in (np.eye(2, 3), np.ones((2, 3)) / 6)]
    write_bins(make_bins(templates, [p[0] for p in pairs], [p[1] for p in pairs], [[0, 1]]), tmp_path / "bins.h5")
    write_template_table(templates, tmp_path / "templates.h5")
    torch.manual_seed(0)
    cfg = GalProTEConfig(n_z=2, n_age=3, kernels=(11,), channels=6, n_heads=3, d_attn=8, pool=8, mean_head=True)
    model = GalProTE(cfg, LOG_AGE, MH, AV_LEVELS)
    save_final(model, tmp_path / "model.pt", {"format": MODEL_FORMAT, "config": cfg.to_dict(), "log_age": LOG_AGE.tolist(),
                                               "mh": MH.tolist(), "av_levels": AV_LEVELS.tolist()})
    args = (tmp_path / "bins.h5", tmp_path / "model.pt", tmp_path / "templates.h5")
    for estimate in ("grid", "head"):
        model_maps(*args, tmp_path / f"{estimate}.fits", clip_frac=0.05, estimate=estimate,
                   inference={"backend": "onnx", "threads": 1})
    model, _ = load_galprote(tmp_path / "model.pt")
    from specfm.galaxies.cube import read_bins

    _, _, means = predict(model, read_bins(tmp_path / "bins.h5").spectra, with_means=True)
    with fits.open(tmp_path / "head.fits") as head, fits.open(tmp_path / "grid.fits") as grid:
        for i, name in enumerate(("LOGAGE", "MH", "AV")):
            np.testing.assert_allclose(head[name].data[0], means[:, i], atol=1e-4)
            assert not np.allclose(head[name].data, grid[name].data)
        np.testing.assert_array_equal(head["RESID_STD"].data, grid["RESID_STD"].data)
        assert head[0].header["ESTIMATE"] == "head" and "ESTIMATE" not in grid[0].header
    record = json.loads((tmp_path / "grid.fits.prov.json").read_text())
    assert "estimate" not in record["params"]  # the paper's path: the record it had before the option


def test_config_refuses_the_head_estimate_without_the_head(tmp_path):
    from specfm import config as cfg

    over = tmp_path / "over.yaml"
    over.write_text("galaxies:\n  estimate: head\n")
    with pytest.raises(cfg.ConfigError, match="needs galaxies.model.mean_head true"):
        cfg.load("config/config.yaml", over)
    over.write_text("galaxies:\n  estimate: head\n  model: {mean_head: true}\n")
    assert cfg.load("config/config.yaml", over)["galaxies"]["estimate"] == "head"
