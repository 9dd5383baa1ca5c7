"""Held-out scores (the thesis's Table 4.1 layout) and figures (its Figures 4.1-4.7).

Scores per label on the test split, once with XP and once with XP hidden: n, bias, RMSE, sigma
(standard deviation of residuals), MAE, NMAD (1.4826 x median absolute deviation), R^2, and the
z-score (prediction - truth) / sqrt(sigma_pred^2 + sigma_label^2) whose standard deviation says
whether the uncertainties are calibrated (target 0.8-1.2).
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from specfm.io import atomic_path  # noqa: E402

from . import columns as C  # noqa: E402
from .features import read_split  # noqa: E402
from .training import load_msa  # noqa: E402

log = logging.getLogger("specfm.stars")
MODES = {"with_xp": "", "without_xp": "_noxp"}
TITLES = {"teff": r"$T_{\rm eff}$ [K]", "logg": r"$\log g$", "fe_h": "[Fe/H]",
          "alpha_fe": r"[$\alpha$/Fe]", "age": "age [Gyr]", "parallax_label": r"$\varpi$ [mas]"}


def point_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """Scores of point predictions (a model without uncertainties is scored by these alone)."""
    ok = np.isfinite(pred) & np.isfinite(true)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0}
    r, t = pred[ok] - true[ok], true[ok]
    ss_tot = float(((t - t.mean()) ** 2).sum())
    return {"n": n, "bias": float(r.mean()), "rmse": float(np.sqrt((r**2).mean())),
            "sigma": float(r.std()), "mae": float(np.abs(r).mean()),
            "nmad": float(1.4826 * np.median(np.abs(r - np.median(r)))),
            "r2": float(1 - (r**2).sum() / ss_tot) if ss_tot > 0 else None}


def scores(pred: np.ndarray, true: np.ndarray, sigma_pred: np.ndarray, sigma_true: np.ndarray) -> dict:
    out = point_scores(pred, true)
    if out["n"]:
        ok = np.isfinite(pred) & np.isfinite(true)
        z = (pred[ok] - true[ok]) / np.sqrt(sigma_pred[ok] ** 2 + np.nan_to_num(sigma_true[ok]) ** 2)
        out.update({"zscore_mean": float(z.mean()), "zscore_std": float(z.std())})
    return out


def joined_test(predictions: pd.DataFrame, features) -> pd.DataFrame:
    """Test-split predictions with the true labels and their errors next to them."""
    truth = read_split(features, "test", ["source_id", *C.LABELS, *C.LABEL_ERRORS])
    truth = truth.rename(columns={c: f"true_{c}" for c in C.LABELS + C.LABEL_ERRORS})
    return predictions.loc[predictions["split"] == "test"].merge(truth, on="source_id", how="inner")


def metrics(test: pd.DataFrame) -> dict:
    out = {}
    for mode, sfx in MODES.items():
        out[mode] = {}
        for label in C.LABELS:
            p16, p50, p84 = (test[f"{label}_{k}{sfx}"].to_numpy() for k in ("p16", "p50", "p84"))
            s = scores(p50, test[f"true_{label}"].to_numpy(), (p84 - p16) / 2,
                       test[f"true_{label}_err"].to_numpy())
            if s["n"] == 0:
                s["note"] = ("no predictions: the sample has no training labels"
                             if not np.isfinite(p50).any() else "no labelled stars in the test split")
            out[mode][label] = s
    return out


def _labels_present(test: pd.DataFrame) -> list[str]:
    return [c for c in C.LABELS if (np.isfinite(test[f"true_{c}"]) & np.isfinite(test[f"{c}_p50"])).any()]


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def residual_figure(test: pd.DataFrame, out) -> None:
    """Figure 4.1-style: predicted vs true per label, with XP (top) and XP hidden (bottom)."""
    labels = _labels_present(test) or C.LABELS[:1]
    fig, axes = plt.subplots(2, len(labels), figsize=(3.2 * len(labels), 6.4), squeeze=False)
    for j, label in enumerate(labels):
        t = test[f"true_{label}"].to_numpy()
        for i, (mode, sfx) in enumerate(MODES.items()):
            ax = axes[i, j]
            p = test[f"{label}_p50{sfx}"].to_numpy()
            ok = np.isfinite(p) & np.isfinite(t)
            if ok.sum() > 1:
                lo, hi = np.percentile(np.r_[t[ok], p[ok]], [0.5, 99.5])
                ax.hist2d(t[ok], p[ok], bins=60, range=[[lo, hi], [lo, hi]], cmap="viridis", cmin=1)
                ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
                mae = np.abs(p[ok] - t[ok]).mean()
                ax.set_title(f"{TITLES[label]} {mode.replace('_', ' ')}\nMAE {mae:.3g}, n={ok.sum()}",
                             fontsize=8)
            ax.set_xlabel("true", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def relation_figure(test: pd.DataFrame, out, x: str, y: str, color: str | None, title: str,
                    invert=()) -> None:
    """One label plane (Kiel, [alpha/Fe]-[Fe/H], age-[Fe/H]): truth beside prediction."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    for ax, (name, fmt) in zip(axes, (("truth (held-out labels)", "true_{}"), ("MSA ensemble", "{}_p50"))):
        xs, ys = test[fmt.format(x)].to_numpy(), test[fmt.format(y)].to_numpy()
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.any():
            c = test[fmt.format(color)].to_numpy()[ok] if color else None
            if c is not None:  # stars without a colour value (e.g. hot stars lack [Fe/H]) in grey
                grey = ~np.isfinite(c)
                ax.scatter(xs[ok][grey], ys[ok][grey], s=2, c="0.6", rasterized=True,
                           label=f"no {TITLES[color]} ({grey.sum()})")
                if grey.any():
                    ax.legend(fontsize=7, loc="lower left", markerscale=3)
            sc = ax.scatter(xs[ok], ys[ok], c=c, s=2, cmap="plasma", rasterized=True)
            if color is not None:
                fig.colorbar(sc, ax=ax, label=TITLES[color])
        else:
            ax.text(0.5, 0.5, f"no {TITLES[x]} / {TITLES[y]} values\nin this sample",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(TITLES[x])
    axes[0].set_ylabel(TITLES[y])
    for axis in invert:
        getattr(axes[0], f"invert_{axis}axis")()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)


def zscore_figure(test: pd.DataFrame, out) -> None:
    labels = _labels_present(test) or C.LABELS[:1]
    fig, axes = plt.subplots(1, len(labels), figsize=(3 * len(labels), 3), squeeze=False)
    grid = np.linspace(-5, 5, 200)
    for ax, label in zip(axes[0], labels):
        p16, p50, p84 = (test[f"{label}_{k}"].to_numpy() for k in ("p16", "p50", "p84"))
        err = np.sqrt(((p84 - p16) / 2) ** 2 + np.nan_to_num(test[f"true_{label}_err"].to_numpy()) ** 2)
        z = (p50 - test[f"true_{label}"].to_numpy()) / err
        z = z[np.isfinite(z)]
        ax.hist(z, bins=np.linspace(-5, 5, 51), density=True, alpha=0.7)
        ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k-", lw=1, label="N(0, 1)")
        if z.size:
            ax.set_title(f"{TITLES[label]}: std {z.std():.2f}", fontsize=9)
        ax.set_xlabel("z-score")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)


@torch.no_grad()
def reconstruction_residuals(model, features, n_xp: int = 5, max_rows: int = 20000) -> dict:
    """Scaled residuals of the first XP coefficients (XP hidden) and of the magnitudes (each
    survey hidden with everything else visible) on the test split."""
    test = read_split(features, "test", C.FEATURES).head(max_rows)
    x = torch.from_numpy(test[C.FEATURES].to_numpy(np.float32))
    z, observed = model.scale_features(x)
    idx = {c: i for i, c in enumerate(C.FEATURES)}
    out = {}
    groups = {"xp": C.XP, **C.SURVEY_BANDS}
    for name, cols in groups.items():
        hide = [idx[c] for c in cols]
        visible = observed.clone()
        visible[:, hide] = False
        recon, _ = model(z, visible)
        shown = (cols[:n_xp] + C.XP_RP[:n_xp]) if name == "xp" else cols
        for c in shown:
            i = idx[c]
            ok = observed[:, i]
            if ok.any():
                out[c] = (recon[ok, i] - z[ok, i]).numpy()
    return out


def reconstruction_figure(residuals: dict, out) -> None:
    cols = list(residuals) or ["none"]
    n = len(cols)
    ncol = min(n, 5)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.3 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        r = residuals.get(c, np.array([]))
        if r.size:
            ax.hist(np.clip(r, -3, 3), bins=60)
            ax.set_title(f"{c}: med {np.median(r):+.2f}, NMAD {1.4826 * np.median(np.abs(r - np.median(r))):.2f}",
                         fontsize=7)
        ax.set_xlabel("(recon - obs) / IQR", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("reconstruction of hidden inputs (test split)", fontsize=9)
    fig.tight_layout()
    _save(fig, out)


def write_figures(test: pd.DataFrame, member_path, features, outs: dict) -> None:
    """outs: each of products.MSA_FIGURES -> a PNG path."""
    from .products import MSA_FIGURES

    if set(outs) != set(MSA_FIGURES):
        raise ValueError(f"stars figures: expected paths for {sorted(MSA_FIGURES)}, got {sorted(outs)}")
    residual_figure(test, outs["residuals"])
    relation_figure(test, outs["kiel"], "teff", "logg", "fe_h", "Kiel diagram", invert="xy")
    relation_figure(test, outs["alpha_fe"], "fe_h", "alpha_fe", None, r"[$\alpha$/Fe] vs [Fe/H]")
    relation_figure(test, outs["age_metallicity"], "fe_h", "age", None, "age-metallicity relation")
    zscore_figure(test, outs["zscores"])
    model, _ = load_msa(member_path)
    reconstruction_figure(reconstruction_residuals(model, features), outs["reconstruction"])
