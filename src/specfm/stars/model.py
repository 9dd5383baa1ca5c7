"""The Masked Stellar Autoencoder: periodic embeddings -> residual MLP encoder -> latent ->
mirrored decoder (reconstruction) and a quantile head (16/50/84 per label).

Design choices (the thesis leaves them open):
* Missing values: each feature's embedding is replaced by a learned per-feature "missing" vector
  where the value is absent or masked (an explicit mask, never a magic number fed to the network).
* Periodic embeddings (Gorishniy et al. 2022) from `rtdl_num_embeddings`, non-lite (a linear map
  per feature), on median/IQR-scaled inputs; the scaling is a buffer of the model so a saved
  model carries it and predicts from physical units.
* Quantiles cannot cross: the head predicts the median and two softplus offsets.
* Colours (``colours``, off by default): a tree splits on BP - RP directly, while an MLP over
  per-feature embeddings must learn a 0.01-mag difference of two magnitudes whose IQR is ~2 mag.
  With ``colour_pairs`` the input stage appends each pair's difference, scaled by its own
  median/IQR, as one more embedded feature. It is derived from the *visible* magnitudes after
  masking, so a colour is hidden whenever either magnitude is missing or masked, in pretraining,
  fine-tuning and prediction alike; the decoder still reconstructs the magnitudes only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from rtdl_num_embeddings import PeriodicEmbeddings
from torch import nn
from torch.nn import functional as F

QUANTILES = (0.16, 0.50, 0.84)


@dataclass
class MSAConfig:
    n_features: int
    n_labels: int
    d_embedding: int = 16
    n_frequencies: int = 16
    frequency_scale: float = 0.1
    widths: tuple[int, ...] = (512, 512, 256, 256, 128, 128, 64, 64)
    latent: int = 32
    dropout: float = 0.1
    head_width: int = 128
    head_layers: int = 5
    colour_pairs: tuple[tuple[int, int], ...] = ()  # (blue, red) feature indices; () = no colours

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """(Linear-LayerNorm-ELU-Dropout) x 2 with a skip (a projection when the width changes)."""

    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ELU(), nn.Dropout(dropout),
            nn.Linear(d_out, d_out), nn.LayerNorm(d_out), nn.ELU(), nn.Dropout(dropout))
        self.skip = nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.body(x) + self.skip(x)


def residual_stack(d_in: int, widths, dropout: float) -> nn.Sequential:
    layers, d = [], d_in
    for w in widths:
        layers.append(ResidualBlock(d, w, dropout))
        d = w
    return nn.Sequential(*layers)


class MaskedStellarAutoencoder(nn.Module):
    def __init__(self, cfg: MSAConfig, feature_center, feature_scale, label_center, label_scale,
                 colour_center=(), colour_scale=()):
        super().__init__()
        self.cfg = cfg
        f, d = cfg.n_features, cfg.d_embedding
        n_in = f + len(cfg.colour_pairs)  # embedded inputs: the features, then the colours
        self.register_buffer("feature_center", torch.as_tensor(feature_center, dtype=torch.float32))
        self.register_buffer("feature_scale", torch.as_tensor(feature_scale, dtype=torch.float32))
        self.register_buffer("label_center", torch.as_tensor(label_center, dtype=torch.float32))
        self.register_buffer("label_scale", torch.as_tensor(label_scale, dtype=torch.float32))
        if cfg.colour_pairs:
            self.register_buffer("colour_index", torch.as_tensor(cfg.colour_pairs, dtype=torch.long))
            self.register_buffer("colour_center", torch.as_tensor(colour_center, dtype=torch.float32))
            self.register_buffer("colour_scale", torch.as_tensor(colour_scale, dtype=torch.float32))
        self.embed = PeriodicEmbeddings(n_in, d, n_frequencies=cfg.n_frequencies,
                                        frequency_init_scale=cfg.frequency_scale, lite=False)
        self.missing = nn.Parameter(torch.randn(n_in, d) * 0.1)
        widths = tuple(cfg.widths)
        self.encoder = nn.Sequential(residual_stack(n_in * d, widths, cfg.dropout),
                                     nn.Linear(widths[-1], cfg.latent))
        self.decoder = nn.Sequential(residual_stack(cfg.latent, widths[::-1], cfg.dropout),
                                     nn.Linear(widths[0], f))
        head, w = [], cfg.latent
        for _ in range(cfg.head_layers - 1):
            head += [nn.Linear(w, cfg.head_width), nn.ELU()]
            w = cfg.head_width
        head.append(nn.Linear(w, cfg.n_labels * 3))
        self.head = nn.Sequential(*head)

    def scale_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical features with NaN -> (scaled values with 0 where missing, observed mask)."""
        observed = torch.isfinite(x)
        z = (x - self.feature_center) / self.feature_scale
        return torch.where(observed, z, torch.zeros_like(z)), observed

    def scale_labels(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.label_center) / self.label_scale

    def unscale_labels(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.label_scale + self.label_center

    def colours(self, z: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled features + visibility -> (scaled colours (B, C), 0 where hidden; their visibility).

        Computed from physical magnitudes (unscaled here) so the value is exactly blue - red."""
        blue, red = self.colour_index[:, 0], self.colour_index[:, 1]
        mag = z * self.feature_scale + self.feature_center
        seen = visible[:, blue] & visible[:, red]
        c = (mag[:, blue] - mag[:, red] - self.colour_center) / self.colour_scale
        return torch.where(seen, c, torch.zeros_like(c)), seen

    def inputs(self, z: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What is embedded: the features, then (with colour_pairs) the colours."""
        if not self.cfg.colour_pairs:
            return z, visible
        c, seen = self.colours(z, visible)
        return torch.cat([z, c], 1), torch.cat([visible, seen], 1)

    def encode(self, z: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        z, visible = self.inputs(z, visible)
        e = self.embed(z)
        e = torch.where(visible.unsqueeze(-1), e, self.missing.expand_as(e))
        return self.encoder(e.flatten(1))

    def forward(self, z: torch.Tensor, visible: torch.Tensor):
        """Scaled features + visibility -> (reconstruction (B, F), quantiles (B, L, 3)), scaled."""
        latent = self.encode(z, visible)
        raw = self.head(latent).view(-1, self.cfg.n_labels, 3)
        mid = raw[..., 0]
        q = torch.stack([mid - F.softplus(raw[..., 1]), mid, mid + F.softplus(raw[..., 2])], -1)
        return self.decoder(latent), q


def pinball_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss over the observed labels (NaN labels are masked out)."""
    observed = torch.isfinite(y)
    if not observed.any():
        return q.sum() * 0.0
    y0 = torch.where(observed, y, torch.zeros_like(y)).unsqueeze(-1)
    tau = q.new_tensor(QUANTILES)
    diff = y0 - q
    loss = torch.maximum(tau * diff, (tau - 1) * diff).mean(-1)
    return (loss * observed).sum() / observed.sum()


def reconstruction_loss(recon: torch.Tensor, z: torch.Tensor, observed: torch.Tensor):
    """L1 over the values that were observed (masked-out or not), never over missing ones."""
    n = observed.sum()
    if n == 0:
        return recon.sum() * 0.0
    return ((recon - z).abs() * observed).sum() / n


@dataclass
class MaskingPolicy:
    """Which inputs training hides: the XP group together with p_xp, each other non-core feature
    alone with p_other; core features (G, BP, RP, W1, W2) never."""

    xp_index: list[int] = field(default_factory=list)
    other_index: list[int] = field(default_factory=list)
    p_xp: float = 0.9
    p_other: float = 0.6

    def sample(self, observed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Visible = observed and not masked. Draws from torch's global (seeded, checkpointed) RNG,
        or, for a fixed evaluation mask, from `generator` (a CPU generator; moved to the device)."""
        b, f = observed.shape
        dev = "cpu" if generator is not None else observed.device
        hide = torch.zeros(b, f, dtype=torch.bool, device=dev)
        if self.xp_index:
            hide[:, self.xp_index] = (torch.rand(b, 1, device=dev, generator=generator)
                                      < self.p_xp).expand(b, len(self.xp_index))
        if self.other_index:
            hide[:, self.other_index] = torch.rand(b, len(self.other_index), device=dev,
                                                   generator=generator) < self.p_other
        return observed & ~hide.to(observed.device)
