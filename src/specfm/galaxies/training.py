"""Train GalProTE on a training set file, save/load it, predict, and score it on the synthetic splits.

Training uses `specfm.train.fit` (seeding, device, SIGTERM-safe checkpoints and resume, early stopping
on the validation loss with the best weights restored). The validation loss that drives early stopping
(and the LR plateau schedule) is the *grid* loss -- MSE + the two correlation terms, without the A_V
term -- as in the paper ("early stopping on grid MSE loss"); the training loss is the full loss.
With the mean head (``mean_head=True``, beyond the paper) both add its term, weighted by ``w_mean``:
the maps then read that head, so early stopping must watch it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from specfm.train import (checkpoint_dir_for, choose_device, evaluate, fit, load_final, save_final, seed_everything,
                          setup_logging)

from .model import (GalProTE, GalProTEConfig, clip_grid, fused_for_inference, galprote_loss, mean_head_loss,
                    mean_targets)
from .template_table import TemplateGrid
from .trainset import BEYOND_ROWS, ROWS, attenuation_factors, model_spectra, read_meta, read_templates, split_tensors

log = logging.getLogger(__name__)

MODEL_FORMAT = "specfm.galaxies.galprote/1"
ARCH_FIELDS = {f.name for f in fields(GalProTEConfig)} - {"n_pix", "n_z", "n_age", "n_av"}
LOSS_DEFAULTS = {"w_mse": 1.0, "w_age": 1.0, "w_mh": 1.0, "w_av": 1.0}
MEAN_LOSS_DEFAULT = {"w_mean": 1.0}  # added to LOSS_DEFAULTS only with the mean head (the paper's record unchanged)


def train_galprote(trainset_path, model_out, *, epochs: int = 30, patience: int | None = 3,
                   batch_size: int = 64, seed: int = 0, gpu: int | None = None, checkpoint_dir=None,
                   log: logging.Logger | str | Path | None = None, lr: float = 1e-4, weight_decay: float = 1e-4,
                   loss_weights: dict | None = None, early_stop_on: str = "grid", threads: int | None = None,
                   progress: bool | None = True, **arch) -> dict:
    """Train on the ``train`` split, early-stop on ``validation``, write ``model_out`` atomically.

    ``arch``: any `GalProTEConfig` architecture field (channels, n_layers, n_heads, pool, patch, d_attn,
    dropout, kernels, head_hidden, ff_mult). ``gpu``: GPUs granted (0 = CPU, None = use one if any).
    ``checkpoint_dir``: default `specfm.train.checkpoint_dir_for(model_out)`. ``early_stop_on``: "grid"
    (paper) or "total". ``log``: a Logger, or a file path (then `specfm.train.setup_logging(log)`).
    ``threads``: torch CPU threads (None: leave as is). ``lr``: AdamW learning rate; 1e-4 suits the
    default flattened read-out (see `specfm.galaxies.model`), ``readout="mean"`` tolerates 1e-3.
    Returns a summary (epochs, best epoch and loss, the untrained validation loss, wall time,
    training spectra per wall-clock second with validation included, n_params). Under torchrun (DDP)
    call `specfm.train.init_distributed()` first.
    """
    if isinstance(log, (str, Path)):
        log = setup_logging(log)
    log = log or logging.getLogger(__name__)
    unknown = set(arch) - ARCH_FIELDS
    if unknown:
        raise TypeError(f"train_galprote: unknown architecture parameters {sorted(unknown)}")
    if threads:
        torch.set_num_threads(threads)
    loss_weights = {**LOSS_DEFAULTS, **(MEAN_LOSS_DEFAULT if arch.get("mean_head") else {}), **(loss_weights or {})}
    meta = read_meta(trainset_path)
    device = choose_device(gpu)
    seed_everything(seed)
    train = split_tensors(trainset_path, "train")
    val = split_tensors(trainset_path, "validation")
    if device.type == "cuda":  # the whole set fits on any training GPU (0.7 GB at the paper's size)
        train.tensors = tuple(t.to(device) for t in train.tensors)
        val.tensors = tuple(t.to(device) for t in val.tensors)
    cfg = GalProTEConfig(n_pix=meta["wave"].size, n_z=meta["mh"].size, n_age=meta["log_age"].size,
                         n_av=meta["av_levels"].size,
                         **{k: (tuple(v) if k == "kernels" else v) for k, v in arch.items()})
    model = GalProTE(cfg, meta["log_age"], meta["mh"], meta["av_levels"])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("GalProTE %s: %d parameters; train %d, validation %d spectra", cfg.to_dict(), n_params,
             len(train), len(val))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)

    def loss_fn(m, batch):
        x, w, av = batch  # [B, L], [B, n_Z, n_age], [B]
        total, parts = training_loss(m, m(x), w, av, loss_weights)
        return total if m.training else parts[early_stop_on]

    trainset_id = {k: meta[k] for k in ("recipe", "seed", "counts")}
    fingerprint = {"config": cfg.to_dict(), "loss": loss_weights, "lr": lr, "weight_decay": weight_decay,
                   "early_stop_on": early_stop_on, "trainset": trainset_id}
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoint_dir_for(model_out)
    t0 = time.perf_counter()
    val_init = evaluate(model.to(device), loss_fn, val, batch_size, device)  # the untrained model's score
    log.info("validation %s loss before training: %.5g", early_stop_on, val_init)
    result = fit(model, loss_fn, train, val, optimizer=opt, scheduler=sched, max_epochs=epochs,
                 patience=patience, checkpoint_dir=ckdir, seed=seed, batch_size=batch_size, device=device,
                 fingerprint=fingerprint, progress=progress, log=log)
    seconds = time.perf_counter() - t0
    epochs_here = result.epochs_run - (result.resumed_from[0] if result.resumed_from else 0)
    summary = {
        "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss, "val_loss_init": val_init,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early, "seconds": round(seconds, 2), "n_params": n_params,
        "n_train": len(train), "n_validation": len(val),
        "train_samples_per_s": round(len(train) * max(epochs_here, 0) / max(seconds, 1e-9), 1),
        "device": str(device),
    }
    metadata = {
        "format": MODEL_FORMAT, "config": cfg.to_dict(), "loss_weights": loss_weights,
        "early_stop_on": early_stop_on, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
        "seed": seed, "log_age": meta["log_age"].tolist(), "mh": meta["mh"].tolist(),
        "av_levels": meta["av_levels"].tolist(), "wave": meta["wave"].tolist(),
        "trainset": json.loads(json.dumps(trainset_id, default=float)),
        "trainset_id": hashlib.sha256(json.dumps(trainset_id, sort_keys=True, default=float).encode()).hexdigest(),
        "history": result.history, "summary": summary,
    }
    save_final(model, model_out, metadata)
    log.info("trained GalProTE: best epoch %d, validation %s loss %.5g, %.1f s (%.0f spectra/s)",
             result.best_epoch, early_stop_on, result.best_val_loss, seconds, summary["train_samples_per_s"])
    return summary


def training_loss(model: GalProTE, outputs: tuple, weights, av_index, loss_weights: dict) -> tuple:
    """`galprote_loss` of the model's ``outputs``; with the mean head, plus ``w_mean`` x `mean_head_loss`
    against the light-weighted truth, in the total and in the early-stopping ``grid`` criterion."""
    paper = {k: v for k, v in loss_weights.items() if k in LOSS_DEFAULTS}
    total, parts = galprote_loss(outputs[0], outputs[1], weights, av_index, **paper)
    if len(outputs) < 3:
        return total, parts
    target = mean_targets(weights, model.log_age, model.mh, av_index, model.av_levels)
    extra = loss_weights.get("w_mean", 1.0) * mean_head_loss(outputs[2], target)
    parts.update(mean=extra, grid=parts["grid"] + extra, total=total + extra)
    return total + extra, parts


def load_galprote(path, map_location="cpu") -> tuple[GalProTE, dict]:
    """Rebuild a model written by `train_galprote`: (model in eval mode, metadata)."""
    state, metadata = load_final(path, map_location=map_location)
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a GalProTE model ({metadata.get('format')!r})")
    arch = {"attention": "patch", **metadata["config"]}  # files written before the option had patch contexts
    cfg = GalProTEConfig(**{k: (tuple(v) if k == "kernels" else v) for k, v in arch.items()})
    model = GalProTE(cfg, metadata["log_age"], metadata["mh"], metadata["av_levels"])
    model.load_state_dict(state)
    return model.eval(), metadata


# ----------------------------------------------------------------------------------- inference


AV_ESTIMATES = ("mode", "mean")


@torch.inference_mode()
def predict(model: GalProTE, spectra, batch_size: int = 256, *, frac: float = 0.05, av: str | None = None,
            device=None, with_means: bool = False) -> tuple:
    """spectra [N, n_kept] (median-normalised, masked) -> (weights [N, n_Z, n_age] clipped at ``frac`` of
    each maximum and renormalised, A_V [N] in mag); ``with_means``: and a third item, the mean head's
    [N, 3] (log age, [M/H], A_V; `model.MEAN_NAMES`), from the same forward pass (the model must have it).

    ``av`` (default: the model's ``cfg.av_estimate``): ``"mode"``, the most probable of the 16 classes
    (the paper's reading), or ``"mean"``, the probability-weighted mean of the levels, which is
    continuous, as a real galaxy's A_V is, and does not jump a whole 0.1 mag class when two
    neighbouring classes are nearly equally likely.

    Runs an evaluation copy with BatchNorm folded into the convolutions (`model.fused_for_inference`);
    ``model`` itself is left as it is."""
    check_means(model, with_means)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    net = fused_for_inference(model).to(device)
    av = model.cfg.av_estimate if av is None else av
    spectra = np.asarray(spectra, dtype=np.float32)
    ws, avs, means = [], [], []
    for lo in range(0, spectra.shape[0], batch_size):
        x = torch.from_numpy(spectra[lo:lo + batch_size]).to(device)
        w, av_logits, *mean = net(x)  # [b, n_Z, n_age], [b, n_av] (, [b, 3] with the mean head)
        ws.append(clip_grid(w, frac).float().cpu())
        avs.append(av_from_logits(av_logits, net.av_levels, av).float().cpu())
        means += [m.float().cpu() for m in mean]
    n_z, n_age = model.cfg.n_z, model.cfg.n_age
    if not ws:
        out = np.zeros((0, n_z, n_age), np.float32), np.zeros(0, np.float32), np.zeros((0, 3), np.float32)
    else:
        out = torch.cat(ws).numpy(), torch.cat(avs).numpy(), (torch.cat(means).numpy() if means else None)
    return out if with_means else out[:2]


def check_means(model: GalProTE, with_means: bool) -> None:
    """A named error for asking the mean head of a model trained without it."""
    if with_means and not model.cfg.mean_head:
        raise ValueError("this GalProTE model has no mean head (trained with galaxies.model.mean_head false): "
                         "use the grid estimate")


def av_from_logits(logits, levels, how: str = "mode"):
    """A_V [B] from class logits [B, n_av] (see `predict`)."""
    if how == "mode":
        return levels[logits.argmax(dim=1)]
    if how == "mean":
        return torch.softmax(logits.double(), dim=1) @ levels.double()
    raise ValueError(f"A_V estimate {how!r}: expected one of {AV_ESTIMATES}")


def light_weighted(weights, log_age, mh) -> tuple[np.ndarray, np.ndarray]:
    """Light-weighted mean log age and [M/H] of grids ``weights`` [N, n_Z, n_age] (renormalised to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=(-2, -1), keepdims=True)
    return (w.sum(axis=-2) @ np.asarray(log_age, float)), (w.sum(axis=-1) @ np.asarray(mh, float))


def reconstruct(templates: TemplateGrid, weights, av, *, rv: float = 3.1, block: int = 8192) -> np.ndarray:
    """Model spectra [N, n_kept]: templates x ``weights`` [N, n_Z, n_age], attenuated by ``av`` [N] mag
    (O'Donnell 1994), median-normalised on the kept pixels -- the training set's noise-free spectra."""
    weights = np.asarray(weights, dtype=np.float64)
    av = np.broadcast_to(np.asarray(av, dtype=float), weights.shape[:1])
    n_t = weights.shape[-2] * weights.shape[-1]
    flux = np.asarray(templates.flux, dtype=np.float64).reshape(n_t, -1)
    mask = np.asarray(templates.mask, bool)
    out = np.empty((weights.shape[0], int(mask.sum())), np.float32)
    for lo in range(0, weights.shape[0], block):
        hi = min(lo + block, weights.shape[0])
        fac = attenuation_factors(templates.wave, av[lo:hi], rv)
        out[lo:hi] = model_spectra(flux, mask, fac, weights[lo:hi].reshape(hi - lo, n_t))
    return out


def _stats(d: np.ndarray) -> dict:
    return {"bias": float(d.mean()), "scatter": float(d.std()), "rmse": float(np.sqrt((d**2).mean()))}


# point-to-point residual histogram of the synthetic splits (Fig. 12): 0.25 % bins over +-50 %;
# values outside are counted apart (``resid_below`` / ``resid_above``) rather than dropped
RESID_EDGES_PCT = np.linspace(-50.0, 50.0, 401)
PER_SPECTRUM = ("log_age_pred", "log_age_true", "mh_pred", "mh_true", "av_pred", "av_true", "pct_mse",
                "pct_mse_truth", "noise_level", "extended")
HEAD_KEYS = ("log_age_head", "mh_head", "av_head")  # per spectrum too, for a model with the mean head


def synthetic_predictions(model: GalProTE, trainset_path, splits=("test", "test_unseen"), *,
                          batch_size: int = 1024, limit: int | None = None, frac: float = 0.05,
                          block: int = 8192) -> dict:
    """Predict the synthetic splits once and keep what the metrics and the figures need, per split:

    per spectrum (arrays [n], names in ``PER_SPECTRUM``): predicted and true light-weighted log age
    and [M/H] (the truth over the stored, unclipped weights), A_V (mag), pct_mse = 100 x mean((input -
    reconstruction)^2) over the kept pixels (spectra median-normalised), pct_mse_truth = the same for
    the reconstruction from the *true* weights and A_V (the floor set by the injected noise and
    patches), and the Gaussian noise level of the spectrum (with the mean head, also its estimates,
    ``HEAD_KEYS``); pooled over all pixels: ``resid_sum``,
    ``resid_sq``, ``n_points`` and the histogram ``resid_hist`` of 100 x (input - reconstruction) on
    ``RESID_EDGES_PCT`` with ``resid_below`` / ``resid_above`` outside it.
    """
    import h5py

    templates = read_templates(trainset_path)
    meta = read_meta(trainset_path)
    rv = meta["recipe"]["rv"]
    log_age, mh = meta["log_age"], meta["mh"]
    out = {}
    for split in splits:
        with h5py.File(trainset_path, "r") as h5:
            g = h5[split]
            n = g["spectra"].shape[0] if limit is None else min(limit, g["spectra"].shape[0])
            acc = {k: [] for k in PER_SPECTRUM + (HEAD_KEYS if model.cfg.mean_head else ())}
            hist = np.zeros(RESID_EDGES_PCT.size - 1, np.int64)
            below = above = 0
            r_sum = r_sq = 0.0
            for lo in range(0, n, block):
                hi = min(lo + block, n)
                x = g["spectra"][lo:hi]
                w_true = g["weights"][lo:hi]
                av_true = g["av"][lo:hi]
                w_pred, av_pred, *head = predict(model, x, batch_size, frac=frac, with_means=model.cfg.mean_head)
                for key, column in zip(HEAD_KEYS, head[0].T if head else ()):
                    acc[key].append(column)
                res = x.astype(np.float64) - reconstruct(templates, w_pred, av_pred, rv=rv)
                floor = x.astype(np.float64) - reconstruct(templates, w_true, av_true, rv=rv)
                acc["pct_mse"].append(100 * (res**2).mean(axis=1))
                acc["pct_mse_truth"].append(100 * (floor**2).mean(axis=1))
                r_sum += res.sum()
                r_sq += (res**2).sum()
                pct = 100 * res.ravel()
                hist += np.histogram(pct, RESID_EDGES_PCT)[0]
                below += int((pct < RESID_EDGES_PCT[0]).sum())
                above += int((pct > RESID_EDGES_PCT[-1]).sum())
                for name, (a, m) in (("pred", light_weighted(w_pred, log_age, mh)),
                                     ("true", light_weighted(w_true, log_age, mh))):
                    acc[f"log_age_{name}"].append(a)
                    acc[f"mh_{name}"].append(m)
                acc["av_pred"].append(av_pred)
                acc["av_true"].append(av_true)
                acc["noise_level"].append(g["noise_level"][lo:hi])
                acc["extended"].append(np.isin(g["row"][lo:hi], [ROWS.index(r) for r in BEYOND_ROWS]))
        p = {k: (np.concatenate(v).astype(np.float64) if v else np.zeros(0)) for k, v in acc.items()}
        p.update(n=int(n), n_points=int(n * templates.mask.sum()), resid_sum=float(r_sum), resid_sq=float(r_sq),
                 resid_hist=hist, resid_below=below, resid_above=above)
        out[split] = p
    return out


def metrics_from_predictions(predictions: dict) -> dict:
    """`synthetic_predictions` (per split) -> the scores of `synthetic_metrics`."""
    out = {}
    for split, p in predictions.items():
        n = p["n"]
        if n == 0:
            out[split] = {"n": 0}
            continue
        r_mean = p["resid_sum"] / p["n_points"]
        m = {"n": int(n),
             "pct_mse_mean": float(p["pct_mse"].mean()), "pct_mse_std": float(p["pct_mse"].std()),
             "pct_mse_truth_mean": float(p["pct_mse_truth"].mean()),
             "resid_mean_pct": float(100 * r_mean),
             "resid_std_pct": float(100 * np.sqrt(p["resid_sq"] / p["n_points"] - r_mean**2))}
        m.update(_label_stats(p))
        ext = np.asarray(p.get("extended", np.zeros(0)), bool)
        if ext.size == n and ext.any():  # the paper's rows and the extended populations apart
            m["by_population"] = {"table1": _label_stats(p, ~ext), "beyond_paper": _label_stats(p, ext)}
        if HEAD_KEYS[0] in p:  # the mean head's estimates, scored the same way
            m["head"] = _label_stats(p, pred="head")
            if "by_population" in m:
                m["head"]["by_population"] = {"table1": _label_stats(p, ~ext, "head"),
                                              "beyond_paper": _label_stats(p, ext, "head")}
        d_av = p["av_pred"] - p["av_true"]
        m["av_accuracy"] = float((np.abs(d_av) < 0.5 * _level_step(p["av_true"])).mean())
        m["av_within_0p1"] = float((np.abs(d_av) < 0.1 + 1e-3).mean())
        out[split] = m
    return out


def _label_stats(p: dict, sel=slice(None), pred: str = "pred") -> dict:
    """Bias / scatter / rmse / Pearson r of log age, [M/H] and A_V over the spectra ``sel``; ``pred``:
    "pred" (the grid and class head) or "head" (the mean head)."""
    out = {}
    for name in ("log_age", "mh", "av"):
        got, true = p[f"{name}_{pred}"][sel], p[f"{name}_true"][sel]
        out[name] = {**_stats(got - true), "r": _corr(got, true)}
    return out


def _level_step(av_true) -> float:
    """Spacing of the A_V levels in a split (0.1 mag): |error| below half of it = the nearest level is right."""
    steps = np.diff(np.unique(np.round(np.asarray(av_true, float), 6)))
    return float(steps.min()) if steps.size else 0.1


def synthetic_metrics(model: GalProTE, trainset_path, splits=("test", "test_unseen"), **kwargs) -> dict:
    """Scores of ``model`` on synthetic splits, per split (keyword arguments: `synthetic_predictions`):

    pct_mse_mean/std: per-spectrum 100 x mean((input - reconstruction)^2) (spectra median-normalised);
    pct_mse_truth_mean: the same for the reconstruction from the *true* weights and A_V: the floor set
    by the injected noise and patches;
    resid_mean/std_pct: point-to-point residual input - reconstruction over all pixels, in %;
    log_age, mh, av: bias (mean of predicted - true), scatter (std), rmse, and the Pearson r; the true
    log age and [M/H] are light-weighted over the stored (unclipped) weights; av_accuracy: the nearest
    A_V level is the true one (for the class mode: the exact class), av_within_0p1: |error| <= 0.1 mag.
    """
    return metrics_from_predictions(synthetic_predictions(model, trainset_path, splits, **kwargs))


PREDICTIONS_FORMAT = "specfm.galaxies.synthetic_predictions/1"


def write_predictions(path, predictions: dict, *, log_age, mh, av_levels) -> None:
    """`synthetic_predictions` -> HDF5 (one group per split; byte-identical for identical input)."""
    import h5py

    from specfm.io import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            h5.attrs["format"] = PREDICTIONS_FORMAT
            for name, value in (("log_age", log_age), ("mh", mh), ("av_levels", av_levels),
                                ("resid_edges_pct", RESID_EDGES_PCT)):
                h5.attrs[name] = np.asarray(value, float)
            for split, p in predictions.items():
                g = h5.create_group(split, track_order=False)
                for key, value in p.items():
                    if isinstance(value, np.ndarray):
                        g.create_dataset(key, data=value, track_times=False)
                    else:
                        g.attrs[key] = value


def read_predictions(path) -> tuple[dict, dict]:
    """(predictions per split as `synthetic_predictions` returns them, grid axes {log_age, mh, av_levels,
    resid_edges_pct})."""
    import h5py

    with h5py.File(path, "r") as h5:
        if h5.attrs.get("format") != PREDICTIONS_FORMAT:
            raise ValueError(f"{path}: not a synthetic predictions file ({h5.attrs.get('format')!r})")
        axes = {k: np.asarray(h5.attrs[k]) for k in ("log_age", "mh", "av_levels", "resid_edges_pct")}
        out = {}
        for split, g in h5.items():
            p = {k: g[k][()] for k in g}
            p.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.attrs.items()})
            out[split] = p
    return out, axes


ABLATION_KEYS = ("log_age", "mh", "av")


def ablation_table(records: dict, *, chosen: str, budget: dict) -> dict:
    """Attention variants (name -> metrics record of `steps.train_model`) -> one comparison record.

    ``table``: per variant and split, the scatter of log age, [M/H] and A_V, the A_V class accuracy
    and the mean % MSE, plus the best validation grid loss and the parameter count, so the variants
    read side by side; ``records``: the full metrics of each variant. ``chosen``: the design the main
    model uses; ``budget``: the training settings every variant shared (the same training set and seed).
    """
    table = {}
    for name, rec in records.items():
        row = {"best_val_grid_loss": rec["training"]["best_val_loss"], "epochs_run": rec["training"]["epochs_run"],
               "n_params": rec["training"]["n_params"], "train_seconds": rec["training"]["seconds"]}
        for split, m in rec["synthetic"].items():
            if not m.get("n"):
                continue
            row[split] = {**{f"{k}_scatter": m[k]["scatter"] for k in ABLATION_KEYS},
                          **{f"{k}_bias": m[k]["bias"] for k in ABLATION_KEYS},
                          "av_accuracy": m["av_accuracy"], "pct_mse_mean": m["pct_mse_mean"]}
        table[name] = row
    if chosen not in table:
        raise ValueError(f"the chosen attention {chosen!r} is not among the ablation variants {sorted(table)}")
    return {"what": "GalProTE attention-context ablation: the same training set, seed and budget per variant; "
                    "metrics on the synthetic test splits (specfm.galaxies.model docstring)",
            "chosen": chosen, "budget": budget, "table": table, "records": records}


def _corr(a, b) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
