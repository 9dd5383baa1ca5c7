"""The Payne (Ting et al. 2019): an MLP from labels to the flux of every pixel of the grid.

    x (B, n_labels) -> Linear+GELU (B, 128) -> Linear+GELU (B, 128) -> Linear (B, n_wave)

Widths come from config (the paper's 128-128; ~3 M parameters at 22,315 pixels).
"""

from __future__ import annotations

import torch
from torch import nn


class Payne(nn.Module):
    def __init__(self, n_labels: int, n_wave: int, widths=(128, 128)):
        super().__init__()
        layers, width = [], n_labels
        for w in widths:
            layers += [nn.Linear(width, w), nn.GELU()]
            width = w
        layers.append(nn.Linear(width, n_wave))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_labels) -> (B, n_wave)
        return self.net(x)
