"""The four emulators behind one interface, and the label scaling they share.

`Emulator` wraps a network: it scales the physical labels (log10 for labels named in `log_labels`,
then min/max of the grid's training split to [-0.5, 0.5], as The Payne does) and adds the network's
output to a fixed mean spectrum (of the spectra the model was first trained on). Every emulator
starts out predicting that mean and learns the deviation: with a few hundred steps on a laptop the
budget goes into the lines instead of the continuum level, and it is the same for all four.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .bigpayne import BigPayne
from .conv import ConvEmulator
from .payne import Payne
from .transformer_payne import TransformerPayne

MODELS = ("payne", "bigpayne", "conv", "transformer_payne")


def tp_periods(wavelength: np.ndarray, arch: dict) -> tuple[float, float]:
    """(min_period, max_period) in log10(lambda): the config's, or the window's span and half the
    line FWHM at the red end (the narrowest feature in log10(lambda))."""
    span = math.log10(wavelength[-1] / wavelength[0])
    min_p = arch.get("min_period") or arch["line_fwhm"] / (wavelength[-1] * math.log(10)) / 2
    return float(min_p), float(arch.get("max_period") or span)


def build_network(name: str, arch: dict, n_labels: int, wavelength: np.ndarray) -> nn.Module:
    n_wave = len(wavelength)
    a = {k: (tuple(v) if isinstance(v, list) else v) for k, v in arch.items()}
    if name == "payne":
        return Payne(n_labels, n_wave, **a)
    if name == "bigpayne":
        return BigPayne(n_labels, n_wave, **a)
    if name == "conv":
        return ConvEmulator(n_labels, n_wave, **a)
    if name == "transformer_payne":
        min_p, max_p = tp_periods(wavelength, arch)
        keep = {k: v for k, v in a.items() if k not in ("min_period", "max_period", "line_fwhm")}
        return TransformerPayne(n_labels, min_period=min_p, max_period=max_p, **keep)
    raise ValueError(f"emulator.models: unknown model {name!r}; choose from {MODELS}")


class Emulator(nn.Module):
    """labels (physical units) -> normalised flux, at grid pixels `idx` or on the whole grid."""

    def __init__(self, name: str, arch: dict, wavelength, mean_flux, lo, hi, log_mask):
        super().__init__()
        self.name = name
        self.net = build_network(name, arch, len(lo), np.asarray(wavelength))
        t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
        self.register_buffer("wavelength", t(wavelength, torch.float64))  # (n_wave,)
        self.register_buffer("logw", t(np.log10(np.asarray(wavelength) / wavelength[0])))  # (n_wave,)
        self.register_buffer("mean_flux", t(mean_flux))  # (n_wave,)
        self.register_buffer("lo", t(lo))
        self.register_buffer("hi", t(hi))
        self.register_buffer("log_mask", t(log_mask, torch.bool))

    def scale(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, k) physical -> (B, k) in [-0.5, 0.5] over the training range."""
        v = torch.where(self.log_mask, torch.log10(labels.clamp_min(1e-30)), labels)
        return (v - self.lo) / (self.hi - self.lo) - 0.5

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        v = (x + 0.5) * (self.hi - self.lo) + self.lo
        return torch.where(self.log_mask, 10 ** v, v)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, k) scaled labels; idx: (B, M) pixel indices or None (all pixels) -> (B, M)."""
        if self.name == "transformer_payne":  # evaluated only where asked
            w = self.logw if idx is None else self.logw[idx]
            mean = self.mean_flux if idx is None else self.mean_flux[idx]
            return mean + self.net(x, w)
        out = self.mean_flux + self.net(x)  # (B, n_wave)
        return out if idx is None else torch.gather(out, 1, idx)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 64, chunk: int = 65536) -> torch.Tensor:
        """Full-grid flux for scaled labels x (B, k), in batches; TransformerPayne also in pixel
        chunks of at most `chunk` (spectrum x pixel) queries."""
        outs = []
        n_wave = len(self.wavelength)
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            if self.name != "transformer_payne":
                outs.append(self(xb))
                continue
            step = max(1, chunk // len(xb))
            pix = torch.arange(n_wave, device=x.device)
            parts = [self(xb, pix[a:a + step].expand(len(xb), -1)) for a in range(0, n_wave, step)]
            outs.append(torch.cat(parts, dim=1))
        return torch.cat(outs) if outs else x.new_zeros((0, n_wave))


def label_range(labels: np.ndarray, names: list[str], log_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, log_mask) of the scaling from the rows given (the grid's training split)."""
    log_mask = np.array([n in set(log_labels) for n in names])
    v = np.where(log_mask, np.log10(np.clip(labels, 1e-30, None)), labels)
    lo, hi = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)  # a constant label (a fixed-Teff pretraining grid)
    return lo, hi, log_mask


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
