"""The export-friendly encoder layer computes what PyTorch's layer computes (issue 13, part 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_galaxies_model import N_AGE, N_Z, TINY_ARCH, tiny_grid
from torch import nn

from specfm.galaxies.export_graph import ExportEncoderLayer, for_export
from specfm.galaxies.model import GalProTE, GalProTEConfig, fused_for_inference


def _layer(**kw) -> nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    args = {"activation": "gelu", "batch_first": True, "norm_first": True, "dropout": 0.1, **kw}
    return nn.TransformerEncoderLayer(24, 3, 48, **args).eval()


def test_one_layer_equals_pytorch_layer():
    layer = _layer()
    x = torch.randn(5, 73, 24)
    with torch.inference_mode():
        want, got = layer(x), ExportEncoderLayer(layer)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_a_wrong_head_split_would_be_caught():
    """The check above can fail: the same layer with its heads mixed up differs by far more than 1e-5."""
    layer = _layer()
    bad = ExportEncoderLayer(layer)
    bad.n_heads, bad.d_head = 1, 24  # one 24-wide head instead of three of 8
    x = torch.randn(5, 73, 24)
    with torch.inference_mode():
        assert (bad(x) - layer(x)).abs().max() > 1e-3


@pytest.mark.parametrize("kw, words", [({"norm_first": False}, "norm_first=False"),
                                       ({"activation": "relu"}, "activation other than GELU"),
                                       ({"batch_first": False}, "batch_first=False")])
def test_other_layer_kinds_are_refused_by_name(kw, words):
    with pytest.raises(ValueError, match=words):
        ExportEncoderLayer(_layer(**kw))


def test_whole_network_equals_the_folded_reference():
    torch.manual_seed(1)
    grid = tiny_grid()
    model = GalProTE(GalProTEConfig(n_z=N_Z, n_age=N_AGE, **TINY_ARCH), log_age=grid.log_age, mh=grid.mh,
                     av_levels=np.arange(16) / 10).eval()
    x = torch.from_numpy((1 + 0.1 * np.random.default_rng(0).standard_normal((7, model.cfg.n_pix))).astype(np.float32))
    with torch.inference_mode():
        want, got = fused_for_inference(model)(x), for_export(model)(x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    assert all(isinstance(blk.encoder, nn.Sequential) for blk in for_export(model).blocks)
