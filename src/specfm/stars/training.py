"""Masked pretraining and quantile fine-tuning of the MSA, streamed from the feature table.

Both stages use `specfm.train.fit` (seeded, SIGTERM-safe checkpoints, exact resume, early stopping)
on a `ParquetBatchStream` over the training split, so the table is never loaded whole. The
validation set is a seeded subsample of the validation split of at most `val_rows` rows, with a
fixed mask per batch so its loss is comparable between epochs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from specfm.train import (ParquetBatchStream, checkpoint_dir_for, choose_device, fit, load_final,
                          save_final, seed_everything, arrays_from_columns, unwrap)

from . import columns as C
from .features import feature_files, load_scaling, read_split
from .model import (MaskedStellarAutoencoder, MaskingPolicy, MSAConfig, pinball_loss,
                    reconstruction_loss)

log = logging.getLogger("specfm.stars")

ARCH_KEYS = {"d_embedding", "n_frequencies", "frequency_scale", "widths", "latent", "dropout",
             "head_width", "head_layers", "colours"}
FINETUNE_WEIGHTS = (0.8, 0.2)  # pinball, reconstruction (the thesis's mix)
# Version of ParquetBatchStream's row order: a checkpoint written under another order would
# resume mid-epoch into a different sequence (rows twice or never), so it is not resumed.
STREAM_ORDER = 2  # 2: global unit order cut into rank shares, decoded by workers


def masking_policy(p_xp: float, p_other: float) -> MaskingPolicy:
    index = {name: i for i, name in enumerate(C.FEATURES)}
    core = set(C.CORE_FEATURES)
    return MaskingPolicy(xp_index=[index[c] for c in C.XP],
                         other_index=[index[c] for c in C.FEATURES if c not in core and c not in C.XP],
                         p_xp=p_xp, p_other=p_other)


def build_model(arch: dict, scaling: dict) -> MaskedStellarAutoencoder:
    unknown = set(arch) - ARCH_KEYS
    if unknown:
        raise ValueError(f"stars model: unknown architecture keys {sorted(unknown)}")
    colours = bool(arch.get("colours", False))
    index = {name: i for i, name in enumerate(C.FEATURES)}
    pairs = tuple((index[a], index[b]) for a, b in C.COLOUR_PAIRS) if colours else ()
    cfg = MSAConfig(n_features=len(C.FEATURES), n_labels=len(C.LABELS), colour_pairs=pairs,
                    **{k: (tuple(v) if k == "widths" else v) for k, v in arch.items() if k != "colours"})
    if colours and any(c not in scaling for c in C.COLOURS):
        raise ValueError("stars.model.colours needs colour statistics in the scaling file, which "
                         "this one (written by an older specfm) lacks: rerun stars_features")

    def stats(cols):
        return ([scaling[c]["median"] for c in cols], [scaling[c]["iqr"] for c in cols])

    return MaskedStellarAutoencoder(cfg, *stats(C.FEATURES), *stats(C.LABELS),
                                    *(stats(C.COLOURS) if colours else ((), ())))


def load_msa(path) -> tuple[MaskedStellarAutoencoder, dict]:
    """A saved model (pretrained or fine-tuned) with its metadata."""
    state, meta = load_final(path)
    model = build_model(meta["arch"], meta["scaling"])
    model.load_state_dict(state)
    model.eval()
    return model, meta


def validation_set(features, max_rows: int, seed: int) -> TensorDataset:
    val = read_split(features, "val", C.FEATURES + C.LABELS)
    if len(val) == 0:
        raise ValueError(f"{feature_files(features)}: the validation split is empty")
    if len(val) > max_rows:
        val = val.iloc[np.sort(np.random.default_rng(seed).choice(len(val), max_rows, replace=False))]
    return TensorDataset(torch.from_numpy(val[C.FEATURES].to_numpy(np.float32, copy=True)),
                         torch.from_numpy(val[C.LABELS].to_numpy(np.float32, copy=True)))


XP_INDEX = [C.FEATURES.index(c) for c in C.XP]


def xp_noise(x: torch.Tensor, err: torch.Tensor, scale: float) -> torch.Tensor:
    """x with Gaussian noise of `scale` times each XP feature's 1-sigma error added to its XP
    columns (a star's spectrum as another draw within its errors: augmentation, thesis idea 2).

    Drawn from torch's global RNG, which `fit` seeds and checkpoints, so a resumed run draws the
    same noise. A star with XP but no errors cannot be augmented: that is an error, not a silent
    noise-free row (an archive partition whose fetcher kept no coefficient errors)."""
    xp = x[:, XP_INDEX]
    lacking = torch.isfinite(xp) & ~torch.isfinite(err)
    if lacking.any():
        raise ValueError(f"xp_noise = {scale}: {int(lacking.any(1).sum())} training rows have XP "
                         "coefficients but no XP errors (bp_*_err / rp_*_err); set xp_noise to 0 or "
                         "build the features from partitions that carry the errors")
    out = x.clone()
    out[:, XP_INDEX] = xp + scale * torch.nan_to_num(err) * torch.randn(xp.shape, device=x.device)
    return out


def make_loss(stage: str, policy: MaskingPolicy, noise: float = 0.0):
    """loss_fn(model, (x, y) or (x, y, xp_err)) for `fit`: masking (and, with ``noise`` > 0, XP
    noise) from the global (seeded, checkpointed) RNG while training; a fixed mask per batch and
    no noise in evaluation. The noisy XP is the input only: the reconstruction target stays the
    measured XP (a denoising target; the noise is unpredictable, so reconstructing it would only
    add an irreducible term to the loss)."""

    def loss_fn(model, batch):
        x, y = batch[:2]
        core = unwrap(model)
        z, observed = core.scale_features(x)
        z_in = z
        if noise > 0 and model.training:
            z_in = core.scale_features(xp_noise(x, batch[2], noise))[0]
        fixed = None if model.training else torch.Generator().manual_seed(int(x.shape[0]))
        visible = policy.sample(observed, fixed)
        recon, q = model(z_in, visible)
        rec = reconstruction_loss(recon, z, observed)
        if stage == "pretrain":
            return rec
        w_pin, w_rec = FINETUNE_WEIGHTS
        return w_pin * pinball_loss(q, core.scale_labels(y)) + w_rec * rec

    return loss_fn


def training_stream(features, *, buffer_rows: int, seed: int, workers: int = 0,
                    all_splits: bool = False, xp_errors: bool = False) -> ParquetBatchStream:
    """The training split's (features, labels) rows, streamed; training and its benchmarks share it.
    ``all_splits``: every row of the table (pretraining on the held-out stars' features; the
    caller must not use the labels then). ``xp_errors``: batches carry the XP errors third."""
    groups = [C.FEATURES, C.LABELS] + ([C.XP_ERR] if xp_errors else [])
    if xp_errors:
        require_xp_errors(features)
    return ParquetBatchStream(feature_files(features), arrays_from_columns(groups),
                              columns=[c for g in groups for c in g] + ["split"],
                              where=None if all_splits else ("split", "train"),
                              buffer_rows=buffer_rows, seed=seed, workers=workers)


def require_xp_errors(features) -> None:
    """Fail before training when a feature table has no XP error columns at all (built before
    they existed): `xp_noise` cannot be honoured, and training without it would mislead."""
    import pyarrow.parquet as pq

    for path in feature_files(features):
        if C.XP_ERR[0] not in pq.read_schema(path).names:
            raise ValueError(f"{path}: no XP error columns (bp_*_err / rp_*_err), so xp_noise > 0 "
                             "cannot add noise within the errors; rebuild the features "
                             "(snakemake --forcerun stars_features) or set xp_noise to 0")


def train_stage(stage: str, features, scaling_path, out, *, arch: dict, train: dict, seed: int,
                init=None, gpu: int | None = 0, threads: int | None = None,
                progress: bool | None = True) -> dict:
    """Pretrain (stage="pretrain") or fine-tune (stage="finetune", `init` = pretrained model).

    ``train``: epochs, patience, batch_size, lr, weight_decay, p_xp, p_other, buffer_rows, val_rows,
    xp_noise (training batches only: XP plus that many sigmas of Gaussian noise, `xp_noise`),
    all_splits (pretraining only: reconstruct the features of every split, the held-out stars'
    included, never their labels: transductive, as a pretraining on every XP star is), workers (DataLoader processes decoding the stream; the batches do not depend on it, so it
    is left out of the checkpoint fingerprint and a requeued job may change it).
    Writes `out` atomically (weights + metadata incl. scaling) and returns a training summary.
    """
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown stage {stage!r}")
    if threads:
        torch.set_num_threads(threads)
    scaling = load_scaling(scaling_path)
    seed_everything(seed)  # the initial weights are part of the run: seed before building
    model = build_model(arch, scaling)
    if init is not None:
        state, meta = load_final(init)
        if meta["arch"] != arch:
            raise ValueError(f"{init}: pretrained with {meta['arch']}, fine-tuning asks for {arch}")
        model.load_state_dict(state)
    device = choose_device(gpu)
    all_splits = bool(train.get("all_splits", False))
    if all_splits and stage != "pretrain":
        raise ValueError("all_splits is for pretraining only: fine-tuning on the validation or test "
                         "split would train on the labels it is scored against")
    noise = float(train.get("xp_noise", 0.0))
    stream = training_stream(features, buffer_rows=train["buffer_rows"], seed=seed,
                             workers=train.get("workers", 0), all_splits=all_splits,
                             xp_errors=noise > 0)
    val = validation_set(features, train["val_rows"], seed)
    policy = masking_policy(train["p_xp"], train["p_other"])
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: MSA %s, %d parameters; %d training rows (streamed), %d validation rows",
             stage, model.cfg.to_dict(), n_params, len(stream), len(val))
    start = time.perf_counter()
    result = fit(model, make_loss(stage, policy, noise), stream, val, optimizer=opt, scheduler=sched,
                 max_epochs=train["epochs"], patience=train["patience"], seed=seed,
                 batch_size=train["batch_size"], device=device, grad_clip=5.0,
                 checkpoint_dir=checkpoint_dir_for(out),
                 fingerprint={"stage": stage, "arch": arch, "init": str(init) if init else None,
                              "train": {k: v for k, v in train.items() if k != "workers"},
                              "stream_order": STREAM_ORDER},
                 progress=progress, log=log)
    seconds = time.perf_counter() - start
    model.cpu()
    summary = {"stage": stage, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
               "history": result.history, "n_params": n_params, "train_rows": len(stream),
               "seconds": round(seconds, 2),
               "rows_per_second": rows_per_second(len(stream), result, seconds)}
    save_final(model, out, metadata={"arch": arch, "train": train, "scaling": scaling,
                                     "stage": stage, "seed": seed, "summary": summary})
    log.info("%s done: best val loss %.4g at epoch %d; %.0f rows/s", stage, result.best_val_loss,
             result.best_epoch, summary["rows_per_second"])
    return summary


def rows_per_second(train_rows: int, result, seconds: float) -> float:
    """Training rows per second of this process: the epochs of a preempted run are not in `seconds`."""
    return round(train_rows * result.epochs_this_process / max(seconds, 1e-9), 1)


def saved_summary(path: str | Path) -> dict:
    return load_final(path)[1]["summary"]
