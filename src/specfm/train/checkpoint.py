"""Training checkpoints (resumable state) and final model files.

Checkpoints live outside the rule's declared outputs, because Snakemake deletes the outputs of a
failed job; a requeued job finds them again via the same `checkpoint_dir_for(output)`. Every file
is written under a temporary name and renamed into place, so a kill mid-write leaves the previous
checkpoint intact.

Every file here is read with ``torch.load(weights_only=True)``: anyone who can write to
results/checkpoints/ must not be able to run code in the next training job, which a full pickle
allows. So a checkpoint holds plain data only (tensors, numbers, strings, None, lists, tuples,
dicts); numpy arrays and scalars, which the RNG state contains, are stored as tagged lists and
turned back into numpy on load, so callers see what they saved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from specfm.io import atomic_path

from .distributed import is_main_process

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
FINAL_FORMAT = "specfm-model-v1"
_NDARRAY = "__specfm_ndarray__"  # tag of a numpy array stored as {tag: dtype, "shape", "data"}
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(RuntimeError):
    """A checkpoint file that is not plain data (or not readable): refused, never executed."""


def _encode(obj, key: str = "<state>"):
    """`obj` with numpy values as plain data; TypeError naming the key of anything else."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"checkpoint state key '{key}': numpy object arrays cannot be stored")
        return {_NDARRAY: obj.dtype.str, "shape": list(obj.shape), "data": obj.ravel().tolist()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):  # unchanged containers are kept as they are (a state_dict's _metadata)
        new = {k: _encode(v, f"{key}.{k}" if key != "<state>" else str(k)) for k, v in obj.items()}
        return obj if all(new[k] is v for k, v in obj.items()) else type(obj)(new)
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{key}.{i}") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"checkpoint state key '{key}' holds a {type(obj).__name__}: keep checkpoint state to "
                    "tensors, numbers, strings, lists, tuples, dicts and numpy arrays (loaded with "
                    "torch.load(weights_only=True))")


def _decode(obj):
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return np.asarray(obj["data"], dtype=np.dtype(obj[_NDARRAY])).reshape(obj["shape"])
        new = {k: _decode(v) for k, v in obj.items()}
        return obj if all(new[k] is v for k, v in obj.items()) else type(obj)(new)
    if isinstance(obj, (list, tuple)):
        items = [_decode(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    return obj


def load_plain(path: str | os.PathLike, map_location="cpu"):
    """torch.load(weights_only=True) of a checkpoint file, numpy values restored; CheckpointError if
    the file holds anything else (e.g. a pickled callable), with nothing executed."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{path}: refused: not plain data (torch.load weights_only=True: {reason}); a checkpoint "
            "holds only tensors, numbers, strings, lists and dicts; delete the file to train afresh"
        ) from None
    return _decode(obj)


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
    plain = _encode(state)  # before anything is written: a bad state leaves the old file alone
    with atomic_path(path) as tmp:
        torch.save(plain, tmp)
    return path


def load_latest(checkpoint_dir: str | os.PathLike, map_location="cpu") -> dict | None:
    """The last checkpoint in `checkpoint_dir`, or None if there is none (CheckpointError if it is
    not plain data: see the module docstring)."""
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        return None
    return load_plain(path, map_location=map_location)


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
