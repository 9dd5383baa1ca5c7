"""Shared training support for the four model stages: device, seeding, checkpoints, loop, DDP.

Plain PyTorch. `fit` is the loop; `maybe_relaunch_with_torchrun` + `init_distributed` make the
same script use N GPUs; checkpoints live outside Snakemake's outputs (`checkpoint_dir_for`).
"""

from .checkpoint import (checkpoint_dir_for, load_final, load_latest, save_checkpoint,
                         save_final, unwrap)
from .device import choose_device
from .distributed import (barrier, cleanup, init_distributed, is_main_process,
                          maybe_relaunch_with_torchrun, rank, world_size)
from specfm.logs import setup_logging
from .loop import EXIT_PREEMPTED, FitResult, Preempted, evaluate, fit
from .stream import ParquetBatchStream, arrays_from_columns
from .seeding import get_rng_state, make_generator, seed_everything, set_rng_state

__all__ = [
    "EXIT_PREEMPTED", "FitResult", "ParquetBatchStream", "Preempted", "barrier", "checkpoint_dir_for",
    "choose_device", "cleanup", "evaluate", "fit", "get_rng_state", "init_distributed",
    "is_main_process", "load_final", "load_latest", "make_generator",
    "maybe_relaunch_with_torchrun", "rank", "save_checkpoint", "save_final", "seed_everything",
    "set_rng_state", "setup_logging", "arrays_from_columns", "unwrap", "world_size",
]
