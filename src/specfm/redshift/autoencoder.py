"""SpecPT autoencoder (paper Sec. 3.1-3.2, Fig. 3): conv blocks -> transformer encoder -> latent
tokens -> transformer decoder with cross-attention -> linear reconstruction.

Where the paper is silent we chose, and say why:
* widths (channels, d_model, feed-forward) come from config: the paper's 1.12 B parameters are a
  full-scale setting, a laptop needs a few hundred thousand;
* tokens: the conv stack's output positions (P / pool^3 of them), each with a learned position
  embedding, so a token "is" a stretch of wavelength and attention relates distant lines;
* the decoder's queries are learned per-output-token embeddings (one per token the encoder made),
  cross-attending to the latent tokens; each query's output is mapped by a linear layer to the
  `patch` pixels it owns ("linear reconstruction layers"), so the decoder cannot copy the input;
* the loss is MSE over unmasked pixels only (masked pixels carry no data, see `masked_mse`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class AEConfig:
    n_pix: int
    channels: tuple = (16, 32, 32)
    kernels: tuple = (41, 21, 11)  # the paper's
    pool: int = 4
    d_model: int = 64
    n_heads: int = 8  # the paper's
    n_layers: int = 3  # the paper's
    n_dec_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.0

    @property
    def n_tokens(self) -> int:
        n = self.n_pix
        for _ in self.kernels:
            n = n // self.pool
        return n

    @property
    def patch(self) -> int:
        return math.ceil(self.n_pix / self.n_tokens)

    def to_dict(self):
        d = asdict(self)
        d["channels"], d["kernels"] = list(self.channels), list(self.kernels)
        return d


def conv_block(c_in, c_out, k, pool):
    return nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU(),
                         nn.MaxPool1d(pool))


class Encoder(nn.Module):
    """x [B, P] -> tokens [B, T, d]."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        chans = (1, *cfg.channels)
        self.convs = nn.Sequential(*[conv_block(chans[i], chans[i + 1], k, cfg.pool)
                                     for i, k in enumerate(cfg.kernels)])
        self.proj = nn.Linear(cfg.channels[-1], cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, cfg.n_tokens, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult * cfg.d_model, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.n_tokens = cfg.n_tokens

    def forward(self, x):
        h = self.convs(x.unsqueeze(1))  # [B, C, T'] (T' >= T)
        h = h[:, :, :self.n_tokens].transpose(1, 2)  # [B, T, C]
        h = self.proj(h) + self.pos  # [B, T, d]
        return self.norm(self.transformer(h))  # [B, T, d]


class Decoder(nn.Module):
    """latent tokens [B, T, d] -> reconstruction [B, P]."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, cfg.n_tokens, cfg.d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult * cfg.d_model, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerDecoder(layer, cfg.n_dec_layers)
        self.out = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.d_model, cfg.patch))
        self.n_pix = cfg.n_pix

    def forward(self, latent):
        q = self.queries.expand(latent.shape[0], -1, -1)  # [B, T, d]
        h = self.transformer(q, latent)  # cross-attention to the latent tokens
        return self.out(h).flatten(1)[:, :self.n_pix]  # [B, T * patch] -> [B, P]


class SpecPTAutoencoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x):  # [B, P] -> [B, P]
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def latent(self, x):  # [B, P] -> [B, d]: the mean latent token (what the UMAP figure maps)
        return self.encoder(x).mean(dim=1)


def masked_mse(pred, target, mask):
    """Mean squared error over unmasked pixels (mask 1 = data); a fully masked batch gives 0."""
    m = mask.float()
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1.0)
