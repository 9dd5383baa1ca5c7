"""Training and inference of the SpecPT models through `specfm.train.fit` (seeded, resumable,
early stopping, best weights restored), and the fold ensemble's joint prediction."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from specfm.train import checkpoint_dir_for, choose_device, fit, load_final, rank, save_final, seed_everything

from .autoencoder import AEConfig, SpecPTAutoencoder, masked_mse
from .grid import fold_part
from .spectra import model_input, read_meta, read_rows
from .zmodel import SpecPTRedshift, ZConfig, nmad_loss

log = logging.getLogger(__name__)

AE_FORMAT = "specfm.redshift.autoencoder/1"
Z_FORMAT = "specfm.redshift.specpt_z/1"


def _tensors(spectra, rows, device, with_z=False, data: dict | None = None, spill_dir=None):
    """The split as a TensorDataset: (model input, pixel mask) or (model input, z).

    A split larger than data["in_memory_mb"] is written once, uncompressed, to .npy files in
    `spill_dir` (under the job's checkpoint directory: $SPECFM_CHECKPOINT_DIR can put it on
    node-local scratch) and memory-mapped, so a full EDR sample (~500k x 7,781 px) is never in
    memory at once, yet a batch is one indexed read of whole rows rather than a decompression of the
    file's lzf chunks per spectrum. Same values in the same order: the weights do not depend on it."""
    meta = read_meta(spectra)
    z = meta["z"].astype("f4") if with_z else None
    nbytes = 2 * len(rows) * meta["wave"].size * 4
    if spill_dir is not None and nbytes > (data or {}).get("in_memory_mb", 4000) * 2**20:
        return _spilled(spectra, rows, z, Path(spill_dir), meta["wave"].size)
    flux, ivar = read_rows(spectra, rows)
    out = [torch.from_numpy(model_input(flux, ivar)), torch.from_numpy(_second(rows, ivar, z))]
    if device.type == "cuda":
        out = [t.to(device) for t in out]
    return TensorDataset(*out)


def _second(rows, ivar, z) -> np.ndarray:
    """The second tensor of a sample: its z (fold training) or its pixel mask (pretraining)."""
    return z[rows] if z is not None else (ivar > 0).astype("f4")


def _spilled(spectra, rows, z, spill_dir: Path, n_pix: int, chunk: int = 4096) -> TensorDataset:
    """Memory-mapped copy of the split's tensors (one file set per DDP rank; rebuilt on every start,
    so a requeued job never trusts a half-written file)."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    paths = [spill_dir / f"x_r{rank()}.npy", spill_dir / f"{'z' if z is not None else 'mask'}_r{rank()}.npy"]
    x = np.lib.format.open_memmap(paths[0], mode="w+", dtype="f4", shape=(len(rows), n_pix))
    second = np.lib.format.open_memmap(paths[1], mode="w+", dtype="f4",
                                       shape=(len(rows),) if z is not None else (len(rows), n_pix))
    for s in range(0, len(rows), chunk):
        flux, ivar = read_rows(spectra, rows[s:s + chunk])
        x[s:s + chunk] = model_input(flux, ivar)
        second[s:s + chunk] = _second(rows[s:s + chunk], ivar, z)
    x.flush(), second.flush()
    del x, second
    log.info("%s: %d spectra spilled to %s (memory-mapped)", spectra, len(rows), spill_dir)
    return TensorDataset(*(torch.from_numpy(np.load(p, mmap_mode="c")) for p in paths))


def _ae_config(meta, arch) -> AEConfig:
    arch = dict(arch)
    for k in ("channels", "kernels"):
        if k in arch:
            arch[k] = tuple(arch[k])
    return AEConfig(n_pix=int(meta["wave"].size), **arch)


def _fit(model, loss_fn, train, val, out, tcfg, seed, device, fingerprint):
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg.get("weight_decay", 1e-4))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    t0 = time.perf_counter()
    res = fit(model, loss_fn, train, val, optimizer=opt, scheduler=sched, max_epochs=tcfg["epochs"],
              patience=tcfg["patience"], checkpoint_dir=checkpoint_dir_for(out), seed=seed,
              batch_size=tcfg["batch_size"], device=device, fingerprint=fingerprint, grad_clip=1.0, log=log)
    shutil.rmtree(checkpoint_dir_for(out) / "spill", ignore_errors=True)  # only a finished fit gets here
    return res, time.perf_counter() - t0


def train_autoencoder(spectra, out, *, arch: dict, tcfg: dict, seed: int, gpu: int = 0, threads: int | None = None):
    """Masked-reconstruction pretraining on the train split, early stopping on val."""
    if threads:
        torch.set_num_threads(threads)
    device = choose_device(gpu)
    seed_everything(seed)
    meta = read_meta(spectra)
    rows = {s: np.flatnonzero(meta["split"] == s) for s in ("train", "val")}
    for s, r in rows.items():
        if r.size == 0:
            raise ValueError(f"{spectra}: the {s} split is empty; the autoencoder needs train and val spectra")
    cfg = _ae_config(meta, arch)
    model = SpecPTAutoencoder(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("autoencoder %s: %d parameters; %d train, %d val spectra", cfg.to_dict(), n_params,
             rows["train"].size, rows["val"].size)

    def loss_fn(m, batch):
        x, mask = batch
        return masked_mse(m(x), x, mask)

    spill = checkpoint_dir_for(out) / "spill"
    train, val = (_tensors(spectra, rows[s], device, data=tcfg.get("data"), spill_dir=spill / s)
                  for s in ("train", "val"))
    res, sec = _fit(model, loss_fn, train, val, out, tcfg, seed, device,
                    {"arch": cfg.to_dict(), "train": tcfg, "n": [len(train), len(val)]})
    summary = {"best_val_loss": res.best_val_loss, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
               "seconds": round(sec, 2), "n_params": n_params, "n_train": len(train), "n_val": len(val),
               "device": str(device)}
    save_final(model, out, {"format": AE_FORMAT, "config": cfg.to_dict(), "history": res.history,
                            "summary": summary, "seed": seed})
    log.info("autoencoder: best val masked MSE %.5g at epoch %d, %.1f s", res.best_val_loss, res.best_epoch, sec)
    return summary


def load_autoencoder(path, map_location="cpu"):
    state, meta = load_final(path, map_location=map_location)
    if meta.get("format") != AE_FORMAT:
        raise ValueError(f"{path}: not a SpecPT autoencoder ({meta.get('format')!r})")
    cfg = AEConfig(**{k: (tuple(v) if k in ("channels", "kernels") else v) for k, v in meta["config"].items()})
    model = SpecPTAutoencoder(cfg)
    model.load_state_dict(state)
    return model.eval(), meta


def fold_rows(meta, fold: int, folds: int, path="spectra") -> dict:
    """Train/val rows of fold `fold` of `folds` (labelled non-test spectra only); named errors."""
    labelled = np.isfinite(meta["z"])
    part = fold_part(meta["hash_u"], folds)
    n_avail = int(np.sum(labelled & (part >= 0)))
    if folds > n_avail:
        raise ValueError(f"{path}: {folds} folds but only {n_avail} labelled training spectra")
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in 0..{folds - 1}")
    val = np.flatnonzero(labelled & (part == fold))
    train = np.flatnonzero(labelled & (part >= 0) & (part != fold))
    if val.size == 0 or train.size == 0:
        raise ValueError(f"{path}: fold {fold} of {folds} has {train.size} train and {val.size} val spectra")
    return {"train": train, "val": val}


def train_fold(spectra, autoencoder, out, *, fold: int, folds: int, zarch: dict, tcfg: dict, seed: int,
               gpu: int = 0, threads: int | None = None):
    """One fold model: the pretrained encoder + the redshift head, trained with the NMAD loss."""
    if threads:
        torch.set_num_threads(threads)
    device = choose_device(gpu)
    seed_everything(seed)
    meta = read_meta(spectra)
    rows = fold_rows(meta, fold, folds, spectra)
    ae, ae_meta = load_autoencoder(autoencoder)
    zcfg = ZConfig(**zarch)
    model = SpecPTRedshift(ae.cfg, zcfg)
    model.encoder.load_state_dict(ae.encoder.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("redshift model fold %d/%d %s: %d parameters; %d train, %d val", fold, folds, zcfg.to_dict(), n_params,
             rows["train"].size, rows["val"].size)

    def loss_fn(m, batch):
        x, z = batch
        return nmad_loss(m(x), z)

    spill = checkpoint_dir_for(out) / "spill"
    train, val = (_tensors(spectra, rows[s], device, with_z=True, data=tcfg.get("data"),
                           spill_dir=spill / s) for s in ("train", "val"))
    res, sec = _fit(model, loss_fn, train, val, out, tcfg, seed, device,
                    {"ae": ae_meta["summary"], "z": zcfg.to_dict(), "train": tcfg, "fold": [fold, folds]})
    summary = {"best_val_loss": res.best_val_loss, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
               "seconds": round(sec, 2), "n_params": n_params, "n_train": len(train), "n_val": len(val),
               "device": str(device), "fold": fold, "folds": folds}
    save_final(model, out, {"format": Z_FORMAT, "ae_config": ae.cfg.to_dict(), "config": zcfg.to_dict(),
                            "history": res.history, "summary": summary, "seed": seed})
    log.info("fold %d: best val NMAD loss %.5g at epoch %d, %.1f s", fold, res.best_val_loss, res.best_epoch, sec)
    return summary


def load_zmodel(path, map_location="cpu"):
    state, meta = load_final(path, map_location=map_location)
    if meta.get("format") != Z_FORMAT:
        raise ValueError(f"{path}: not a SpecPT redshift model ({meta.get('format')!r})")
    ae = AEConfig(**{k: (tuple(v) if k in ("channels", "kernels") else v) for k, v in meta["ae_config"].items()})
    model = SpecPTRedshift(ae, ZConfig(**meta["config"]))
    model.load_state_dict(state)
    return model.eval(), meta


@torch.inference_mode()
def run_model(model, x: np.ndarray, batch_size: int = 256, device=None, method="forward") -> np.ndarray:
    device = device or torch.device("cpu")
    model = model.to(device)
    fn = getattr(model, method)
    outs = [fn(torch.from_numpy(x[s:s + batch_size]).to(device)).cpu().numpy()
            for s in range(0, x.shape[0], batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,))


def predict_folds(models, x: np.ndarray, device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Every fold model on x -> (mean z, fold spread (std), per-fold z [K, N], seconds)."""
    t0 = time.perf_counter()
    zs = np.stack([run_model(m, x, device=device) for m in models])
    sec = time.perf_counter() - t0
    spread = zs.std(axis=0, ddof=1) if len(models) > 1 else np.zeros(x.shape[0])
    return zs.mean(axis=0), spread, zs, sec
