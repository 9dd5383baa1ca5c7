"""Toy multi-node job for tests/test_train.py: the launcher, DDP and the Parquet stream on CPU.

Started as a SLURM job script would be (a fake `srun` on PATH plays SLURM): it goes through
`maybe_relaunch_with_torchrun` like scripts/stars_train.py, joins the process group, reads one
epoch of the stream with 2 DataLoader workers, trains one epoch on it with `fit`, and writes
per rank the source_ids it read and what the launcher set up.

    python tests/ddp_launch_toy.py --gpus 2 --table t.parquet --ckpt DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from specfm.train import (ParquetBatchStream, cleanup, fit, init_distributed,
                          maybe_relaunch_with_torchrun, rank, world_size)


def ids_and_x(table) -> tuple[np.ndarray, np.ndarray]:
    """to_arrays: source_id (int64, exact) and x (float32, (rows, 1))."""
    return (table.column("source_id").to_numpy(),
            table.column("x").to_numpy().astype(np.float32)[:, None])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    maybe_relaunch_with_torchrun(args.gpus)
    torch.set_num_threads(1)
    init_distributed()
    stream = ParquetBatchStream([args.table], ids_and_x, columns=["source_id", "x", "split"],
                                where=("split", "train"), buffer_rows=64, seed=3, workers=2)
    ids = [int(i) for b in stream.batches(0, 16) for i in b[0]]

    def loss_fn(model, batch):
        _, x = batch  # (B,), (B, 1)
        return nn.functional.mse_loss(model(x), 2 * x)

    model = nn.Linear(1, 1)
    val = TensorDataset(torch.zeros(8), torch.ones(8, 1))
    result = fit(model, loss_fn, stream, val, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                 max_epochs=1, patience=None, checkpoint_dir=args.ckpt, seed=3, batch_size=16,
                 device="cpu", progress=False)
    total = torch.tensor([float(rank())])
    dist.all_reduce(total)
    record = {"rank": rank(), "world_size": world_size(), "ids": ids,
              "steps": stream.steps_per_epoch(16), "steps_run": result.steps_run,
              "rank_sum": total.item(), "group_rank": int(os.environ.get("GROUP_RANK", -1)),
              "slurm_procid": os.environ.get("SLURM_PROCID"),
              "master_addr": os.environ.get("MASTER_ADDR")}
    Path(args.out, f"rank{rank()}.json").write_text(json.dumps(record))
    cleanup()


if __name__ == "__main__":
    main()
