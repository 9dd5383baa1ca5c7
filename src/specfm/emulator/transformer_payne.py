"""TransformerPayne (Rozanski, Ting & Jablonska 2024): flux at any wavelength, conditioned on the
labels by cross-attention.

    w (B, M) log10-wavelength offset -> sin(omega_i w), i = 1..d         query stream (B, M, d)
    x (B, n_labels) -> Linear (4d) + GELU -> Linear (t*d) -> (B, t, d) -> LayerNorm   label tokens
    N x [ multi-head cross-attention (q: stream, k/v: label tokens) ; feed-forward d -> 4d -> d ]
         with ResiDual norms (Xie et al. 2023): x_post = LN(x_post + F(x_post)), x_pre += F(x_post)
    LayerNorm(x_pre + x_post) -> Linear (d) + GELU -> Linear (1)     flux deviation (B, M)

Choices where the paper is loose: the periods P_i are log-spaced (its code listing; the text says
equidistant) between the window's span and the line-width scale, both in log10(lambda), so the
slowest sine varies once across the window and the fastest resolves a line; the coordinate is
log10(lambda / lambda_min) so that sin(omega w) stays accurate in float32; x_pre accumulates the
raw sub-layer outputs as in ResiDual (the listing's garbled lines add the residual sum instead).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def frequencies(d: int, min_period: float, max_period: float) -> torch.Tensor:
    """d angular frequencies 2 pi / P, P log-spaced from max_period down to min_period."""
    periods = torch.logspace(math.log10(max_period), math.log10(min_period), d, dtype=torch.float64)
    return (2 * math.pi / periods).float()


class CrossAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        B, M, d = x.shape  # x: (B, M, d) wavelength stream; p: (B, t, d) label tokens
        h = self.heads
        q = self.q(x).view(B, M, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        k = self.k(p).view(B, -1, h, d // h).transpose(1, 2)  # (B, h, t, d/h)
        v = self.v(p).view(B, -1, h, d // h).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v)  # (B, h, M, d/h): softmax over the t tokens
        return self.o(z.transpose(1, 2).reshape(B, M, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff_mult: int):
        super().__init__()
        self.attn = CrossAttention(d, heads)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))
        self.norm_attn, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x_pre, x_post, p):
        a = self.attn(x_post, p)
        x_post, x_pre = self.norm_attn(x_post + a), x_pre + a
        f = self.ff(x_post)
        return x_pre + f, self.norm_ff(x_post + f)


class TransformerPayne(nn.Module):
    def __init__(self, n_labels: int, *, min_period: float, max_period: float, d: int = 256,
                 tokens: int = 16, blocks: int = 16, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.register_buffer("omega", frequencies(d, min_period, max_period))  # (d,)
        self.embed = nn.Sequential(nn.Linear(n_labels, 4 * d), nn.GELU(), nn.Linear(4 * d, tokens * d))
        self.norm_p = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(Block(d, heads, ff_mult) for _ in range(blocks))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.d, self.tokens = d, tokens

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x: (B, n_labels) scaled labels; w: (B, M) or (M,) log10(lambda / lambda_min)
        B = x.shape[0]
        w = w.expand(B, -1) if w.dim() == 1 else w
        stream = torch.sin(w[..., None] * self.omega)  # (B, M, d)
        p = self.norm_p(self.embed(x).view(B, self.tokens, self.d))  # (B, t, d)
        x_pre = x_post = stream
        for block in self.blocks:
            x_pre, x_post = block(x_pre, x_post, p)
        return self.head(self.norm_out(x_pre + x_post))[..., 0]  # (B, M)
