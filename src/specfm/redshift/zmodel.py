"""SpecPT for redshift (paper Sec. 3.3, Fig. 4): the pretrained encoder -> 5 residual MLP blocks
(Swish) -> 8-head self-attention with a residual connection -> linear -> Softplus; NMAD loss (eq. 3).

Choices where the paper is vague (and why):
* the MLP blocks and the attention act on the encoder's tokens (not on one pooled vector), so the
  attention has something to attend over ("weigh different parts of the latent representation");
* pooling before the output layer: `flatten` (concatenate the tokens, then linear) keeps where in
  wavelength a feature sits, which is what a redshift is; `mean` (average the tokens) is the
  common alternative. The metrics' ablation trains fold 0 both ways and reports both.
* the encoder is fine-tuned with the head (the paper "adapts the trained encoder").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import AEConfig, Encoder


@dataclass
class ZConfig:
    width: int = 64
    n_blocks: int = 5  # the paper's
    n_heads: int = 8  # the paper's
    pooling: str = "flatten"  # flatten | mean (see module doc)

    def to_dict(self):
        return asdict(self)


class ResidualMLP(nn.Module):
    """h + W2 swish(W1 LN(h)): a pre-norm residual block with the paper's Swish (SiLU)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, h):  # [B, T, w]
        return h + self.fc2(F.silu(self.fc1(self.norm(h))))


class SpecPTRedshift(nn.Module):
    def __init__(self, ae: AEConfig, cfg: ZConfig):
        super().__init__()
        if cfg.pooling not in ("flatten", "mean"):
            raise ValueError(f"redshift model: pooling must be flatten or mean, not {cfg.pooling!r}")
        self.ae_cfg, self.cfg = ae, cfg
        self.encoder = Encoder(ae)
        self.inp = nn.Linear(ae.d_model, cfg.width)
        self.blocks = nn.Sequential(*[ResidualMLP(cfg.width) for _ in range(cfg.n_blocks)])
        self.attn_norm = nn.LayerNorm(cfg.width)
        self.attn = nn.MultiheadAttention(cfg.width, cfg.n_heads, batch_first=True)
        n_in = cfg.width * ae.n_tokens if cfg.pooling == "flatten" else cfg.width
        self.out = nn.Linear(n_in, 1)

    def forward(self, x):  # [B, P] -> z [B]
        h = self.blocks(self.inp(self.encoder(x)))  # [B, T, w]
        a = self.attn_norm(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]  # residual around the attention
        h = h.flatten(1) if self.cfg.pooling == "flatten" else h.mean(dim=1)  # [B, T*w] or [B, w]
        return F.softplus(self.out(h)).squeeze(-1)  # z > 0


def nmad_loss(z_pred, z_true, eps: float = 1e-3):
    """Paper eq. 3: mean |z_pred - z_true| / std(z_true) over the batch (eps keeps a batch of one z finite)."""
    return (z_pred - z_true).abs().mean() / (z_true.std(unbiased=False) + eps)
