"""Synthetic-evaluation figures of GalProTE (the paper's Figures 8-12) from `training.synthetic_predictions`.

Per split (``test``: the training combinations with new noise; ``test_unseen``: combinations never
seen in training):

* ``logage`` / ``mh`` / ``av`` (Figs 8-10): the distributions of the true and predicted
  light-weighted log age, [M/H] and A_V, and the confusion matrix. A_V is a class (16 levels);
  the light-weighted means are continuous, so they are binned to the nearest node of the template
  grid (as the paper's age / [M/H] "bins"). Each row is normalised by the number of true values in it,
  so a row reads "where do spectra of this true class end up" whatever the class's population;
* ``mse`` (Fig. 11): the distribution of the per-spectrum percentage MSE between input and
  reconstruction (and of its floor, the reconstruction from the true grid), and the errors in age,
  [M/H] and A_V against it;
* ``residuals`` (Fig. 12): the point-to-point residual histogram (input - reconstruction, % of the
  median flux) pooled over every pixel of the split.

The PNG bytes depend only on the data and the matplotlib version (no timestamps, Agg backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specfm.io import atomic_path

KINDS = ("logage", "mh", "av", "mse", "residuals")
SPLIT_TITLES = {"test": "test (training combinations, new noise)",
                "test_unseen": "test_unseen (combinations never seen in training)"}
_QUANTITY = {  # kind -> (prediction key, grid axis, label)
    "logage": ("log_age", "log_age", "light-weighted log age [yr]"),
    "mh": ("mh", "mh", "light-weighted [M/H] [dex]"),
    "av": ("av", "av_levels", "A_V [mag]"),
}


def nearest_node(values, nodes) -> np.ndarray:
    """Index of the nearest value of ``nodes`` (sorted or not) for each of ``values``."""
    values, nodes = np.asarray(values, float), np.asarray(nodes, float)
    return np.abs(values[:, None] - nodes[None, :]).argmin(axis=1)


def confusion_matrix(true_idx, pred_idx, n: int, normalise: bool = True) -> np.ndarray:
    """[n, n] counts (rows: true class, columns: predicted); rows normalised to 1 where not empty."""
    m = np.zeros((n, n), float)
    np.add.at(m, (np.asarray(true_idx, int), np.asarray(pred_idx, int)), 1.0)
    if normalise:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    return m


def _figure(ncols: int, width: float = 4.6, height: float = 3.9):
    from matplotlib.figure import Figure  # local: reading predictions must not need matplotlib

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def _tick_labels(nodes, max_ticks: int = 9):
    step = max(1, int(np.ceil(len(nodes) / max_ticks)))
    idx = np.arange(0, len(nodes), step)
    return idx, [f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.0f}" for v in np.asarray(nodes)[idx]]


def plot_quantity(pred: dict, axes: dict, kind: str, path, *, split: str = "test") -> None:
    """Figs 8-10: histogram of true and predicted ``kind`` (logage, mh, av) and the confusion matrix."""
    key, axis, label = _QUANTITY[kind]
    nodes = np.asarray(axes[axis], float)
    true, got = np.asarray(pred[f"{key}_true"], float), np.asarray(pred[f"{key}_pred"], float)
    fig, (ax_h, ax_c) = _figure(2)
    half = 0.5 * np.min(np.diff(np.sort(nodes))) if nodes.size > 1 else 0.5
    edges = np.linspace(nodes.min() - half, nodes.max() + half, 41) if kind != "av" else \
        np.concatenate([nodes - half, [nodes[-1] + half]])
    ax_h.hist(true, edges, histtype="stepfilled", alpha=0.35, color="C0", label="true")
    ax_h.hist(got, edges, histtype="step", lw=1.6, color="C3", label="GalProTE")
    d = got - true
    ax_h.set(xlabel=label, ylabel="spectra",
             title=f"mean true {true.mean():.3f}, predicted {got.mean():.3f}\n"
                   f"bias {d.mean():+.3f}, scatter {d.std():.3f}, n = {true.size}")
    ax_h.legend(frameon=False)
    n = nodes.size
    m = confusion_matrix(nearest_node(true, nodes), nearest_node(got, nodes), n)
    im = ax_c.imshow(m, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ticks, labels = _tick_labels(nodes)
    ax_c.set_xticks(ticks, labels, rotation=60 if n > 9 else 0)
    ax_c.set_yticks(ticks, labels)
    diag = float(np.trace(confusion_matrix(nearest_node(true, nodes), nearest_node(got, nodes), n, False))) / max(
        true.size, 1)
    ax_c.set(xlabel=f"predicted {label}", ylabel=f"true {label}",
             title=f"confusion (rows normalised; {100 * diag:.1f} % on the diagonal)")
    fig.colorbar(im, ax=ax_c, label="fraction of the true row")
    fig.suptitle(f"GalProTE {kind}: {SPLIT_TITLES.get(split, split)}")
    _save(fig, path)


def plot_mse(pred: dict, path, *, split: str = "test") -> None:
    """Fig. 11: %MSE distribution (model and the noise floor of the true grid) and errors against it."""
    pct, floor = np.asarray(pred["pct_mse"], float), np.asarray(pred["pct_mse_truth"], float)
    fig, ax = _figure(4, width=3.9)
    hi = float(np.percentile(np.concatenate([pct, floor]), 99.5)) if pct.size else 1.0
    edges = np.linspace(0.0, hi, 50)
    above = int((pct > hi).sum())
    ax[0].hist(floor, edges, histtype="stepfilled", alpha=0.35, color="C0",
               label=f"true grid (floor), mean {floor.mean():.3f}")
    ax[0].hist(pct, edges, histtype="step", lw=1.6, color="C3",
               label=f"GalProTE, mean {pct.mean():.3f} sd {pct.std():.3f}")
    ax[0].set(xlabel="% MSE (input vs reconstruction)", ylabel="spectra",
              title=f"{above} GalProTE spectra beyond {hi:.2f} % (not shown)")
    ax[0].legend(frameon=False, fontsize="small")
    for a, (key, label) in zip(ax[1:], (("log_age", "delta log age [dex]"), ("av", "delta A_V [mag]"),
                                         ("mh", "delta [M/H] [dex]"))):
        d = np.asarray(pred[f"{key}_true"], float) - np.asarray(pred[f"{key}_pred"], float)  # paper: original - predicted
        a.hexbin(pct, d, gridsize=35, bins="log", cmap="viridis", mincnt=1, extent=(0.0, hi, d.min(), d.max()))
        a.set_xlim(0.0, hi)
        a.axhline(0, color="k", lw=0.6)
        a.set(xlabel="% MSE", ylabel=f"{label} (true - predicted)", title=f"mean {d.mean():+.3f}, sd {d.std():.3f}")
    fig.suptitle(f"GalProTE reconstruction error: {SPLIT_TITLES.get(split, split)}")
    _save(fig, path)


def plot_residuals(pred: dict, axes: dict, path, *, split: str = "test") -> None:
    """Fig. 12: the point-to-point residual histogram (input - reconstruction, % of the median flux)."""
    edges = np.asarray(axes["resid_edges_pct"], float)
    counts = np.asarray(pred["resid_hist"], float)
    n_points = int(pred["n_points"])
    mean = 100 * pred["resid_sum"] / max(n_points, 1)
    std = float(np.sqrt(max(1e4 * pred["resid_sq"] / max(n_points, 1) - mean**2, 0.0)))
    fig, (ax,) = _figure(1, width=6.0)
    ax.stairs(counts, edges, fill=True, alpha=0.6, color="C0")
    ax.set_yscale("log")
    ax.set(xlabel="input - reconstruction [% of the median flux]", ylabel="pixels",
           title=f"mean {mean:+.3f} %, std {std:.2f} %; {n_points:,} points in {int(pred['n'])} spectra\n"
                 f"outside +-{edges[-1]:.0f} %: {int(pred['resid_below']) + int(pred['resid_above'])}")
    fig.suptitle(f"GalProTE residuals: {SPLIT_TITLES.get(split, split)}")
    _save(fig, path)


def plot_synthetic(pred: dict, axes: dict, paths: dict, *, split: str = "test") -> None:
    """All the figures of one split: ``paths`` maps each of ``KINDS`` to a PNG path."""
    missing = set(KINDS) - set(paths)
    if missing:
        raise ValueError(f"plot_synthetic: no output path for {sorted(missing)}")
    if int(pred["n"]) == 0:
        raise ValueError(f"split {split!r} has no spectra: nothing to plot")
    for kind in ("logage", "mh", "av"):
        plot_quantity(pred, axes, kind, paths[kind], split=split)
    plot_mse(pred, paths["mse"], split=split)
    plot_residuals(pred, axes, paths["residuals"], split=split)


__all__ = ["KINDS", "confusion_matrix", "nearest_node", "plot_mse", "plot_quantity", "plot_residuals",
           "plot_synthetic"]
