"""Training checkpoints (resumable state) and final model files.

Checkpoints live outside the rule's declared outputs, because Snakemake deletes the outputs of a
failed job; a requeued job finds them again via the same `checkpoint_dir_for(output)`. Every file
is written under a temporary name and renamed into place, so a kill mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

from specfm.io import atomic_path

from .distributed import is_main_process

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
FINAL_FORMAT = "specfm-model-v1"


def checkpoint_dir_for(output_path: str | os.PathLike,
                       root: str | os.PathLike | None = None) -> Path:
    """Stable checkpoint directory for a rule output: <root>/<readable-slug>-<8-hex hash>.

    root: argument, else $SPECFM_CHECKPOINT_DIR, else results/checkpoints. The name depends on the
    output path only (relative to the working directory when it lies under it), so a rerun of the
    same job, in the same workdir, finds the same directory.
    """
    root = Path(root or os.environ.get("SPECFM_CHECKPOINT_DIR") or "results/checkpoints")
    p = Path(os.path.normpath(output_path))
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            pass
    key = p.as_posix()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[-80:]
    return root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel (state_dict keys without 'module.')."""
    return getattr(model, "module", model)


def save_checkpoint(state: dict, checkpoint_dir: str | os.PathLike,
                    name: str = LAST) -> Path | None:
    """Atomically write `state` to checkpoint_dir/name (rank 0 only); returns the path."""
    path = Path(checkpoint_dir) / name
    if not is_main_process():
        return None
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_latest(checkpoint_dir: str | os.PathLike, map_location="cpu") -> dict | None:
    """The last checkpoint in `checkpoint_dir`, or None if there is none.

    weights_only=False: the file holds RNG states (numpy arrays, tuples) and was written by us.
    """
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


def save_final(model: torch.nn.Module, path: str | os.PathLike,
               metadata: dict | None = None) -> None:
    """Atomically write {state_dict (on CPU), metadata} to `path` (rank 0 only; others no-op).

    Keep metadata to plain types (str, int, float, bool, list, dict, None): load_final uses
    torch.load(weights_only=True).
    """
    if not is_main_process():
        return
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FINAL_FORMAT, "state_dict": state, "metadata": metadata or {}}, tmp)
    log.info("wrote final model %s", path)


def load_final(path: str | os.PathLike, model: torch.nn.Module | None = None,
               map_location="cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) from a save_final file; loads the weights into `model` if given."""
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if obj.get("format") != FINAL_FORMAT:
        raise ValueError(f"{path}: not a {FINAL_FORMAT} file")
    if model is not None:
        unwrap(model).load_state_dict(obj["state_dict"])
    return obj["state_dict"], obj["metadata"]
