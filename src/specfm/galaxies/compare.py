"""GalProTE versus pPXF (and the truth of a mock): metrics and the paper's comparison figures.

GalProTE Sect. 4.3 (Figures 13-18) compares the age, [M/H] and A_V maps of the model with pPXF's: the
two maps and their difference, and the running difference against the pPXF value; Sect. 5.1 the
time per spectrum. Here the same, on two maps files of one binning (``maps.read_maps``), optionally
with the mock's truth per bin (``mock_cube.truth_per_bin``) or, for a PHANGS galaxy, the published
PHANGS pPXF maps put on our bins (``phangs.published_per_bin``): model - published and pPXF -
published are then reported and drawn as well.

Statistics are per Voronoi bin (each bin is one fit; a bin of 40 spaxels counts once), over the bins
where both sides are finite: bias = mean of the difference, scatter = its standard deviation
(population, ddof = 0), plus the median and the RMS. Residuals (RESID_MEAN, RESID_STD: per-bin mean
and std of data - fit over the fitted pixels, in units of the median-normalised spectrum) are pooled
over bins as if every bin had the same number of pixels: mean = mean of the means, std =
sqrt(mean(std^2 + mean^2) - mean^2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from specfm.io import atomic_path

from .maps import Maps

QUANTITIES = ("LOGAGE", "MH", "AV")
LABELS = {"LOGAGE": "log age [yr]", "MH": "[M/H] [dex]", "AV": "A_V [mag]"}
DIFF_LABELS = {"LOGAGE": "delta log age [dex]", "MH": "delta [M/H] [dex]", "AV": "delta A_V [mag]"}
MODEL_NAME = "GalProTE"


# ------------------------------------------------------------------------------------ per-bin data


def bin_index(bin_id) -> tuple[np.ndarray, np.ndarray]:
    """(bins present, flat index of the first spaxel of each) for a bin_id map (-1 = not used)."""
    flat = np.asarray(bin_id).ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids >= 0
    return ids[keep], first[keep]


def per_bin(maps: Maps, name: str) -> np.ndarray:
    """[n_bins] values of image ``name`` (every spaxel of a bin holds the bin's value); NaN for absent bins."""
    ids, first = bin_index(maps.bin_id)
    n = int(ids.max()) + 1 if ids.size else 0
    out = np.full(n, np.nan)
    if name in maps.images:
        out[ids] = np.asarray(maps.images[name], dtype=float).ravel()[first]
    return out


def paint(values, bin_id) -> np.ndarray:
    """Per-bin ``values`` -> image on the bin_id grid (NaN where bin_id == -1)."""
    bin_id = np.asarray(bin_id)
    values = np.asarray(values, dtype=float)
    img = np.full(bin_id.shape, np.nan)
    inside = bin_id >= 0
    img[inside] = values[bin_id[inside]]
    return img


def _check_same_bins(a: Maps, b: Maps) -> None:
    if a.bin_id.shape != b.bin_id.shape or not np.array_equal(a.bin_id, b.bin_id):
        raise ValueError("the two maps files have different BIN_ID maps: they are not from the same binning")


def _truth_values(truth, name: str, n_bins: int, bin_id) -> np.ndarray | None:
    """Per-bin truth of ``name``: from a truth_per_bin dict, or a mock Truth (spaxel maps, LIGHT-weighted)."""
    if truth is None:
        return None
    if hasattr(truth, "maps"):  # a mock_cube.Truth: bin it the way truth_per_bin does
        from .mock_cube import truth_per_bin

        truth = truth_per_bin(truth, bin_id)
    if name not in truth:
        return None
    v = np.asarray(truth[name], dtype=float)
    if v.shape != (n_bins,):
        raise ValueError(f"truth[{name!r}] has shape {v.shape}; expected ({n_bins},) per-bin values")
    return v


def diff_stats(d) -> dict:
    """bias (mean), scatter (std, ddof 0), median, rmse and count of the finite values of ``d``."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"bias": float("nan"), "scatter": float("nan"), "median": float("nan"), "rmse": float("nan"), "n": 0}
    return {"bias": float(d.mean()), "scatter": float(d.std()), "median": float(np.median(d)),
            "rmse": float(np.sqrt(np.mean(d**2))), "n": int(d.size)}


def residual_stats(maps: Maps) -> dict:
    """Pooled residual mean and std over bins (module docstring), and the median per-bin std."""
    m, s = per_bin(maps, "RESID_MEAN"), per_bin(maps, "RESID_STD")
    ok = np.isfinite(m) & np.isfinite(s)
    if not ok.any():
        return {"resid_mean": float("nan"), "resid_std": float("nan"), "resid_std_median": float("nan"), "n": 0}
    mean = float(m[ok].mean())
    pooled = float(np.sqrt(max(np.mean(s[ok] ** 2 + m[ok] ** 2) - mean**2, 0.0)))
    return {"resid_mean": mean, "resid_std": pooled, "resid_std_median": float(np.median(s[ok])), "n": int(ok.sum())}


def _seconds(timing: Mapping | None, name: str) -> float:
    """Seconds per spectrum of ``name`` ('model' or 'ppxf') from {name: s}, {name: {...}} or a bench JSON."""
    if not timing:
        return float("nan")
    for key in (f"{name}_seconds_per_spectrum", name):
        if key in timing:
            v = timing[key]
            if isinstance(v, Mapping):
                v = v.get("seconds_per_spectrum", float("nan"))
            return float(v)
    return float("nan")


HEADLINE_NAMES = {"LOGAGE": "log age [dex]", "MH": "[M/H] [dex]", "AV": "A_V [mag]"}
BIAS_TARGETS = {"LOGAGE": 0.05, "MH": 0.05, "AV": 0.03}  # issue 14: |bias| against a mock's truth


def headline(out: Mapping) -> list[dict]:
    """The report's rows: GalProTE's per-bin scatter against the reference, next to pPXF's (against
    the truth for a mock), or GalProTE - pPXF scatter for a real galaxy; then the speed ratio."""
    rows = []
    for q, name in HEADLINE_NAMES.items():
        if out["reference"] == "truth" and out["model"]["vs_truth"] and q in out["model"]["vs_truth"]:
            rows.append({"metric": f"GalProTE {name} scatter vs truth", "value": out["model"]["vs_truth"][q]["scatter"],
                         "reference": "pPXF", "reference_value": out["ppxf"]["vs_truth"][q]["scatter"],
                         "target": None})
            rows.append({"metric": f"GalProTE {name} |bias| vs truth", "value": abs(out["model"]["vs_truth"][q]["bias"]),
                         "reference": "pPXF", "reference_value": abs(out["ppxf"]["vs_truth"][q]["bias"]),
                         "target": BIAS_TARGETS[q]})
        else:
            rows.append({"metric": f"GalProTE - pPXF {name} scatter", "value": out["model_vs_ppxf"][q]["scatter"],
                         "reference": "pPXF", "reference_value": 0.0, "target": None})
    rows.append({"metric": "speed ratio pPXF s / GalProTE s", "value": out["speed_ratio"],
                 "reference": "paper target", "reference_value": 1000.0, "target": 1000.0})
    return rows


def compare_maps(model_maps: Maps, ppxf_maps: Maps, truth=None, *, timing: Mapping | None = None,
                 published: Mapping | None = None) -> dict:
    """Metrics of the model and of pPXF (module docstring for the definitions).

    ``truth``: ``mock_cube.truth_per_bin(...)`` output ({NAME: [n_bins]}), a ``mock_cube.Truth``, or
    None (real data: the model is compared with pPXF only). ``timing``: seconds per spectrum as
    ``{"model": s, "ppxf": s}`` or the ``bench.benchmark_speed`` dict. ``published``: None, or
    {"values": {Q: [n_bins]} (``phangs.published_per_bin``), plus any descriptive keys (source,
    extensions, rv, ...)}, or {"available": False, "reason": ...} when the file had none.

    Returns {"reference": "truth" | "ppxf", "n_bins", "model": {"vs_truth": {Q: stats} | None,
    "resid_mean", "resid_std", "resid_std_median", "seconds_per_spectrum"}, "ppxf": {same,
    "n_failed"}, "model_vs_ppxf": {Q: stats of model - pPXF}, "speed_ratio": pPXF s / model s,
    "published": None | {"available", descriptive keys, "model_vs_published": {Q: stats},
    "ppxf_vs_published": {Q: stats}}} with stats = diff_stats (bias, scatter, median, rmse, n) for Q
    in LOGAGE, MH, AV (only the quantities the published file has).
    """
    _check_same_bins(model_maps, ppxf_maps)
    ids, _ = bin_index(model_maps.bin_id)
    n_bins = int(ids.max()) + 1 if ids.size else 0
    values = {src: {q: per_bin(m, q) for q in QUANTITIES} for src, m in (("model", model_maps), ("ppxf", ppxf_maps))}
    true = {q: _truth_values(truth, q, n_bins, model_maps.bin_id) for q in QUANTITIES}
    out: dict = {"reference": "truth" if truth is not None else "ppxf", "n_bins": n_bins}
    for src, maps in (("model", model_maps), ("ppxf", ppxf_maps)):
        block: dict = {"vs_truth": None}
        if truth is not None:
            block["vs_truth"] = {q: diff_stats(values[src][q] - true[q]) for q in QUANTITIES if true[q] is not None}
        block.update(residual_stats(maps))
        block["seconds_per_spectrum"] = _seconds(timing, src)
        out[src] = block
    out["ppxf"]["n_failed"] = int(np.sum(~np.isfinite(values["ppxf"]["LOGAGE"][ids])))
    out["model_vs_ppxf"] = {q: diff_stats(values["model"][q] - values["ppxf"][q]) for q in QUANTITIES}
    s_model, s_ppxf = out["model"]["seconds_per_spectrum"], out["ppxf"]["seconds_per_spectrum"]
    out["speed_ratio"] = float(s_ppxf / s_model) if s_model > 0 else float("nan")
    out["published"] = _published_block(published, values, n_bins)
    out["headline"] = headline(out)
    out["definitions"] = {
        "difference": "method - reference per Voronoi bin; bias = mean, scatter = std (ddof 0)",
        "residuals": "data - fit on the fitted pixels, units of the median-normalised spectrum; pooled over bins",
        "speed_ratio": "pPXF seconds per spectrum / model seconds per spectrum",
    }
    return out


SPECTRA_COLUMNS = {"LOGAGE": "log_age", "MH": "mh", "AV": "av"}


def spectra_agreement(table: Mapping) -> dict:
    """GalProTE - pPXF per spectrum of a `single.predict_table` table (rows pPXF fitted): bias,
    scatter, median, rmse and mean |difference| per quantity, with the report's headline rows."""
    ok = np.asarray(table.get("ppxf_ok", []), bool)
    out = {"n_spectra": int(len(table["log_age"])), "n_ppxf_ok": int(ok.sum()), "model_vs_ppxf": {}}
    rows = []
    for q, col in SPECTRA_COLUMNS.items():
        d = np.asarray(table[col], float)[ok] - np.asarray(table[f"ppxf_{col}"], float)[ok]
        stats = {**diff_stats(d), "mean_abs": float(np.mean(np.abs(d))) if d.size else float("nan")}
        out["model_vs_ppxf"][q] = stats
        rows.append({"metric": f"GalProTE - pPXF {HEADLINE_NAMES[q]} mean |diff|, {d.size} spectra",
                     "value": stats["mean_abs"], "reference": "pPXF", "reference_value": 0.0, "target": None})
    out["headline"] = rows if ok.any() else [{"metric": "spectra predicted (no pPXF fits)",
                                              "value": out["n_spectra"], "target": None}]
    return out


def _published_values(published, n_bins: int) -> dict:
    """{Q: [n_bins]} of a ``published`` argument (see compare_maps); {} when there is none."""
    if not published or "values" not in published:
        return {}
    out = {}
    for q, v in published["values"].items():
        v = np.asarray(v, dtype=float)
        if v.shape != (n_bins,):
            raise ValueError(f"published[{q!r}] has shape {v.shape}; expected ({n_bins},) per-bin values")
        out[q] = v
    return out


def _published_block(published, values: dict, n_bins: int) -> dict | None:
    if published is None:
        return None
    block = {k: v for k, v in published.items() if k != "values"}
    block.setdefault("available", "values" in published)
    pub = _published_values(published, n_bins)
    for src in ("model", "ppxf"):
        block[f"{src}_vs_published"] = {q: diff_stats(values[src][q] - pub[q]) for q in QUANTITIES if q in pub}
    return block


# ----------------------------------------------------------------------------------------- figures


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def _range(*images, lo=2.0, hi=98.0):
    v = np.concatenate([np.asarray(i, float)[np.isfinite(i)] for i in images] or [np.zeros(0)])
    if v.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 0.5, float(a) + 0.5)


def _sym(*images, pct=98.0):
    v = np.concatenate([np.abs(np.asarray(i, float)[np.isfinite(i)]) for i in images] or [np.zeros(0)])
    m = float(np.percentile(v, pct)) if v.size else 0.0
    return m if m > 0 else 1.0


def _truth_images(truth, maps: Maps) -> dict | None:
    if truth is None:
        return None
    if hasattr(truth, "maps"):
        return {q: np.asarray(truth.maps[q], float) for q in QUANTITIES if q in truth.maps}
    return {q: paint(truth[q], maps.bin_id) for q in QUANTITIES if q in truth}


def _reference(truth, published, maps: Maps):
    """(label, {Q: image}) of the reference the panels compare with: the truth, else the published
    PHANGS maps (painted on our bins), else (None, None)."""
    if truth is not None:
        return "truth", _truth_images(truth, maps)
    ids, _ = bin_index(maps.bin_id)
    pub = _published_values(published, int(ids.max()) + 1 if ids.size else 0)
    if pub:
        return "published", {q: paint(v, maps.bin_id) for q, v in pub.items()}
    return None, None


def plot_map_panels(model_maps: Maps, ppxf_maps: Maps, path: str | Path, truth=None, published=None) -> None:
    """Rows LOGAGE, MH, AV. Columns: pPXF, GalProTE, GalProTE - pPXF; with ``truth`` (per-bin dict or a
    mock ``Truth``) or ``published`` (as for ``compare_maps``) as the reference: reference, pPXF,
    GalProTE, pPXF - reference, GalProTE - reference (blank where the reference lacks a quantity).
    RA/Dec axes (WCSAxes), one colour range per row for the values and one symmetric diverging range
    for the differences.
    """
    from matplotlib.figure import Figure

    _check_same_bins(model_maps, ppxf_maps)
    wcs = model_maps.wcs
    label, t_img = _reference(truth, published, model_maps)
    if t_img is None:
        titles = ["pPXF", MODEL_NAME, f"{MODEL_NAME} - pPXF"]
    else:
        titles = [label, "pPXF", MODEL_NAME, f"pPXF - {label}", f"{MODEL_NAME} - {label}"]
    ncol = len(titles)
    fig = Figure(figsize=(3.0 * ncol + 0.6, 8.4), dpi=100, layout="constrained")
    for r, q in enumerate(QUANTITIES):
        p_img = np.asarray(ppxf_maps.images[q], float)
        m_img = np.asarray(model_maps.images[q], float)
        if t_img is None:
            values, diffs = [p_img, m_img], [m_img - p_img]
        else:
            t = t_img.get(q, np.full(p_img.shape, np.nan))
            values, diffs = [t, p_img, m_img], [p_img - t, m_img - t]
        vmin, vmax = _range(*values)
        dmax = _sym(*diffs)
        for c, img in enumerate(values + diffs):
            is_diff = c >= len(values)
            ax = fig.add_subplot(3, ncol, r * ncol + c + 1, projection=wcs)
            im = ax.imshow(img, origin="lower", interpolation="nearest",
                           cmap="RdBu_r" if is_diff else "viridis",
                           vmin=-dmax if is_diff else vmin, vmax=dmax if is_diff else vmax)
            ra, dec = ax.coords[0], ax.coords[1]
            ra.set_ticklabel(size=6)
            dec.set_ticklabel(size=6)
            if r == 2:
                ra.set_axislabel("RA", size=7)
            else:
                ra.set_ticklabel_visible(False)
            if c == 0:
                dec.set_axislabel("Dec", size=7)
            else:
                dec.set_ticklabel_visible(False)
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
            cb.ax.tick_params(labelsize=6)
            if c == len(values) - 1 or c == ncol - 1:
                cb.set_label(DIFF_LABELS[q] if is_diff else LABELS[q], fontsize=7)
    _save(fig, path)


def running_stats(x, y, n_bins: int = 12, min_count: int = 5):
    """Running median and 16/84 % percentiles of ``y`` in ``n_bins`` equal-width bins of ``x`` (1-99 % range).

    Returns (centres, median, p16, p84, counts) for bins holding >= ``min_count`` points.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < min_count:
        return (np.zeros(0),) * 5
    lo, hi = np.percentile(x, [1, 99])
    if hi <= lo:
        lo, hi = x.min() - 0.5, x.max() + 0.5
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.digitize(x, edges) - 1, 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        sel = idx == k
        if sel.sum() >= min_count:
            p16, p50, p84 = np.percentile(y[sel], [16, 50, 84])
            rows.append((0.5 * (edges[k] + edges[k + 1]), p50, p16, p84, sel.sum()))
    if not rows:
        return (np.zeros(0),) * 5
    return tuple(np.array(col) for col in zip(*rows))


def plot_running_differences(model_maps: Maps, ppxf_maps: Maps, path: str | Path, truth=None, *,
                             published=None, n_bins: int = 12) -> None:
    """Paper Figures 13b-18b: the difference against the reference value, per bin, with the running
    median and the 16-84 % band. Without a reference: GalProTE - pPXF against pPXF; with ``truth`` (or
    ``published``, as for ``compare_maps``), pPXF - reference and GalProTE - reference against it.
    """
    from matplotlib.figure import Figure

    _check_same_bins(model_maps, ppxf_maps)
    ids, _ = bin_index(model_maps.bin_id)
    n = int(ids.max()) + 1 if ids.size else 0
    pub = _published_values(published, n) if truth is None else {}
    label = "truth" if truth is not None else "published"
    fig = Figure(figsize=(13, 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, q in zip(axes, QUANTITIES):
        p, m = per_bin(ppxf_maps, q), per_bin(model_maps, q)
        t = _truth_values(truth, q, n, model_maps.bin_id) if truth is not None else pub.get(q)
        if t is None:
            series = [(f"{MODEL_NAME} - pPXF", p, m - p, "C0")]
            xlabel = f"pPXF {LABELS[q]}"
        else:
            series = [(f"pPXF - {label}", t, p - t, "C1"), (f"{MODEL_NAME} - {label}", t, m - t, "C0")]
            xlabel = f"{label} {LABELS[q]}"
        for name, x, d, color in series:  # not `label`: that names the reference for every panel
            s = diff_stats(d)
            ax.scatter(x, d, s=4, color=color, alpha=0.35, lw=0,
                       label=f"{name}: {s['bias']:+.3f} +- {s['scatter']:.3f} (n={s['n']})")
            cx, med, p16, p84, _ = running_stats(x, d, n_bins)
            if cx.size:
                ax.fill_between(cx, p16, p84, color=color, alpha=0.2, lw=0)
                ax.plot(cx, med, color=color, lw=1.8)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set(xlabel=xlabel, ylabel=DIFF_LABELS[q])
        ax.legend(fontsize=7, loc="best", markerscale=3)
    fig.suptitle("running median and 16-84 % band; legend: bias +- scatter per bin", fontsize=9)
    _save(fig, path)


def plot_residual_histograms(model_maps: Maps, ppxf_maps: Maps, path: str | Path, *, bins: int = 40) -> None:
    """Histograms of the per-bin residual mean and std (in % of the median-normalised spectrum)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, name, title in zip(axes, ("RESID_MEAN", "RESID_STD"), ("residual mean per bin", "residual std per bin")):
        data = [(lab, 100 * per_bin(mp, name), c) for lab, mp, c in (("pPXF", ppxf_maps, "C1"),
                                                                     (MODEL_NAME, model_maps, "C0"))]
        finite = [d[np.isfinite(d)] for _, d, _ in data]
        allv = np.concatenate(finite) if finite else np.zeros(0)
        if allv.size:
            lo, hi = np.percentile(allv, [0.5, 99.5])
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        else:
            edges = np.linspace(0, 1, bins + 1)
        for (lab, _, c), v in zip(data, finite):
            stats = residual_stats(ppxf_maps if lab == "pPXF" else model_maps)
            key = "resid_mean" if name == "RESID_MEAN" else "resid_std"
            ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, histtype="step", color=c, lw=1.5,
                    label=f"{lab}: pooled {100 * stats[key]:.2f} % (n={v.size})")
        ax.set(xlabel=f"{title} [% of the median]", ylabel="bins", title=title)
        ax.legend(fontsize=8)
    _save(fig, path)


__all__ = ["QUANTITIES", "bin_index", "compare_maps", "diff_stats", "paint", "per_bin", "plot_map_panels",
           "plot_residual_histograms", "plot_running_differences", "residual_stats", "running_stats"]
