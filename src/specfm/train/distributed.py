"""Multi-GPU data parallelism without a launcher in the workflow.

A training job granted N > 1 GPUs re-executes itself under torchrun (one process per GPU); the
processes then meet in `init_distributed()`. With one GPU or none everything here is a no-op, so
the same script runs unchanged on a laptop, a 1-GPU job and an N-GPU job.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def under_torchrun() -> bool:
    return any(k in os.environ for k in TORCHRUN_ENV)


def current_argv() -> list[str]:
    """This process's command line as torchrun wants it: ['-m', 'pkg.mod', ...] or ['x.py', ...]."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name != "__main__":  # started with `python -m pkg.mod`
        return ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return list(sys.argv)


def _argparse_strips_separator() -> bool:
    """Does this Python's argparse drop a '--' that starts a REMAINDER (as 3.11 does)?"""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p.parse_args(["s", "--", "x"]).args == ["x"]


def torchrun_command(n_procs: int, argv: list[str]) -> list[str]:
    """[python -m torch.distributed.run --standalone --nproc_per_node=N (-m) target -- args...]

    `python -m torch.distributed.run` is what the `torchrun` script runs; this interpreter avoids
    another environment's torchrun on PATH. The '--' stops torchrun's argparse from reading the
    script's own options (it rejects e.g. `--log` as an ambiguous abbreviation of `--log-dir`).
    """
    n_target = 2 if argv[:1] == ["-m"] else 1
    target, args = argv[:n_target], argv[n_target:]
    sep = ["--"] if args and _argparse_strips_separator() else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={n_procs}", *target, *sep, *args]


def maybe_relaunch_with_torchrun(n_gpus: int | None, argv: list[str] | None = None) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node=N argv...` when N > 1 GPUs.

    Returns normally (no-op) when N <= 1, when already under torchrun, or when fewer than two GPUs
    are visible. Call it first thing in main(), before any CUDA use.
    """
    if not n_gpus or n_gpus <= 1 or under_torchrun():
        return
    n = min(n_gpus, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if n <= 1:
        log.warning("%d GPUs granted but %d visible: not relaunching under torchrun", n_gpus, n)
        return
    cmd = torchrun_command(n, current_argv() if argv is None else list(argv))
    log.info("relaunching under torchrun: %s", " ".join(cmd))
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)


def init_distributed() -> bool:
    """Join the process group if started by torchrun with WORLD_SIZE > 1; True if we did."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    log.info("process group: backend=%s rank=%d/%d", backend, dist.get_rank(),
             dist.get_world_size())
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes files and shows progress bars."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
