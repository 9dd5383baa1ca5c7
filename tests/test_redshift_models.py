"""Model shapes, the NMAD loss (eq. 3) and the metrics (eq. 4, eta, bias, R^2) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specfm.redshift.autoencoder import AEConfig, SpecPTAutoencoder, masked_mse
from specfm.redshift.metrics import binned, scores
from specfm.redshift.zmodel import SpecPTRedshift, ZConfig, nmad_loss

AE = AEConfig(n_pix=1000, channels=(4, 8, 8), pool=4, d_model=16, n_heads=8, n_layers=1, n_dec_layers=1)


def test_autoencoder_shapes():
    model = SpecPTAutoencoder(AE)
    x = torch.randn(3, 1000)
    assert AE.n_tokens == 15 and model.encoder(x).shape == (3, 15, 16)
    assert model(x).shape == (3, 1000) and model.latent(x).shape == (3, 16)


@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_redshift_model_is_positive_with_one_z_per_spectrum(pooling):
    model = SpecPTRedshift(AE, ZConfig(width=16, n_blocks=5, n_heads=8, pooling=pooling))
    z = model(torch.randn(4, 1000))
    assert z.shape == (4,) and torch.all(z > 0)
    with pytest.raises(ValueError, match="pooling"):
        SpecPTRedshift(AE, ZConfig(pooling="max"))


def test_nmad_loss_by_hand():
    zt = torch.tensor([0.1, 0.3, 0.5, 0.7])
    zp = torch.tensor([0.2, 0.3, 0.4, 0.7])
    # mean |dz| = 0.05; population std of zt = sqrt(0.05) = 0.2236
    assert nmad_loss(zp, zt, eps=0.0).item() == pytest.approx(0.05 / np.sqrt(0.05), rel=1e-5)


def test_masked_mse_ignores_masked_pixels():
    pred, target = torch.zeros(1, 4), torch.tensor([[1.0, 2.0, 100.0, 3.0]])
    mask = torch.tensor([[1, 1, 0, 1]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 4 + 9) / 3)


def test_scores_by_hand():
    zt = np.array([0.0, 0.5, 1.0, 1.0])
    zp = np.array([0.001, 0.5, 1.002, 1.5])  # dz/(1+z) = 0.001, 0, 0.001, 0.25 (an outlier)
    s = scores(zp, zt)
    assert s["n"] == 4 and s["nmad"] == pytest.approx(1.48 * 0.001) and s["eta"] == 0.25
    assert s["bias"] == pytest.approx(0.001)
    ss_tot = np.sum((zt - zt.mean()) ** 2)
    assert s["r2"] == pytest.approx(1 - np.sum((zp - zt) ** 2) / ss_tot)
    assert scores([np.nan], [0.3])["n"] == 0
    b = binned(zp, zt, zt, [0.0, 0.75, 2.0])
    assert [x["n"] for x in b] == [2, 2] and b[0]["eta"] == 0.0


def fold_meta():
    """6 labelled + 2 unlabelled training spectra and 2 test ones (hash_u < 0.15)."""
    return {"hash_u": np.array([0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
            "z": np.array([0.1, 0.2, 0.3, np.nan, 0.5, 0.6, np.nan, 0.8, 0.9, 1.0])}


def test_fold_rows_splits_the_labelled_training_spectra_only():
    from specfm.redshift.training import fold_rows

    rows = [fold_rows(fold_meta(), k, 2) for k in range(2)]
    assert rows[0]["val"].tolist() == rows[1]["train"].tolist() == [2, 4, 5]  # part 0: u < 0.575, z known
    assert rows[0]["train"].tolist() == rows[1]["val"].tolist() == [7, 8, 9]


def test_more_folds_than_labelled_training_spectra_is_named():
    from specfm.redshift.training import fold_rows

    with pytest.raises(ValueError, match="s_spectra.h5: 7 folds but only 6 labelled training spectra"):
        fold_rows(fold_meta(), 0, 7, "s_spectra.h5")
    with pytest.raises(ValueError, match="fold 3 is not in 0..2"):
        fold_rows(fold_meta(), 3, 3, "s_spectra.h5")


def test_the_fullscale_autoencoder_has_the_papers_size():
    """config/fullscale.yaml builds SpecPT's autoencoder at the paper's 1,120,475,621 parameters (within
    2 %); counted on torch's meta device, so nothing is allocated."""
    from specfm import config as cfg
    from specfm.redshift.training import _ae_config

    rz = cfg.load("config/config.yaml", "config/fullscale.yaml")["redshift"]
    g = rz["grid"]
    n_pix = int(round((g["wmax"] - g["wmin"]) / g["dw"])) + 1
    with torch.device("meta"):
        model = SpecPTAutoencoder(_ae_config({"wave": np.zeros(n_pix)}, rz["model"]))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1_120_475_621 - 1) < 0.02, n
