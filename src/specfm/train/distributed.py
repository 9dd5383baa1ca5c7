"""Multi-GPU data parallelism without a launcher in the workflow.

A training job granted N > 1 GPUs re-executes itself under torchrun (one process per GPU); the
processes then meet in `init_distributed()`. With one GPU or none everything here is a no-op, so
the same script runs unchanged on a laptop, a 1-GPU job and an N-GPU job.

Across nodes (a SLURM job with more than one node, see profiles/slurm/config.yaml) the script,
started on the first node, re-executes itself twice: first as one `srun` task per node, then
each task as a torchrun agent of an `nnodes`-node c10d rendezvous whose endpoint (MASTER_ADDR)
is the first host of SLURM_JOB_NODELIST; SLURM_PROCID 0 hosts the rendezvous store.
`slurm_rendezvous` is that mapping from the SLURM environment, kept pure so it can be tested.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("LOCAL_RANK", "WORLD_SIZE")
SLURM_STEP_MARK = "SPECFM_SLURM_STEP"  # set on the per-node srun step (value: the job id)
CPU_RANKS_ENV = "SPECFM_DDP_ON_CPU"  # "1": launch the granted slots as CPU (gloo) processes
RDZV_PORT_ENV = "SPECFM_RDZV_PORT"  # rendezvous port; default 29400 + job id % 1000
# What a nested srun may inherit from the job: its identity only. Step settings of the batch
# step (SLURM_NTASKS, SLURM_GPUS, SLURM_CPUS_PER_TASK, ...) are read by srun as defaults and
# would contradict the explicit per-node layout (as snakemake's slurm-jobstep plugin does).
SLURM_KEEP = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_CONF",
              "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST"}


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


@dataclass(frozen=True)
class SlurmRendezvous:
    """Where the torchrun agents of a multi-node SLURM job meet, from the job's environment."""

    nnodes: int  # SLURM_JOB_NUM_NODES
    node_rank: int  # SLURM_PROCID of this node's task (one task per node)
    master_addr: str  # first host of SLURM_JOB_NODELIST
    port: int
    job_id: str  # SLURM_JOB_ID: the rendezvous id, so two jobs never meet

    @property
    def endpoint(self) -> str:
        return f"{self.master_addr}:{self.port}"

    def torchrun_args(self, nproc_per_node: int) -> list[str]:
        # is_host: exactly one agent (task 0, on the first node) runs the store; no guessing
        # from host names, which fails when nodes have several names or one test host.
        return [f"--nnodes={self.nnodes}", f"--nproc_per_node={nproc_per_node}",
                "--rdzv_backend=c10d", f"--rdzv_endpoint={self.endpoint}",
                f"--rdzv_id={self.job_id}",
                f"--rdzv_conf=is_host={'true' if self.node_rank == 0 else 'false'}"]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-004,010],cpu1' -> 'gpu003' (as the first
    line of `scontrol show hostnames`, without calling scontrol)."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    if not first or first.count("[") != first.count("]"):
        raise ValueError(f"SLURM node list {nodelist!r}: cannot read its first host")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)


def slurm_rendezvous(env: Mapping[str, str] | None = None) -> SlurmRendezvous | None:
    """The rendezvous of a SLURM job over more than one node; None for one node or no SLURM.

    SLURM_JOB_NUM_NODES / SLURM_JOB_NODELIST describe the whole allocation (SLURM_NNODES /
    SLURM_NODELIST are the older names, also those of a step); SLURM_PROCID is the task's rank.
    """
    env = os.environ if env is None else env
    nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    if nnodes <= 1:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise RuntimeError(f"SLURM job over {nnodes} nodes without SLURM_JOB_NODELIST")
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "0"
    default_port = 29400 + (int(job_id) % 1000 if job_id.isdigit() else 0)
    return SlurmRendezvous(nnodes=nnodes, node_rank=int(env.get("SLURM_PROCID", 0)),
                           master_addr=first_host(nodelist),
                           port=int(env.get(RDZV_PORT_ENV) or default_port), job_id=job_id)


def torchrun_command(n_procs: int, argv: list[str],
                     rendezvous: SlurmRendezvous | None = None) -> list[str]:
    """[python -m torch.distributed.run --standalone --nproc_per_node=N (-m) target -- args...]

    With a `rendezvous`, its multi-node arguments replace --standalone.
    `python -m torch.distributed.run` is what the `torchrun` script runs; this interpreter avoids
    another environment's torchrun on PATH. The '--' stops torchrun's argparse from reading the
    script's own options (it rejects e.g. `--log` as an ambiguous abbreviation of `--log-dir`).
    """
    n_target = 2 if argv[:1] == ["-m"] else 1
    target, args = argv[:n_target], argv[n_target:]
    sep = ["--"] if args and _argparse_strips_separator() else []
    launch = (["--standalone", f"--nproc_per_node={n_procs}"] if rendezvous is None
              else rendezvous.torchrun_args(n_procs))
    return [sys.executable, "-m", "torch.distributed.run", *launch, *target, *sep, *args]


def srun_command(rendezvous: SlurmRendezvous, gpus_per_node: int, argv: list[str],
                 env: Mapping[str, str]) -> list[str]:
    """srun: one task per node of the job, each re-running this script (then as a torchrun agent).

    --overlap: the job step snakemake's slurm plugin started may still hold the first node's
    CPUs (SLURM >= 20.11 steps are exclusive by default); --kill-on-bad-exit: a failed node
    ends the others instead of leaving them waiting in the rendezvous.
    """
    n = rendezvous.nnodes
    cmd = ["srun", "--overlap", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
           "--kill-on-bad-exit=1"]
    if env.get("SLURM_CPUS_ON_NODE"):
        cmd.append(f"--cpus-per-task={env['SLURM_CPUS_ON_NODE']}")
    if gpus_per_node and env.get(CPU_RANKS_ENV) != "1":
        cmd.append(f"--gpus-per-node={gpus_per_node}")
    return [*cmd, sys.executable, *argv]


def _local_slots(n: int) -> int:
    """Processes this node can run of the n wanted: visible GPUs, or n CPU ranks if asked."""
    if os.environ.get(CPU_RANKS_ENV) == "1":
        return n
    return min(n, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _exec(cmd: list[str], env: Mapping[str, str] | None = None) -> None:
    log.info("relaunching: %s", " ".join(cmd))
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if env is None:
        os.execvp(cmd[0], cmd)
    else:
        os.execvpe(cmd[0], cmd, dict(env))


def _relaunch_across_nodes(n_gpus: int, argv: list[str], rdzv: SlurmRendezvous) -> None:
    per_node, extra = divmod(n_gpus, rdzv.nnodes)
    if extra or not per_node:
        raise ValueError(f"gpu={n_gpus} (the job's total, as sbatch --gpus) does not split evenly "
                         f"over its {rdzv.nnodes} nodes")
    if os.environ.get(SLURM_STEP_MARK) != rdzv.job_id:  # the job script, on the first node
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SRUN_", "SBATCH_")) or k in SLURM_KEEP}
        env[SLURM_STEP_MARK] = rdzv.job_id
        _exec(srun_command(rdzv, per_node, argv, os.environ), env)
        return  # only when os.exec* is mocked (tests)
    n = _local_slots(per_node)  # one srun task per node from here on
    if n < per_node:
        raise RuntimeError(f"node {rdzv.node_rank}: {per_node} GPUs per node wanted, {n} visible")
    env = {**os.environ, "MASTER_ADDR": rdzv.master_addr, "MASTER_PORT": str(rdzv.port)}
    _exec(torchrun_command(per_node, argv, rdzv), env)


def maybe_relaunch_with_torchrun(n_gpus: int | None, argv: list[str] | None = None) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node=N argv...` when N > 1 GPUs.

    In a SLURM job over several nodes N is the job's total (sbatch --gpus): the process becomes
    `srun` (one task per node), whose tasks become torchrun agents of a multi-node rendezvous
    (N / nodes processes each). Returns normally (no-op) when N <= 1 on one node, when already
    under torchrun, or when fewer than two GPUs are visible. SPECFM_DDP_ON_CPU=1 launches the N
    slots as CPU processes (gloo; tests, CPU clusters). Call it first thing in main(), before
    any CUDA use.
    """
    if not n_gpus or under_torchrun():
        return
    argv = current_argv() if argv is None else list(argv)
    rdzv = slurm_rendezvous()
    if rdzv is not None:
        _relaunch_across_nodes(n_gpus, argv, rdzv)
        return
    if n_gpus <= 1:
        return
    n = _local_slots(n_gpus)
    if n <= 1:
        log.warning("%d GPUs granted but %d visible: not relaunching under torchrun", n_gpus, n)
        return
    _exec(torchrun_command(n, argv))


def init_distributed() -> bool:
    """Join the process group if started by torchrun with WORLD_SIZE > 1; True if we did."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if torch.cuda.is_available() and os.environ.get(CPU_RANKS_ENV) != "1":
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
