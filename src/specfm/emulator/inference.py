"""Parameter inference through an emulator (the paper's Sect. 3.5): for each star, fit the scaled
labels by Adam on the flux MSE, with per-fit gradient clipping, a warm-up + cosine schedule and
several random starting points; keep the start with the smallest final MSE.

All stars x restarts are fitted at once as one (S*R, k) tensor whose loss is the sum of the
per-fit MSEs, so each fit's gradient is its own. Labels stay inside the training range (scaled
[-0.5, 0.5], clamped after each step): an emulator says nothing outside it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .schedule import WarmupCosine


def fit_labels(emu, flux: np.ndarray, weight: np.ndarray, *, restarts: int, steps: int, lr: float,
               clip: float, warmup: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(fitted labels (S, k) in physical units, best MSE (S,), seconds) for spectra flux (S, m)."""
    S, k = len(flux), len(emu.lo)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(S * restarts, k, generator=gen) - 0.5).requires_grad_(True)  # (S*R, k)
    y = torch.as_tensor(flux, dtype=torch.float32).repeat_interleave(restarts, 0)  # (S*R, m)
    w = torch.as_tensor(weight, dtype=torch.float32).repeat_interleave(restarts, 0)
    for p in emu.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, warmup))
    start = time.perf_counter()
    for _ in range(steps):
        mse = ((emu(x) - y) ** 2 * w).sum(1) / w.sum(1)  # (S*R,)
        opt.zero_grad(set_to_none=True)
        mse.sum().backward()
        with torch.no_grad():  # clip each fit's gradient on its own
            norm = x.grad.norm(dim=1, keepdim=True)
            x.grad *= (clip / norm.clamp_min(clip))
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(-0.5, 0.5)
    with torch.no_grad():
        mse = (((emu(x) - y) ** 2 * w).sum(1) / w.sum(1)).view(S, restarts)
        best = mse.argmin(dim=1)
        xb = x.view(S, restarts, k)[torch.arange(S), best]
        labels = emu.unscale(xb).numpy()
    return labels, mse[torch.arange(S), best].numpy(), time.perf_counter() - start


def summarise(true: np.ndarray, fitted: np.ndarray, names: list[str]) -> dict:
    """Per label: bias (median of fitted - true), scatter (std), NMAD (1.4826 x MAD), n."""
    out = {}
    for j, name in enumerate(names):
        d = fitted[:, j] - true[:, j]
        d = d[np.isfinite(d)]
        out[name] = {"n": int(d.size), "bias": float(np.median(d)) if d.size else None,
                     "scatter": float(np.std(d)) if d.size else None,
                     "nmad": float(1.4826 * np.median(np.abs(d - np.median(d)))) if d.size else None}
    return out
