"""The training loop shared by the four models: plain PyTorch, seeded, resumable, preemptible.

* Data order of epoch e is a permutation drawn from seed + e (data.EpochSampler), so a resumed
  run redraws it and skips the batches already done.
* At every epoch end, and on SIGTERM at the next batch boundary, the whole state (weights,
  optimizer, scheduler, counters, position in the epoch, RNG states) goes to checkpoint_dir/last.pt:
  a resumed run is bit-identical to an uninterrupted one on CPU.
* Early stopping on the validation loss; the best weights (best.pt) are restored at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, SequentialSampler
from tqdm import tqdm

from .checkpoint import BEST, LAST, load_latest, load_plain, save_checkpoint, unwrap
from .data import EpochSampler, batch_len, make_loader, shard, to_device
from .device import choose_device
from .distributed import is_distributed, rank, world_size
from specfm.logs import LOGGER
from .stream import ParquetBatchStream
from .seeding import get_rng_state, make_generator, seed_everything, set_rng_state

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM


class Preempted(SystemExit):
    """SIGTERM arrived and a checkpoint was saved; if uncaught, the process exits with 143.

    A SystemExit, so that a generic `except Exception` in the caller does not swallow it.
    """

    def __init__(self, checkpoint: Path | None, epoch: int, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step

    def __str__(self) -> str:  # the reason specfm.logs.rule_logging writes as the job's last line
        return (f"preempted by SIGTERM at epoch {self.epoch}, step {self.step}; checkpoint "
                f"{self.checkpoint or 'by rank 0'}; exit {EXIT_PREEMPTED} (a rerun resumes)")


@dataclass
class FitResult:
    best_val_loss: float
    best_epoch: int  # 0-based epoch whose weights the model holds now (with restore_best)
    epochs_run: int  # epochs completed in total, including those of preempted runs
    stopped_early: bool
    resumed_from: tuple[int, int] | None  # (epoch, step) this process started at; None if fresh
    steps_run: int  # optimizer steps taken by this process
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_loss, lr, ...

    @property
    def epochs_this_process(self) -> int:
        """Epochs this process trained (a resumed job's throughput must not count the preempted ones)."""
        return self.epochs_run - (self.resumed_from[0] if self.resumed_from else 0)


class _StopOnSignal:
    """Turns SIGTERM into a flag that the loop polls at batch boundaries."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals, self.requested, self._prev = signals, False, {}

    def _handler(self, signum, frame):
        self.requested = True  # nothing else here: the loop saves and exits at a safe point

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for s in self.signals:
                self._prev[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._prev.items():
            signal.signal(s, h)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if any rank saw the signal, so that all stop at the same step (else DDP hangs)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _sum_over_ranks(loss_x_n: torch.Tensor, n: int) -> list[float]:
    t = torch.stack([loss_x_n, loss_x_n.new_tensor(float(n))])
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn: Callable, dataset: Dataset, batch_size: int,
             device: torch.device, num_workers: int = 0) -> float:
    """Sample-weighted mean of loss_fn over `dataset` (sharded over ranks, summed under DDP)."""
    model = unwrap(model)  # plain forward: no DDP collectives, ranks may differ in batch count
    was_training = model.training
    model.eval()
    dataset = shard(dataset)
    loss_x_n, n_seen = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in make_loader(dataset, SequentialSampler(dataset), batch_size, device, num_workers):
        batch = to_device(batch, device)
        n = batch_len(batch)
        loss_x_n += loss_fn(model, batch).detach().double() * n
        n_seen += n
    model.train(was_training)
    total, count = _sum_over_ranks(loss_x_n, n_seen)
    return total / count


def _fingerprint(user: Any, **auto) -> str:
    text = json.dumps({"user": user, **auto}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fit(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        train_data: Dataset, val_data: Dataset, *, optimizer: torch.optim.Optimizer,
        max_epochs: int, patience: int | None, checkpoint_dir: str | os.PathLike, seed: int,
        batch_size: int, device: torch.device | str | None = None, scheduler=None,
        scheduler_interval: str = "epoch", val_batch_size: int | None = None,
        grad_clip: float | None = None, min_delta: float = 0.0, num_workers: int = 0,
        save_every_steps: int | None = None, restore_best: bool = True, fingerprint: Any = None,
        progress: bool | None = True, log: logging.Logger | None = None) -> FitResult:
    """Train `model` in place, resuming from checkpoint_dir/last.pt if a compatible one exists.

    loss_fn(model, batch) -> scalar mean loss over the batch; `batch` is what the dataset yields
    (collated), moved to `device`. train_data may be a `ParquetBatchStream` (rows streamed from
    Parquet through a shuffle buffer, decoded by its own workers; its order depends on seed and
    epoch only, so resume is exact). Under DDP `model` is the DDP wrapper while training: call
    `model(...)`, not other methods. Build the optimizer (and scheduler) on model.parameters()
    before calling. scheduler_interval: "epoch" or "step" (ReduceLROnPlateau: per epoch, on the
    validation loss). patience: epochs without improvement by more than min_delta before
    stopping (None: never). fingerprint: anything JSON-able that identifies the run (config,
    input checksums); a checkpoint written under another fingerprint, or by a finished run, is
    ignored and training starts afresh. progress: tqdm bars on stderr, rank 0 only (None: only
    when stderr is a terminal). On SIGTERM: saves a checkpoint, raises Preempted (exit 143).
    """
    log = log or logging.getLogger(LOGGER)
    device = torch.device(device) if device is not None else choose_device()
    if device.type == "cuda" and device.index is None:  # "cuda" -> "cuda:<current>", for DDP
        device = torch.device("cuda", torch.cuda.current_device())
    ckdir = Path(checkpoint_dir)
    main = rank() == 0
    val_batch_size = val_batch_size or batch_size
    patience = math.inf if patience is None else patience
    fp = _fingerprint(fingerprint, seed=seed, batch_size=batch_size, max_epochs=max_epochs,
                      patience=patience, min_delta=min_delta, grad_clip=grad_clip,
                      n_train=len(train_data), n_val=len(val_data), world_size=world_size(),
                      model=type(unwrap(model)).__name__,
                      n_params=sum(p.numel() for p in model.parameters()),
                      optimizer=[type(optimizer).__name__, optimizer.defaults])

    seed_everything(seed)  # the same on every rank: DDP ranks share one RNG stream (dropout...)
    model.to(device)  # in place: the optimizer's parameters are still the model's
    # Everything in `st` goes into the checkpoint. train_acc: (sum of loss * n, n) this epoch.
    st = dict(epoch=0, step=0, best_val=math.inf, best_epoch=-1, bad_epochs=0, history=[],
              train_acc=[0.0, 0.0], finished=False)
    best_state, resumed_from = None, None
    ckpt = load_latest(ckdir)
    if ckpt is not None and ckpt["fingerprint"] != fp:
        log.warning("ignoring %s: written by a run with another configuration", ckdir / LAST)
        ckpt = None
    elif ckpt is not None and ckpt["state"]["finished"]:
        log.info("%s is of a finished run: training afresh", ckdir / LAST)
        ckpt = None
    if ckpt is not None:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        st = ckpt["state"]
        if st["best_epoch"] >= 0:
            best = load_plain(ckdir / BEST)
            assert best["epoch"] == st["best_epoch"], f"{ckdir}: best.pt does not match last.pt"
            best_state = best["model"]
        set_rng_state(ckpt["rng"])
        resumed_from = (st["epoch"], st["step"])
        log.info("resuming from %s at epoch %d, step %d (best val_loss %.6g at epoch %d)",
                 ckdir / LAST, st["epoch"], st["step"], st["best_val"], st["best_epoch"])
    if is_distributed():  # under torchrun with world size > 1 (or a process group of the caller)
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def save() -> Path | None:
        if not main:
            return None
        sched_state = scheduler.state_dict() if scheduler is not None else None
        return save_checkpoint({"fingerprint": fp, "state": st, "rng": get_rng_state(),
                                "model": unwrap(model).state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": sched_state},
                               ckdir, LAST)

    streamed = isinstance(train_data, ParquetBatchStream)  # rows read from disk, not indexed
    sampler = None if streamed else EpochSampler(train_data, seed)
    steps_per_epoch = (train_data.steps_per_epoch(batch_size) if streamed
                       else math.ceil(sampler.num_samples / batch_size))
    # This rank's sum of loss * n (kept on the device: no sync per step) and n, this epoch. The
    # checkpoint holds the sums over ranks; on resume rank 0 takes them up, the others start at 0.
    loss_x_n = torch.tensor(st["train_acc"][0] if main else 0.0, dtype=torch.float64, device=device)
    n_seen = st["train_acc"][1] if main else 0
    steps_run = 0
    no_bars = True if (not main or progress is False) else (None if progress is None else False)
    bars = dict(file=sys.stderr, disable=no_bars)  # disable=None: only on a terminal
    model.train()
    with _StopOnSignal() as stop, \
            tqdm(total=max_epochs, initial=st["epoch"], desc="epochs", **bars) as epoch_bar:
        while st["epoch"] < max_epochs and not st["finished"]:
            epoch, t0 = st["epoch"], time.time()
            if streamed:
                loader = train_data.batches(epoch, batch_size, skip=st["step"],
                                            pin_memory=device.type == "cuda")
            else:
                sampler.start(epoch, skip=st["step"] * batch_size)
                loader = make_loader(train_data, sampler, batch_size, device, num_workers,
                                     make_generator(seed + epoch))  # generator: worker seeds
            with tqdm(total=steps_per_epoch, initial=st["step"], desc=f"epoch {epoch}",
                      leave=False, mininterval=0.5, **bars) as bar:
                for batch in loader:
                    batch = to_device(batch, device)  # e.g. (x: (B, n_pix), y: (B, n_labels))
                    loss = loss_fn(model, batch)  # scalar: mean over the B samples
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                    if scheduler is not None and scheduler_interval == "step":
                        scheduler.step()
                    n = batch_len(batch)
                    loss_x_n += loss.detach().double() * n
                    n_seen += n
                    st["step"] += 1
                    steps_run += 1
                    bar.update()
                    if not bar.disable and st["step"] % 20 == 0:
                        bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
                    if st["step"] == steps_per_epoch:
                        break  # epoch end: validation and checkpoint below
                    if _any_rank(stop.requested, device):
                        st["train_acc"] = _sum_over_ranks(loss_x_n, n_seen)
                        path = save()
                        log.warning("SIGTERM: checkpoint %s at epoch %d, step %d/%d; exiting",
                                    path or "by rank 0", epoch, st["step"], steps_per_epoch)
                        raise Preempted(path, epoch, st["step"])
                    if save_every_steps and st["step"] % save_every_steps == 0:
                        st["train_acc"] = _sum_over_ranks(loss_x_n, n_seen)
                        save()

            # Epoch end: validation, early stopping, checkpoint.
            total, count = _sum_over_ranks(loss_x_n, n_seen)
            train_loss = total / count
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss is {train_loss} in epoch {epoch}")
            val_loss = evaluate(model, loss_fn, val_data, val_batch_size, device, num_workers)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            if val_loss < st["best_val"] - min_delta:
                st.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
                best_state = {k: v.detach().cpu().clone()
                              for k, v in unwrap(model).state_dict().items()}
                save_checkpoint({"epoch": epoch, "val_loss": val_loss, "model": best_state},
                                ckdir, BEST)
            else:
                st["bad_epochs"] += 1
            lr = optimizer.param_groups[0]["lr"]
            seconds = time.time() - t0
            st["history"].append(dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                                      lr=lr, seconds=round(seconds, 3)))
            stopped_early = st["bad_epochs"] >= patience
            st.update(epoch=epoch + 1, step=0, train_acc=[0.0, 0.0],
                      finished=stopped_early or epoch + 1 >= max_epochs)
            loss_x_n.zero_()
            n_seen = 0
            save()
            log.info("epoch %d/%d train_loss=%.6g val_loss=%.6g lr=%.3g best=%.6g@%d "
                     "bad=%d/%s %.1fs", epoch, max_epochs, train_loss, val_loss, lr,
                     st["best_val"], st["best_epoch"], st["bad_epochs"], patience, seconds)
            epoch_bar.update()
            epoch_bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}", refresh=False)
            if stopped_early:
                log.info("early stopping: no improvement for %d epochs", st["bad_epochs"])
            elif not st["finished"] and _any_rank(stop.requested, device):
                log.warning("SIGTERM: checkpoint %s at the end of epoch %d; exiting",
                            ckdir / LAST, epoch)
                raise Preempted(ckdir / LAST if main else None, epoch + 1, 0)

    restored = restore_best and best_state is not None
    if restored:
        unwrap(model).load_state_dict(best_state)
    log.info("done: %d epochs, best val_loss=%.6g at epoch %d%s", st["epoch"], st["best_val"],
             st["best_epoch"], " (weights restored)" if restored else "")
    return FitResult(best_val_loss=st["best_val"], best_epoch=st["best_epoch"],
                     epochs_run=st["epoch"], stopped_early=st["bad_epochs"] >= patience,
                     resumed_from=resumed_from, steps_run=steps_run, history=list(st["history"]))
