"""The figures of the emulator stage (PNG, Agg): the paper's Figs 1, 4, 5, 6, 7 and the fine-tuning
comparison, plus the inference recovery (Fig. 8 analogue)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specfm.io import atomic_path  # noqa: E402

METRICS = (("mse", "MSE"), ("mae", "MAE"), ("maqe_0.95", "MAQE$_{0.95}$"))
LABEL_TEX = {"teff": "T$_{eff}$ [K]", "logg": "log g [dex]", "feh": "[Fe/H] [dex]"}


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def vs_size(runs: list[dict], mean_scores: dict, path):
    """Test-split metrics vs training-set size: scratch solid, fine-tuned dashed (Fig. 5)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, name) in zip(axes, METRICS):
        for model in sorted({r["model"] for r in runs}):
            for mode, ls in (("scratch", "-o"), ("finetune", "--s")):
                rs = sorted((r for r in runs if r["model"] == model and r["mode"] == mode),
                            key=lambda r: r["n_train"])
                if rs:
                    ax.plot([r["n_train"] for r in rs], [r["test"][key] for r in rs], ls,
                            label=f"{model} ({mode})")
        ax.axhline(mean_scores[key], color="k", ls=":", label="mean spectrum")
        ax.set(xscale="log", yscale="log", xlabel="training spectra", ylabel=f"{name} (normalised flux)")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def vs_steps(runs: list[dict], path):
    """Validation metrics vs optimizer steps of the largest scratch runs (Fig. 6)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, name) in zip(axes, METRICS):
        for r in runs:
            h = [x for x in r["history"] if key in x]
            ax.plot([x["step"] for x in h], [x[key] for x in h], "-o", ms=3, label=r["model"])
        ax.set(xscale="log", yscale="log", xlabel="optimizer steps", ylabel=f"validation {name}")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def residual_bands(wave, residuals: dict, path):
    """Median, 1 and 2 sigma bands (16-84, 2.5-97.5 percentiles) of the residuals vs wavelength,
    and their histogram (Fig. 4)."""
    n = len(residuals)
    fig, axes = plt.subplots(n, 2, figsize=(13, 2.2 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    for (name, r), (ax, hx) in zip(residuals.items(), axes):
        p = np.percentile(r, [2.5, 16, 50, 84, 97.5], axis=0)
        ax.fill_between(wave, p[0], p[4], color="C0", alpha=0.25, label="2$\\sigma$")
        ax.fill_between(wave, p[1], p[3], color="C0", alpha=0.5, label="1$\\sigma$")
        ax.plot(wave, p[2], "k", lw=0.6, label="median")
        for s in (-0.01, 0.01):
            ax.axhline(s, color="k", ls=":", lw=0.6)
        ax.set(ylabel="residual", title=name)
        q = np.percentile(r, [16, 50, 84])
        hx.hist(r.ravel(), bins=80, range=(p[0].min(), p[4].max()), color="C0")
        hx.set_title(f"{q[1]:+.4f} +{q[2] - q[1]:.4f} -{q[1] - q[0]:.4f}", fontsize=8)
        hx.set_xlabel("residual")
    axes[-1, 0].set_xlabel("wavelength [$\\AA$]")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def example_spectrum(wave, flux, preds: dict, star: str, path):
    """One held-out star: data and each emulator, then each emulator's residuals (Fig. 1)."""
    n = len(preds)
    fig, axes = plt.subplots(n + 1, 1, figsize=(12, 2 + 1.3 * n), sharex=True,
                             gridspec_kw={"height_ratios": [3] + [1] * n})
    axes[0].plot(wave, flux, "k", lw=0.8, label=f"MILES {star}" if star.startswith("m") else star)
    for name, p in preds.items():
        axes[0].plot(wave, p, lw=0.6, label=name)
    axes[0].set_ylabel("normalised flux")
    axes[0].legend(fontsize=7, ncol=3)
    for ax, (name, p) in zip(axes[1:], preds.items()):
        ax.plot(wave, p - flux, lw=0.6)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"{name}\nresid.", fontsize=7)
    axes[-1].set_xlabel("wavelength [$\\AA$]")
    _save(fig, path)


def correlation(wave, residuals: dict, path) -> dict:
    """Pearson correlation of the residuals between every pair of pixels, pixels in wavelength
    order (Fig. 7); returns the median correlation per model."""
    n = len(residuals)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
    medians = {}
    for ax, (name, r) in zip(axes[0], residuals.items()):
        c = np.corrcoef(r, rowvar=False)
        c = np.nan_to_num(c)
        medians[name] = float(np.median(c))
        im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r", origin="lower",
                       extent=[wave[0], wave[-1], wave[0], wave[-1]])
        ax.set(title=f"{name} (median {medians[name]:.3f})", xlabel="wavelength [$\\AA$]")
    axes[0, 0].set_ylabel("wavelength [$\\AA$]")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Pearson r")
    _save(fig, path)
    return medians


def finetune(rows: list[dict], path):
    """Fine-tuned vs from-scratch test MAE and MAQE_0.95 per model and size (Fig. 5 lower)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [f"{r['model']}\nn={r['n_train']}" for r in rows]
    x = np.arange(len(rows))
    for ax, key in zip(axes, ("mae", "maqe_0.95")):
        ax.bar(x - 0.2, [r["scratch"][key] for r in rows], 0.4, label="scratch")
        ax.bar(x + 0.2, [r["finetune"][key] for r in rows], 0.4, label="fine-tuned")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set(yscale="log", ylabel=f"test {key.upper()} (normalised flux)")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def inference(tables: dict, names: list[str], path):
    """Fitted vs catalogue labels of the held-out stars, per emulator (Fig. 8 / Table 2 analogue)."""
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        lo = min(np.nanmin(t[f"{name}_true"]) for t in tables.values())
        hi = max(np.nanmax(t[f"{name}_true"]) for t in tables.values())
        for model, t in tables.items():
            ax.plot(t[f"{name}_true"], t[f"{name}_fit"], "o", ms=3, label=model)
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
        ax.set(xlabel=f"catalogue {LABEL_TEX.get(name, name)}", ylabel=f"fitted {LABEL_TEX.get(name, name)}")
    axes[0, 0].legend(fontsize=7)
    _save(fig, path)
