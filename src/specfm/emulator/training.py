"""Steps-based training of one emulator through specfm.train.fit (seeded, checkpointed, resumable).

The paper counts optimizer steps, not epochs: here an "epoch" of `fit` is `eval_every` steps of
`batch_size` spectra drawn from a dataset of indices into the training subset, so the validation
loss (MSE on the val split, full grid) is taken every `eval_every` steps and the best weights are
kept (the paper reports the best validation value). AdamW, the warm-up + cosine schedule per step,
MSE on the flux. TransformerPayne sees `n_wave_train` random pixels of each spectrum per step (the
paper: 8,192 of 22,315); the others the whole grid. Pixels repaired in the grid are left out.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from specfm.io import sha256_file
from specfm.train import (checkpoint_dir_for, choose_device, fit, load_final, save_final,
                          seed_everything, unwrap)

from .grid import Grid, GridError, domain_rows, read, training_rows
from .models import Emulator, label_range, n_params
from .schedule import WarmupCosine
from .scores import maqe

log = logging.getLogger("specfm.emulator")


class ValRecorder:
    """MSE / MAE / MAQE_0.95 of every validation pass, collected from the loss function's eval
    calls (fit records only the loss)."""

    def __init__(self):
        self.current, self.passes = [], []

    def add(self, abs_err: torch.Tensor):
        self.current.append(abs_err.detach().cpu().numpy().ravel())

    def flush(self):
        if self.current:
            a = np.concatenate(self.current)
            self.passes.append({"mse": float(np.mean(a ** 2)), "mae": float(a.mean()),
                                "maqe_0.95": maqe(a)})
            self.current = []


def tensors(grid: Grid, rows: np.ndarray, scale) -> tuple[torch.Tensor, ...]:
    x = scale(torch.as_tensor(grid.labels[rows], dtype=torch.float32))
    y = torch.as_tensor(grid.flux[rows], dtype=torch.float32)
    mask = grid.pixel_mask[rows] if grid.pixel_mask is not None else np.zeros(y.shape, bool)
    return x, y, torch.as_tensor(~mask, dtype=torch.float32)


def make_loss(x, y, w, n_wave_train: int | None, recorder: ValRecorder):
    """loss_fn(model, batch): a training batch is (indices,), a validation batch (x, y, w)."""

    def loss_fn(model, batch):
        core = unwrap(model)
        if len(batch) == 1:  # training: spectra by index, TransformerPayne on random pixels
            recorder.flush()
            i = batch[0]
            xb, yb, wb = x[i], y[i], w[i]
            if core.name == "transformer_payne" and n_wave_train and n_wave_train < yb.shape[1]:
                pix = torch.rand(yb.shape, device=yb.device).argsort(dim=1)[:, :n_wave_train]
                yb, wb = torch.gather(yb, 1, pix), torch.gather(wb, 1, pix)
                pred = model(xb, pix)
            else:
                pred = model(xb)
            return (wb * (pred - yb) ** 2).sum() / wb.sum().clamp_min(1.0)
        xb, yb, wb = batch
        pred = core.predict(xb, batch=len(xb))
        recorder.add(torch.abs(pred - yb)[wb > 0])
        return (wb * (pred - yb) ** 2).sum() / wb.sum().clamp_min(1.0)

    return loss_fn


def select_rows(grid: Grid, mode: str, size, seed: int, domain: dict | None):
    """(training rows, validation rows) of a run: a nested subset of the training split, or
    (pretraining) every training / validation spectrum inside the restricted domain."""
    if mode == "pretrain":
        key = "emulator.pretraining.domain"
        return domain_rows(grid, grid.rows("train"), domain, key), domain_rows(grid, grid.rows("val"), domain, key)
    return training_rows(grid, size, seed), grid.rows("val")


def build_emulator(name: str, arch: dict, grid: Grid, mean_flux, log_labels) -> Emulator:
    lo, hi, log_mask = label_range(grid.labels[grid.rows("train")], grid.label_names, log_labels)
    return Emulator(name, arch, grid.wavelength, mean_flux, lo, hi, log_mask)


def load_emulator(path) -> tuple[Emulator, dict]:
    state, meta = load_final(path)
    wave = np.asarray(meta["wavelength"])
    model = Emulator(meta["model"], meta["arch"], wave, np.zeros(len(wave)), meta["lo"], meta["hi"],
                     meta["log_mask"])
    model.load_state_dict(state)
    model.eval()
    return model, meta


def train_emulator(grid_path, out, *, model: str, arch: dict, train: dict, mode: str, size, seed: int,
                   subset_seed: int, log_labels=(), domain: dict | None = None, init=None,
                   gpu: int | None = 0, threads: int | None = None, progress: bool | None = True) -> dict:
    """Train one emulator (mode scratch / pretrain / finetune) and save it with its history."""
    if threads:
        torch.set_num_threads(threads)
    grid = read(grid_path)
    rows, val_rows = select_rows(grid, mode, size, subset_seed, domain)
    if len(val_rows) == 0:
        raise GridError(f"{grid_path}: the validation split is empty")
    seed_everything(seed)
    emu = build_emulator(model, arch, grid, grid.flux[rows].mean(axis=0), log_labels)
    if init is not None:
        state, meta = load_final(init)
        if meta["model"] != model or meta["arch"] != arch:
            raise ValueError(f"{init}: pretrained as {meta['model']} {meta['arch']}, fine-tuning asks "
                             f"for {model} {arch}")
        emu.load_state_dict(state)
    device = choose_device(gpu)
    x, y, w = (t.to(device) for t in tensors(grid, rows, emu.scale))
    val = TensorDataset(*tensors(grid, val_rows, emu.scale))
    B, every = train["batch_size"], train["eval_every"]
    epochs = math.ceil(train["steps"] / every)
    steps = epochs * every
    index = TensorDataset(torch.arange(every * B) % len(rows))
    recorder = ValRecorder()
    opt = torch.optim.AdamW(emu.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, train["warmup"]))
    log.info("%s %s n=%s: %d parameters, %d training / %d validation spectra, %d steps of %d",
             model, mode, size, n_params(emu), len(rows), len(val_rows), steps, B)
    start = time.perf_counter()
    result = fit(emu, make_loss(x, y, w, train.get("n_wave_train"), recorder), index, val,
                 optimizer=opt, scheduler=sched, scheduler_interval="step", max_epochs=epochs,
                 patience=None, seed=seed, batch_size=B, val_batch_size=train["val_batch_size"],
                 device=device, checkpoint_dir=checkpoint_dir_for(out), progress=progress, log=log,
                 fingerprint={"model": model, "arch": arch, "train": train, "mode": mode, "size": size,
                              "domain": domain, "init": str(init) if init else None,
                              "grid": sha256_file(grid_path)})
    recorder.flush()
    seconds = time.perf_counter() - start
    emu.cpu()
    history = [{**h, "step": (h["epoch"] + 1) * every} for h in result.history]
    for h, extra in zip(history[len(history) - len(recorder.passes):], recorder.passes):
        h.update(extra)  # a resumed run has the extra metrics of its own passes only
    summary = {"model": model, "mode": mode, "size": size, "n_train": int(len(rows)),
               "n_val": int(len(val_rows)), "steps": steps, "n_params": n_params(emu),
               "best_val_mse": result.best_val_loss, "best_step": (result.best_epoch + 1) * every,
               "history": history, "seconds": round(seconds, 2)}
    save_final(emu, out, metadata={
        "model": model, "arch": arch, "train": train, "wavelength": grid.wavelength.tolist(),
        "label_names": grid.label_names, "lo": emu.lo.tolist(), "hi": emu.hi.tolist(),
        "log_mask": emu.log_mask.tolist(), "summary": summary})
    log.info("%s %s n=%s: best val MSE %.4g at step %d, %.1f s", model, mode, size,
             result.best_val_loss, summary["best_step"], seconds)
    return summary
