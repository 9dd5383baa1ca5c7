"""The GalProTE network rewritten for graph export (ONNX Runtime, OpenVINO): same function, fewer transposes.

`torch.onnx.export` traces `nn.TransformerEncoderLayer`'s self-attention through
`F.multi_head_attention_forward`, which works sequence-first: a batch-first [B, T, C] input is
transposed to [T, B, C], split into heads as [T, B * H, d] and transposed back, so each encoder layer
carries several full-tensor Transpose nodes (14 % of OpenVINO's time on the demo model, per-node
profile in the README). `ExportEncoderLayer` is the same pre-norm layer written batch-first with one
head split ([B, T, 3, H, d] -> [3, B, H, T, d]), and `for_export` swaps it into a BatchNorm-folded copy.
Only the exported graphs use it; the eager reference (`training.predict`) keeps PyTorch's layer, and the
backend tests compare the two.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .model import GalProTE, fused_for_inference


class ExportEncoderLayer(nn.Module):
    """An evaluation-mode `nn.TransformerEncoderLayer` (batch_first, norm_first, GELU), written out."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        _check_supported(layer)
        att = layer.self_attn
        self.n_heads, self.d_head = att.num_heads, att.embed_dim // att.num_heads
        self.qkv = nn.Linear(att.embed_dim, 3 * att.embed_dim)
        self.qkv.weight.data.copy_(att.in_proj_weight.detach())
        self.qkv.bias.data.copy_(att.in_proj_bias.detach())
        self.out = att.out_proj
        self.norm1, self.norm2, self.linear1, self.linear2 = layer.norm1, layer.norm2, layer.linear1, layer.linear2

    def forward(self, x):  # x [B, T, C]
        b, t, c = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.d_head ** -0.5, qkv[1], qkv[2]  # [B, H, T, d] each
        ctx = ((q @ k.transpose(-1, -2)).softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.out(ctx)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


def _check_supported(layer: nn.TransformerEncoderLayer) -> None:
    att = layer.self_attn
    problems = [what for what, bad in (
        ("norm_first=False", not layer.norm_first),
        ("batch_first=False", not att.batch_first),
        ("an activation other than GELU", not getattr(layer, "activation_relu_or_gelu", 0) == 2),
        ("separate q/k/v projection weights", att.in_proj_weight is None),
        ("no in-projection bias", att.in_proj_bias is None),
    ) if bad]
    if problems:
        raise ValueError("export_graph.ExportEncoderLayer supports GalProTE's encoder layer only; this one has "
                         + ", ".join(problems))


def for_export(model: GalProTE) -> GalProTE:
    """A BatchNorm-folded evaluation copy of ``model`` with every encoder layer an `ExportEncoderLayer`."""
    net = fused_for_inference(model).cpu()
    for blk in net.blocks:
        if blk.encoder.norm is not None:  # GalProTE's encoders have none; the block's own norm follows
            raise ValueError("export_graph.for_export: an encoder with a final norm is not supported")
        blk.encoder = nn.Sequential(*(ExportEncoderLayer(layer) for layer in blk.encoder.layers))
    return net


__all__ = ["ExportEncoderLayer", "for_export"]
