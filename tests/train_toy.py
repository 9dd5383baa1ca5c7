"""Toy training run for tests/test_train.py: tiny MLP (with dropout) on synthetic regression data.

Used by the SIGTERM test: it touches --marker once --marker-after training batches are done, so
the test knows the run is under way, and writes a JSON summary (batches this process trained,
where it resumed from) on exit, preempted or not.

    python tests/train_toy.py --ckpt DIR --out model.pt --summary s.json [--marker m]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from specfm.train import (cleanup, fit, init_distributed, rank, save_final, seed_everything,
                          setup_logging)


def make_data(seed: int, n: int) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)  # (n, 8)
    w = torch.randn(8, 1, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g)  # (n, 1)
    n_val = n // 5
    return TensorDataset(x[n_val:], y[n_val:]), TensorDataset(x[:n_val], y[:n_val])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--log")
    ap.add_argument("--marker")
    ap.add_argument("--marker-after", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # same arithmetic whatever else runs on the machine
    init_distributed()  # no-op unless started by torchrun with WORLD_SIZE > 1 (gloo on CPU)
    log = setup_logging(args.log, stderr=False)
    seed_everything(args.seed)
    train, val = make_data(args.seed, args.n)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    trained = 0

    def loss_fn(m, batch):
        nonlocal trained
        x, y = batch  # (B, 8), (B, 1)
        if m.training:
            trained += 1
            if args.marker and trained == args.marker_after:
                Path(args.marker).touch()
        return nn.functional.mse_loss(m(x), y)

    summary = {"batches": 0}
    try:
        result = fit(model, loss_fn, train, val, optimizer=opt, scheduler=sched,
                     max_epochs=args.epochs, patience=10, checkpoint_dir=args.ckpt, seed=args.seed,
                     batch_size=args.batch_size, device="cpu", progress=False, log=log)
        save_final(model, args.out, {"seed": args.seed, "best_epoch": result.best_epoch})
        summary.update(resumed_from=result.resumed_from, steps_run=result.steps_run,
                       epochs_run=result.epochs_run, history=result.history)
    finally:
        summary["batches"] = trained
        path = Path(args.summary)
        if rank():  # one summary per rank under torchrun
            path = path.with_suffix(f".rank{rank()}.json")
        path.write_text(json.dumps(summary))
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
