"""Convolutional emulator: an MLP predicts a low-resolution feature map, learned up-sampling blocks
resolve the line shapes, a 1x1 convolution gives the flux, linearly interpolated to the grid.

    x (B, n_labels) -> MLP (B, widths[-1]) -> Linear (B, channels * length0) -> (B, channels, length0)
    -> n_up x [ConvTranspose k4 s2 (B, up, 2L) + GELU, Conv k3 (B, conv, 2L) + GELU, Conv k3 + GELU]
    -> Conv k1 (B, 1, length0 * 2^n_up) -> linear interpolation (B, n_wave)

The paper: MLP of three 2048-wide layers (two hidden + the one that makes the 512 x 4 map, ~9 M
parameters in all), five blocks (8 and 32 features) to 16,384, then 22,315.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvEmulator(nn.Module):
    def __init__(self, n_labels: int, n_wave: int, widths=(2048, 2048), channels: int = 4,
                 length0: int = 512, n_up: int = 5, up_features: int = 8, conv_features: int = 32):
        super().__init__()
        layers, width = [], n_labels
        for w in widths:
            layers += [nn.Linear(width, w), nn.GELU()]
            width = w
        layers.append(nn.Linear(width, channels * length0))
        self.mlp = nn.Sequential(*layers)
        blocks, c = [], channels
        for _ in range(n_up):
            blocks += [nn.ConvTranspose1d(c, up_features, 4, stride=2, padding=1), nn.GELU(),
                       nn.Conv1d(up_features, conv_features, 3, padding=1), nn.GELU(),
                       nn.Conv1d(conv_features, conv_features, 3, padding=1), nn.GELU()]
            c = conv_features
        blocks.append(nn.Conv1d(c, 1, 1))
        self.up = nn.Sequential(*blocks)
        for m in self.up:  # He init: with PyTorch's default the signal fades over the 3 * n_up
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):  # layers and only the mean is learned
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.channels, self.length0, self.n_wave = channels, length0, n_wave

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_labels) -> (B, n_wave)
        z = self.mlp(x).view(x.shape[0], self.channels, self.length0)  # (B, C, L0)
        y = self.up(z)  # (B, 1, L0 * 2^n_up)
        return F.interpolate(y, size=self.n_wave, mode="linear", align_corners=True)[:, 0]
