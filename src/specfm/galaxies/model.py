"""GalProTE (seeds/000, Sect. 3.4): four parallel attention + convolution + transformer blocks -> an
age-metallicity weight grid and an A_V class. One file, plain PyTorch; B = batch, L = pixels (876).

Where the paper is ambiguous, the choices here (each made so that the block does what the text says):

* The attention context (eq. 3-4). The paper projects "the input spectrum" to Q, K, V with d_K = 876 and
  adds the context to the spectrum. Three readings are implemented (``attention``), and an ablation
  chose between them (rule galaxies_ablation -> results/galaxies/ablation.json):

  - ``global`` (default): the literal reading. The spectrum is one token of L values, so the softmax is
    over a single score and equals 1: the context is V = W_V x (Linear(L, L), 767k weights per block),
    a learned, position-aware linear map of the whole spectrum added back to it (``GlobalContext``).
  - ``patch``: the spectrum cut into L / ``patch`` tokens of ``patch`` pixels (73 of 12 px);
    Q, K, V = LayerNorm(Linear(token)) of width ``d_attn``; context = softmax(QK^T / sqrt(d_attn)) V
    projected back to ``patch`` pixels per token, so wavelength regions attend to each other.
    (Per-pixel tokens, 876 x 876 attention maps per block, were not tried: too heavy for a CPU.)
  - ``none``: no context; the block starts at the convolution.

  ``global`` won on every synthetic score of the ablation (the numbers, their settings and the
  timing of each variant are in the README's "Measured" section and results/galaxies/ablation.json).
  Why, plausibly: the spectrum is one fixed grid, so a dense map can learn where each feature sits
  and how far the continuum slope tilts it (a global, A_V-like operation the 12-px tokens cannot
  see), while the patch attention spends the first epochs learning which tokens to mix. ``global``
  costs one (B x 876) x (876 x 876) matrix product per block.
* The encoder sees the pooled conv features as a sequence: L // ``pool`` tokens of ``channels``
  features (d_model = channels, a multiple of the 3 heads) plus a learned position embedding (the
  meaning of a feature depends on its wavelength; convolutions alone do not know where they are).
* Block outputs are flattened (position-resolved: where a feature sits in wavelength matters) and
  concatenated; each head is one fully connected layer as in the paper (``head_hidden`` > 0 adds a
  hidden GELU layer). The fan-in is large (4 x 73 x 24 = 7,008 with channels=24, pool=12), so with Adam
  each step moves a logit by ~lr x fan-in: at lr = 1e-3 the grid softmax saturates on one cell within
  ~50 steps and training stalls; lr = 1e-4 trains well (measured on the E-MILES set). ``readout="mean"``
  (mean over tokens, fan-in 4 x C) tolerates lr 1e-3 and keeps the head small for the paper's
  12 x 53 grid, but learned more slowly in our tests.
* The spectrum is centred (x - 1: spectra are median-normalised) before the blocks: the single-channel
  convolution then sees the features rather than a large constant offset, which otherwise makes
  BatchNorm's running mean (used in evaluation) lag and amplifies the train/eval gap.
* The A_V head outputs 16 class logits; the loss is cross-entropy (the issue's choice; the paper
  says MSE); A_V is the most probable class.
* Beyond the paper, off by default (``mean_head``, issue 14): a third head regresses the light-weighted
  mean log age, mean [M/H] and A_V directly, trained jointly with the paper's losses
  (`mean_head_loss`). The maps' light-weighted means otherwise come from the grid after the 5 % clip,
  which adds ~+0.06 dex of age on spread populations (README issue 14); the head's estimate does not
  depend on the clip and is continuous in A_V. Its outputs are scaled to each axis's range (mid +
  half-range x z), so the raw values stay O(1) whatever the grid. The forward pass then returns a
  third tensor ``means`` [B, 3]; with the head off the module, its outputs and its saved config are
  the paper's, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GalProTEConfig:
    n_pix: int = 876
    n_z: int = 6
    n_age: int = 25
    n_av: int = 16
    kernels: tuple = (11, 21, 31, 61)  # one parallel block per kernel size
    channels: int = 48  # conv output channels = transformer d_model (divisible by n_heads)
    n_heads: int = 3
    n_layers: int = 1  # transformer encoder layers per block
    ff_mult: int = 2  # encoder feed-forward width = ff_mult * channels
    pool: int = 8  # average-pool factor after the convolution
    patch: int = 12  # pixels per token of the attention context
    d_attn: int = 32  # width of Q, K, V in the attention context
    dropout: float = 0.1
    head_hidden: int = 0  # 0: the heads are single linear layers (the paper)
    readout: str = "flatten"  # block output: "flatten" all tokens [T*C] or "mean" over tokens [C]
    attention: str = "global"  # the block's context: "global" (one token), "patch" tokens, "none" (ablation)
    av_estimate: str = "mode"  # A_V from the class head: "mode" (the paper) or "mean" (specfm.galaxies.training.predict)
    mean_head: bool = False  # beyond the paper: regress the light-weighted mean log age, [M/H] and A_V (docstring)

    def to_dict(self) -> dict:
        """The fields as plain values; options beyond the paper are left out while off (``OFF_BY_DEFAULT``),
        so that a model and its checkpoint fingerprint stay byte-identical to one made before they existed."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if not (k in OFF_BY_DEFAULT and v == OFF_BY_DEFAULT[k])}


OFF_BY_DEFAULT = {"mean_head": False}
MEAN_NAMES = ("log_age", "mh", "av")  # the columns of the mean head's output


class Context(nn.Module):
    """Self-attention context over patch tokens of the spectrum (eq. 3): [B, L] -> [B, L]."""

    def __init__(self, n_pix: int, patch: int, d: int):
        super().__init__()
        self.patch, self.n_tok = patch, math.ceil(n_pix / patch)
        self.pad = self.n_tok * patch - n_pix
        self.q, self.k, self.v = (nn.Sequential(nn.Linear(patch, d), nn.LayerNorm(d)) for _ in range(3))
        self.out = nn.Linear(d, patch)

    def forward(self, x):  # x [B, L]
        b, n = x.shape
        tok = F.pad(x, (0, self.pad), mode="replicate").view(b, self.n_tok, self.patch)  # [B, T, patch]
        q, k, v = self.q(tok), self.k(tok), self.v(tok)  # [B, T, d] each
        # softmax(q k^T / sqrt(d)) v written out: for these small single-head shapes the fused CPU kernel
        # of F.scaled_dot_product_attention (flash) was 4.7x slower (50 vs 10.8 ms for 256 spectra, 1 thread)
        att = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5  # [B, T, T]
        ctx = att.softmax(dim=-1) @ v  # [B, T, d]
        return self.out(ctx).reshape(b, -1)[:, :n]  # [B, L]


class GlobalContext(nn.Module):
    """The literal reading of eq. 3 (the default): the whole spectrum is one token of d_K = L values.

    The softmax over a single score is 1, so the context is V = W_V x, projected back to L pixels:
    a learned linear map of the spectrum (Q and K would never receive a gradient, so they are left
    out). [B, L] -> [B, L].
    """

    def __init__(self, n_pix: int):
        super().__init__()
        self.v = nn.Linear(n_pix, n_pix)

    def forward(self, x):  # x [B, L]
        return self.v(x)


def make_context(cfg: "GalProTEConfig") -> nn.Module | None:
    """The attention context of one block, chosen by ``cfg.attention`` (module docstring)."""
    if cfg.attention == "patch":
        return Context(cfg.n_pix, cfg.patch, cfg.d_attn)
    if cfg.attention == "global":
        return GlobalContext(cfg.n_pix)
    if cfg.attention == "none":
        return None
    raise ValueError(f"GalProTE attention must be 'patch', 'global' or 'none', got {cfg.attention!r}")


class Block(nn.Module):
    """Context + spectrum -> Conv1d(k) + BatchNorm + ReLU -> AvgPool -> transformer encoder (eq. 4-7)."""

    def __init__(self, cfg: GalProTEConfig, kernel: int):
        super().__init__()
        c = cfg.channels
        self.context = make_context(cfg)  # None: no context (ablation)
        self.conv = nn.Conv1d(1, c, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(c)
        self.pool = nn.AvgPool1d(cfg.pool)
        self.n_tok = cfg.n_pix // cfg.pool
        self.pos = nn.Parameter(torch.zeros(1, self.n_tok, c))
        layer = nn.TransformerEncoderLayer(c, cfg.n_heads, cfg.ff_mult * c, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c)
        self.readout = cfg.readout

    def forward(self, x):  # x [B, L]
        h = (x if self.context is None else x + self.context(x)).unsqueeze(1)  # [B, 1, L] (eq. 4)
        h = F.relu(self.bn(self.conv(h)))  # [B, C, L] (eq. 5)
        h = self.pool(h).transpose(1, 2)  # [B, T, C] with T = L // pool (eq. 6)
        h = self.norm(self.encoder(h + self.pos))  # [B, T, C] (eq. 7)
        return h.mean(dim=1) if self.readout == "mean" else h.flatten(1)  # [B, C] or [B, T * C]


class GalProTE(nn.Module):
    """spectra [B, L] -> (weights [B, n_Z, n_age] (softmax over the grid), A_V logits [B, n_av]), and with
    ``cfg.mean_head`` a third output, means [B, 3]: light-weighted log age, [M/H] and A_V (``MEAN_NAMES``).

    The grid axes (log_age, mh) and the A_V levels are buffers, so a saved model carries them.
    """

    def __init__(self, cfg: GalProTEConfig, log_age=None, mh=None, av_levels=None):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg, k) for k in cfg.kernels)
        n_feat = len(cfg.kernels) * cfg.channels * (1 if cfg.readout == "mean" else cfg.n_pix // cfg.pool)
        self.drop = nn.Dropout(cfg.dropout)
        self.grid_head = _head(n_feat, cfg.n_z * cfg.n_age, cfg.head_hidden)
        self.av_head = _head(n_feat, cfg.n_av, cfg.head_hidden)
        for name, value, n in (("log_age", log_age, cfg.n_age), ("mh", mh, cfg.n_z),
                               ("av_levels", av_levels, cfg.n_av)):
            value = torch.zeros(n) if value is None else torch.as_tensor(value, dtype=torch.float32)
            self.register_buffer(name, value.reshape(n).clone())
        if cfg.mean_head:  # created last: the other layers draw the same initial weights as without it
            self.mean_head = _head(n_feat, len(MEAN_NAMES), cfg.head_hidden)

    def forward(self, x):  # x [B, L] median-normalised spectra
        x = x - 1.0  # centred on the median: the conv + BatchNorm then sees the features, not the offset
        f = self.drop(torch.cat([blk(x) for blk in self.blocks], dim=1))  # [B, 4 T C] or [B, 4 C]
        logits = self.grid_head(f)  # [B, n_Z * n_age]
        weights = logits.softmax(dim=1).view(-1, self.cfg.n_z, self.cfg.n_age)  # sums to 1 per spectrum
        if not self.cfg.mean_head:
            return weights, self.av_head(f)  # [B, n_Z, n_age], [B, n_av]
        mid, half = self.mean_scale()
        return weights, self.av_head(f), mid + half * self.mean_head(f)  # ..., [B, 3]

    def mean_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mid, half-range) [3] of log age, [M/H] and A_V over the grid: the mean head's output scale."""
        axes = (self.log_age, self.mh, self.av_levels)
        lo, hi = torch.stack([a.min() for a in axes]), torch.stack([a.max() for a in axes])
        return (lo + hi) / 2, ((hi - lo) / 2).clamp_min(1e-3)


def fused_for_inference(model: GalProTE) -> GalProTE:
    """An evaluation-mode copy of ``model`` with each BatchNorm folded into its convolution
    (`torch.nn.utils.fusion.fuse_conv_bn_eval`): the same function of the input up to float rounding,
    one pass less over the [B, C, L] feature maps per block. For inference only (no BatchNorm left
    to train)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for blk in fused.blocks:
        if isinstance(blk.bn, nn.BatchNorm1d):
            blk.conv, blk.bn = fuse_conv_bn_eval(blk.conv, blk.bn), nn.Identity()
    return fused


def _head(n_in: int, n_out: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


# ------------------------------------------------------------------------------------- loss


def pearson(a, b, eps: float = 1e-8):
    """Pearson correlation along the last axis: [..., n] x [..., n] -> [...]."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(-1) / ((a.square().sum(-1) * b.square().sum(-1)).sqrt() + eps)


def galprote_loss(weights, av_logits, true_weights, true_av_index, *, w_mse: float = 1.0,
                  w_age: float = 1.0, w_mh: float = 1.0, w_av: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Grid MSE + (1 - r) of the age and [M/H] marginals + A_V cross-entropy (Sect. 3.5.1).

    weights, true_weights [B, n_Z, n_age] (each sums to 1); av_logits [B, n_av]; true_av_index [B].
    ``mse`` is the squared error summed over the grid and averaged over spectra (a grid mean would
    be ~1/n_cells smaller and vanish next to the correlation terms). Returns (total, parts) where
    parts also holds ``grid`` = the terms without A_V (the early-stopping criterion).
    """
    mse = (weights - true_weights).square().sum(dim=(-2, -1)).mean()
    age = (1 - pearson(weights.sum(-2), true_weights.sum(-2))).mean()  # marginal over [M/H]: [B, n_age]
    mh = (1 - pearson(weights.sum(-1), true_weights.sum(-1))).mean()  # marginal over age: [B, n_Z]
    av = F.cross_entropy(av_logits, true_av_index.long())
    grid = w_mse * mse + w_age * age + w_mh * mh
    total = grid + w_av * av
    return total, {"mse": mse, "age": age, "mh": mh, "av": av, "grid": grid, "total": total}


MEAN_SCALE = 0.25  # dex, dex, mag: an error of this size costs 1 in `mean_head_loss`, like a poor correlation term


def mean_targets(weights, log_age, mh, av_index, av_levels) -> torch.Tensor:
    """The mean head's targets [B, 3]: light-weighted log age and [M/H] of ``weights`` [B, n_Z, n_age]
    (the stored, unclipped truth) and the A_V of each class index [B]."""
    return torch.stack([weights.sum(-2) @ log_age, weights.sum(-1) @ mh, av_levels[av_index.long()]], dim=1)


def mean_head_loss(means, target) -> torch.Tensor:
    """Mean squared error of the mean head [B, 3] in units of ``MEAN_SCALE``, averaged over the three."""
    return ((means - target) / MEAN_SCALE).square().mean()


def clip_grid(weights, frac: float = 0.05):
    """Zero the weights below ``frac`` x each spectrum's maximum and renormalise (Sect. 3.4.3).

    weights [..., n_Z, n_age] (torch or numpy; the same type comes back).
    """
    is_np = not isinstance(weights, torch.Tensor)
    w = torch.as_tensor(weights)
    peak = w.flatten(-2).amax(dim=-1)[..., None, None]  # [..., 1, 1]
    w = torch.where(w >= frac * peak, w, torch.zeros_like(w))
    w = w / w.sum(dim=(-2, -1), keepdim=True)
    return w.numpy() if is_np else w
