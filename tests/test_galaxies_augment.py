"""Training-set augmentations beyond the paper (issue 14): kinematics and a continuum tilt on the
train/validation splits, the test splits untouched. Hand-checkable line moments on the paper grid."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.galaxies.spectra import C_KMS, apply_kinematics, paper_wavelength_grid
from specfm.galaxies.trainset import Augmentation, augment_spectra, build_training_set, load_split
from test_galaxies_model import TINY, tiny_grid

FIELDS = ("spectra", "vel_kms", "sigma_kms", "tilt")


def _moments(wave, spec):
    depth = 1.0 - spec
    centre = (depth * wave).sum() / depth.sum()
    return centre, np.sqrt((depth * (wave - centre) ** 2).sum() / depth.sum())


def _line(wave, centre=5500.0, sigma=2.0):
    return 1.0 - 0.5 * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)


def test_kinematics_shift_and_broaden_a_line_by_hand():
    wave = paper_wavelength_grid()
    flux = np.stack([_line(wave)] * 3)
    out = apply_kinematics(wave, flux, np.array([0.0, 150.0, 0.0]), np.array([0.0, 0.0, 100.0]))
    c0, s0 = _moments(wave, out[0])
    c1, s1 = _moments(wave, out[1])
    c2, s2 = _moments(wave, out[2])
    assert c0 == pytest.approx(5500.0, abs=0.01)
    assert c1 - c0 == pytest.approx(5500.0 * 150.0 / C_KMS, abs=0.02)  # 2.75 A
    added = np.sqrt(s2**2 - s0**2)  # the round trip through the ln-lambda grid adds < one pixel box
    assert 5500.0 * 100.0 / C_KMS <= added <= 1.25 * 5500.0 * 100.0 / C_KMS
    np.testing.assert_allclose(out.sum(axis=1), flux.sum(axis=1), rtol=1e-4)  # flux kept


def test_tilt_is_a_smooth_multiplicative_continuum():
    wave = paper_wavelength_grid()
    aug = Augmentation(np.zeros(1), np.zeros(1), np.array([[0.1, 0.0]]))
    out = augment_spectra(wave, np.ones((1, wave.size)), aug)
    assert out[0, 0] == pytest.approx(0.9) and out[0, -1] == pytest.approx(1.1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("augment")
    plain, aug = d / "plain.h5", d / "aug.h5"
    build_training_set(tiny_grid(), plain, seed=5, progress=False, **TINY)
    build_training_set(tiny_grid(), aug, seed=5, progress=False, vel_max_kms=120.0, sigma_max_kms=200.0,
                       tilt=0.05, **TINY)
    return plain, aug


def test_augmented_splits_draw_within_their_ranges(pair):
    d = load_split(pair[1], "train", FIELDS)
    assert np.abs(d["vel_kms"]).max() <= 120.0 and np.abs(d["vel_kms"]).max() > 60.0
    assert d["sigma_kms"].min() >= 0.0 and 100.0 < d["sigma_kms"].max() <= 200.0
    assert np.abs(d["tilt"]).max() <= 0.05
    plain = load_split(pair[0], "train", FIELDS)
    assert not np.allclose(plain["spectra"], d["spectra"])  # the draws reached the spectra


@pytest.mark.parametrize("split", ["test", "test_unseen"])
def test_test_splits_stay_the_papers(pair, split):
    plain, aug = (load_split(p, split, FIELDS) for p in pair)
    np.testing.assert_array_equal(plain["spectra"], aug["spectra"])
    assert not aug["vel_kms"].any() and not aug["sigma_kms"].any() and not aug["tilt"].any()


def test_av_estimates_mode_and_mean_by_hand():
    import torch

    from specfm.galaxies.training import av_from_logits

    levels = torch.tensor([0.0, 0.1, 0.2])
    logits = torch.log(torch.tensor([[0.5, 0.5, 1e-12], [0.1, 0.2, 0.7]]))
    assert av_from_logits(logits, levels, "mode").tolist() == pytest.approx([0.0, 0.2])
    assert av_from_logits(logits, levels, "mean").tolist() == pytest.approx([0.05, 0.16])
    with pytest.raises(ValueError, match="median"):
        av_from_logits(logits, levels, "median")


def test_predict_uses_the_models_own_av_estimate():
    import torch

    from specfm.galaxies.model import GalProTE, GalProTEConfig
    from specfm.galaxies.training import predict
    from test_galaxies_model import TINY_ARCH

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(1.0, 0.05, (4, 876)).astype(np.float32)
    levels = np.round(np.linspace(0.0, 1.5, 16), 6)
    outs = {}
    for how in ("mode", "mean"):
        torch.manual_seed(0)
        cfg = GalProTEConfig(n_z=3, n_age=4, av_estimate=how, **TINY_ARCH)
        model = GalProTE(cfg, np.linspace(8, 10, 4), np.linspace(-1, 0.2, 3), levels).eval()
        outs[how] = predict(model, x)[1]
    off_level = lambda a: np.abs(a[:, None] - levels[None, :]).min(axis=1)  # noqa: E731
    assert (off_level(outs["mode"]) < 1e-6).all()
    assert (off_level(outs["mean"]) > 1e-4).all()  # continuous, between the levels
