"""The MSA ensemble beside the gradient-boosted trees: scores on the whole test split and on the
thesis's population, the hot-star tail's part of the MAE, the targets, and one figure.

The thesis's APOGEE sample is FGK stars, so its 92 K / 0.075 / 0.090 compare with our FGK subset
(4000 < Teff < 7000 K by the catalogue label), not with a test split that runs to 20,000 K.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import columns as C  # noqa: E402
from .evaluate import MODES, TITLES, _save, metrics, point_scores  # noqa: E402

FGK = (4000.0, 7000.0)  # K, open interval, on the catalogue (true) Teff
HOT = 7000.0  # K: the hot-star tail, Teff >= HOT
MARGIN_WITH_XP = 0.85  # target: MSA MAE at least 15 % below the trees' with XP (issue 15)
ZSTD_RANGE = (0.8, 1.2)  # calibrated uncertainties
TARGET_LABELS = ("teff", "logg", "fe_h")
TREE = "tree_"  # prefix of the trees' columns in the joined test frame
# The thesis's MAE on its 220-million-star run (McKay 2025, Table 4.1), per label.
THESIS_MAE = {"teff": 92.0, "logg": 0.075, "fe_h": 0.090}


def with_trees(test: pd.DataFrame, trees: pd.DataFrame) -> pd.DataFrame:
    """The joined test frame plus the trees' predictions (`tree_{label}_p50{sfx}`)."""
    cols = [c for c in trees.columns if "_p50" in c]
    return test.merge(trees[["source_id", *cols]].rename(columns={c: TREE + c for c in cols}),
                      on="source_id", how="left")


def fgk_mask(test: pd.DataFrame) -> np.ndarray:
    t = test["true_teff"].to_numpy()
    return (t > FGK[0]) & (t < FGK[1])


def tree_metrics(test: pd.DataFrame) -> dict:
    """Point scores of the trees per mode and label (no uncertainties: no z-scores)."""
    out = {}
    for mode, sfx in MODES.items():
        out[mode] = {label: point_scores(test[f"{TREE}{label}_p50{sfx}"].to_numpy(),
                                         test[f"true_{label}"].to_numpy()) for label in C.LABELS}
    return out


def hot_tail(test: pd.DataFrame, prefix: str = "") -> dict:
    """Per mode and label: the hot stars' share of the summed absolute error (so of the MAE)
    and the MAE without them."""
    hot = test["true_teff"].to_numpy() >= HOT
    out = {}
    for mode, sfx in MODES.items():
        out[mode] = {}
        for label in C.LABELS:
            err = np.abs(test[f"{prefix}{label}_p50{sfx}"].to_numpy() - test[f"true_{label}"].to_numpy())
            ok = np.isfinite(err)
            if ok.any():
                out[mode][label] = {"n_hot": int((ok & hot).sum()),
                                    "share_of_mae": float(err[ok & hot].sum() / err[ok].sum()),
                                    "mae_without_hot": float(err[ok & ~hot].mean())}
    return out


def comparison(test: pd.DataFrame) -> dict:
    """The metrics file's `baseline`, `fgk` and `hot_tail` blocks."""
    fgk = test.loc[fgk_mask(test)]
    return {
        "baseline": {"model": "LightGBM per label (stars_baseline); XP hidden = trained without XP",
                     "scores": tree_metrics(test)},
        "fgk": {"definition": f"{FGK[0]:.0f} < Teff < {FGK[1]:.0f} K (catalogue label)", "n": len(fgk),
                "msa": metrics(fgk), "baseline": tree_metrics(fgk)},
        "hot_tail": {"definition": f"Teff >= {HOT:.0f} K (catalogue label)",
                     "n": int((test["true_teff"] >= HOT).sum()),
                     "msa": hot_tail(test), "baseline": hot_tail(test, TREE)},
    }


def target(metric: str, value, reference: str, reference_value, bound, lower=None) -> dict:
    """One headline entry with a target: `met` and `ratio` = value / upper bound (< 1 when met
    for a bound alone; with `lower` the value must also be at least that)."""
    entry = {"metric": metric, "value": value, "reference": reference,
             "reference_value": reference_value, "target": bound}
    known = value is not None and bound is not None and np.isfinite(value)
    entry["met"] = bool(value <= bound and (lower is None or value >= lower)) if known else None
    entry["ratio"] = float(value / bound) if known and bound else None
    if lower is not None:
        entry["target_range"] = [lower, bound]
    return entry


def target_rows(scores: dict, trees: dict, fgk: dict) -> list[dict]:
    """The headline: FGK MAE against the thesis (its population), and issue 15's targets: MAE
    15 % below the trees' with XP, below them with XP hidden, z-score std 0.8-1.2 with XP hidden."""
    rows = []
    for label in TARGET_LABELS:
        if fgk["with_xp"].get(label, {}).get("n"):
            rows.append({"metric": f"{label} MAE (with XP, FGK)", "value": fgk["with_xp"][label]["mae"],
                         "reference": "thesis", "reference_value": THESIS_MAE[label], "target": None})
        for mode, factor, name in (("with_xp", MARGIN_WITH_XP, "with XP"), ("without_xp", 1.0, "XP hidden")):
            msa, tree = scores[mode].get(label, {}), trees[mode].get(label, {})
            if msa.get("n") and tree.get("n"):
                rows.append(target(f"{label} MAE ({name}) vs trees", msa["mae"], f"LightGBM, {name}",
                                   tree["mae"], factor * tree["mae"]))
        hidden = scores["without_xp"].get(label, {})
        if hidden.get("n"):
            rows.append(target(f"{label} z-score std (XP hidden)", hidden["zscore_std"], "N(0, 1)",
                               1.0, ZSTD_RANGE[1], lower=ZSTD_RANGE[0]))
    return rows


def comparison_figure(result: dict, out) -> None:
    """MAE per label: MSA beside the trees, with XP and XP hidden, all test stars and FGK only."""
    labels = [c for c in C.LABELS if result["scores"]["with_xp"][c].get("n")] or C.LABELS[:1]
    groups = [("all", "with_xp", result["scores"], result["baseline"]["scores"]),
              ("all", "without_xp", result["scores"], result["baseline"]["scores"]),
              ("FGK", "with_xp", result["fgk"]["msa"], result["fgk"]["baseline"]),
              ("FGK", "without_xp", result["fgk"]["msa"], result["fgk"]["baseline"])]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 3.6), squeeze=False)
    x = np.arange(len(groups))
    for ax, label in zip(axes[0], labels):
        msa = [g[2][g[1]][label].get("mae", np.nan) for g in groups]
        tree = [g[3][g[1]][label].get("mae", np.nan) for g in groups]
        ax.bar(x - 0.2, msa, 0.4, label="MSA ensemble", color="tab:blue")
        ax.bar(x + 0.2, tree, 0.4, label="LightGBM", color="tab:orange")
        ax.set_xticks(x, [f"{g[0]}\n{'XP' if g[1] == 'with_xp' else 'no XP'}" for g in groups], fontsize=7)
        ax.set_title(f"{TITLES[label]}: test MAE", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"MSA vs trees (FGK: {FGK[0]:.0f} < Teff < {FGK[1]:.0f} K)", fontsize=9)
    fig.tight_layout()
    _save(fig, out)
