"""Pick the compute device once, the same way in every stage.

A job that was granted no GPU must not grab one that happens to be visible on a shared node, and
under DDP each process must use its own GPU (LOCAL_RANK), not all of them cuda:0.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def choose_device(gpus_granted: int | None = None) -> torch.device:
    """CUDA if available and `gpus_granted` != 0 (None = "use one if there is one"), else CPU."""
    if torch.cuda.is_available() and gpus_granted != 0:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        log.info("device: %s (%s), gpus granted: %s", device, torch.cuda.get_device_name(device),
                 gpus_granted)
    else:
        device = torch.device("cpu")
        why = "none granted" if gpus_granted == 0 else "CUDA not available"
        log.info("device: cpu (%s), %d threads", why, torch.get_num_threads())
    return device
