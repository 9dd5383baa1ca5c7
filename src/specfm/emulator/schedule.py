"""The paper's learning-rate schedule: linear warm-up from 0 over the first `warmup` fraction of
the steps, then a cosine from the peak to 0 at the last step. A class (not a lambda) so that the
LambdaLR state in a checkpoint is plain numbers."""

from __future__ import annotations

import math


class WarmupCosine:
    def __init__(self, total_steps: int, warmup: float = 0.1):
        if total_steps < 1:
            raise ValueError(f"schedule: total_steps must be >= 1, got {total_steps}")
        self.total, self.warm = int(total_steps), int(round(warmup * total_steps))

    def __call__(self, step: int) -> float:
        """Multiplier of the peak learning rate before optimizer step `step` (0-based)."""
        if step < self.warm:
            return step / self.warm
        if step >= self.total:
            return 0.0
        span = max(self.total - self.warm, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - self.warm) / span))
