"""BigPayne: The Payne scaled up (the paper's 2048-2048-2048, ~54 M parameters at 22,315 pixels).

    x (B, n_labels) -> 3 x [Linear+GELU] (B, 2048) -> Linear (B, n_wave)

The same network as The Payne with more and wider layers: the paper's point is that width and
depth alone remove The Payne's saturation with training-set size.
"""

from __future__ import annotations

from .payne import Payne


class BigPayne(Payne):
    def __init__(self, n_labels: int, n_wave: int, widths=(2048, 2048, 2048)):
        super().__init__(n_labels, n_wave, widths)
