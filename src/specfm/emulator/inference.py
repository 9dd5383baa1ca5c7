"""Parameter inference through an emulator (the paper's Sect. 3.5): for each star, fit the scaled
labels by Adam on the flux MSE, with per-fit gradient clipping, a warm-up + cosine schedule and
several random starting points; keep the start with the smallest final MSE.

The stars x restarts fits are run `batch` at a time as one (b, k) tensor whose loss is the sum of
the per-fit MSEs, so each fit's gradient is its own; Adam is elementwise and the clipping per fit,
so a fit's result does not depend on which others share its batch, and a paper-size run (256 stars
x 10 restarts x 22,315 pixels through a 16-block TransformerPayne) never holds every activation at
once. Starting points are drawn on the CPU from one seeded generator, so they are the same on any
device and batch size. Labels stay inside the training range (scaled [-0.5, 0.5], clamped after
each step): an emulator says nothing outside it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .schedule import WarmupCosine


def _fit_batch(emu, x, y, w, *, steps: int, lr: float, clip: float, warmup: float):
    """Adam + per-fit clipping + warm-up/cosine on one batch of fits -> (x (b, k), mse (b,))."""
    x = x.clone().requires_grad_(True)  # (b, k)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, warmup))
    for _ in range(steps):
        mse = ((emu(x) - y) ** 2 * w).sum(1) / w.sum(1)  # (b,)
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
        return x.detach(), ((emu(x) - y) ** 2 * w).sum(1) / w.sum(1)


def fit_labels(emu, flux: np.ndarray, weight: np.ndarray, *, restarts: int, steps: int, lr: float,
               clip: float, warmup: float, seed: int, device=None,
               batch: int = 256) -> tuple[np.ndarray, np.ndarray, float]:
    """(fitted labels (S, k) in physical units, best MSE (S,), seconds) for spectra flux (S, m),
    on `device` (default: the emulator's), `batch` fits (star x restart) at a time."""
    S, k = len(flux), len(emu.lo)
    if S == 0:
        return np.zeros((0, k)), np.zeros(0), 0.0
    device = torch.device(device) if device is not None else emu.lo.device
    emu = emu.to(device)
    for p in emu.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(S * restarts, k, generator=gen) - 0.5  # (S*R, k), star-major
    xs, mses = [], []
    start = time.perf_counter()
    for a in range(0, S * restarts, batch):
        rows = torch.arange(a, min(a + batch, S * restarts)) // restarts  # star of each fit
        y = torch.as_tensor(flux[rows.numpy()], dtype=torch.float32, device=device)  # (b, m)
        w = torch.as_tensor(weight[rows.numpy()], dtype=torch.float32, device=device)
        x, mse = _fit_batch(emu, x0[a:a + batch].to(device), y, w, steps=steps, lr=lr, clip=clip,
                            warmup=warmup)
        xs.append(x)
        mses.append(mse)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        mse = torch.cat(mses).view(S, restarts)
        best = mse.argmin(dim=1)
        xb = torch.cat(xs).view(S, restarts, k)[torch.arange(S, device=device), best]
        labels = emu.unscale(xb).cpu().numpy()
    return labels, mse[torch.arange(S, device=device), best].cpu().numpy(), seconds


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
