"""Figures of the redshift stage (matplotlib, Agg, PNG), after SpecPT Figs 5-13."""

from __future__ import annotations

import numpy as np

from specfm.io import atomic_path

METHODS = (("z_specpt", "SpecPT", "C0"), ("z_redrock", "Redrock", "C3"), ("z_hybrid", "hybrid", "C2"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out):
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)


def reconstructions(wave, flux, ivar, recon, labels, out):
    """Observed (masked pixels blank) vs autoencoder reconstruction (Figs 5-6)."""
    plt = _plt()
    n = len(flux)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.3 * n), squeeze=False)
    for ax, f, iv, r, lab in zip(axes[:, 0], flux, ivar, recon, labels):
        ax.plot(wave, np.where(iv > 0, f, np.nan), lw=0.4, color="0.5", label="observed")
        ax.plot(wave, r, lw=0.8, color="C3", label="reconstruction")
        lo, hi = np.nanpercentile(np.where(iv > 0, f, np.nan), [1, 99.8])
        ax.set_ylim(min(lo, -0.5), max(hi, 2.0))
        ax.set_title(lab, fontsize=9)
        ax.set_ylabel("flux / median")
    axes[-1, 0].set_xlabel("observed wavelength [A]")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def _density_contours(ax, x, y):
    if x.size < 20:
        return
    h, xe, ye = np.histogram2d(x, y, bins=40)
    from scipy.ndimage import gaussian_filter

    h = gaussian_filter(h, 1.0)
    levels = np.quantile(h[h > 0], [0.5, 0.8, 0.95]) if np.any(h > 0) else None
    if levels is not None and np.all(np.diff(levels) > 0):
        ax.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T, levels=levels, colors="k",
                   linewidths=0.7)


def z_vs_true(df, out):
    """z_pred vs z_true with density contours, and dz/(1+z) below (Figs 7, 11), per method."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), gridspec_kw={"height_ratios": [3, 1.3]}, sharex="col")
    for k, (col, name, c) in enumerate(METHODS):
        d = df[np.isfinite(df[col]) & np.isfinite(df["z_true"])]
        zt, zp = d["z_true"].to_numpy(), d[col].to_numpy()
        ax, rx = axes[0, k], axes[1, k]
        ax.scatter(zt, zp, s=3, alpha=0.5, color=c)
        _density_contours(ax, zt, zp)
        lim = [0, max(1.7, np.nanmax(zt) if zt.size else 1.7)]
        ax.plot(lim, lim, "k--", lw=0.7)
        ax.set_title(f"{name} (n = {zt.size})")
        ax.set_ylabel("z predicted")
        r = (zp - zt) / (1 + zt)
        rx.scatter(zt, r, s=3, alpha=0.5, color=c)
        for s in (-0.15, 0.15):
            rx.axhline(s, ls=":", color="k", lw=0.7)
        rx.axhline(0, color="k", lw=0.5)
        rx.set_ylim(-0.2, 0.2)
        rx.set_xlabel("z true")
        rx.set_ylabel("dz / (1 + z)")
    fig.tight_layout()
    _save(fig, out)


def residual_histograms(df, out):
    """dz/(1+z) histograms on a log count axis (Figs 8, 12)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(-0.05, 0.05, 101)
    for col, name, c in METHODS:
        d = df[np.isfinite(df[col]) & np.isfinite(df["z_true"])]
        r = np.clip((d[col] - d["z_true"]) / (1 + d["z_true"]), bins[0], bins[-1])
        ax.hist(r, bins=bins, histtype="step", color=c, label=f"{name} (n = {len(r)})", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("dz / (1 + z)  (clipped at +-0.05)")
    ax.set_ylabel("spectra per bin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def residual_per_zbin(df, edges, out):
    """Mean dz/(1+z) and its std per z_true bin (Fig. 13)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    centres = 0.5 * (edges[1:] + edges[:-1])
    for j, (col, name, c) in enumerate(METHODS):
        d = df[np.isfinite(df[col]) & np.isfinite(df["z_true"])]
        r = ((d[col] - d["z_true"]) / (1 + d["z_true"])).to_numpy()
        zt = d["z_true"].to_numpy()
        m, s = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (zt >= lo) & (zt < hi)
            m.append(np.mean(r[sel]) if sel.sum() else np.nan)
            s.append(np.std(r[sel]) if sel.sum() > 1 else np.nan)
        ax.errorbar(centres + (j - 1) * 0.01, m, yerr=s, fmt="o-", color=c, label=name, ms=4, capsize=2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("z true")
    ax.set_ylabel("mean dz / (1 + z)  (bars: std)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def umap_latents(latents, z, out, seed: int = 0, n_max: int = 3000):
    """3-component UMAP of the autoencoder latents, pairwise, coloured by z (Figs 9-10)."""
    plt = _plt()
    ok = np.isfinite(z)
    lat, z = latents[ok], z[ok]
    if lat.shape[0] < 20:  # UMAP needs neighbours; say so instead of drawing nonsense
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, f"{lat.shape[0]} spectra with a redshift: too few for a UMAP", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, out)
        return
    import umap

    if lat.shape[0] > n_max:
        pick = np.random.default_rng(seed).choice(lat.shape[0], n_max, replace=False)
        lat, z = lat[pick], z[pick]
    emb = umap.UMAP(n_components=3, random_state=seed, n_neighbors=min(15, max(2, lat.shape[0] - 1)),
                    n_jobs=1).fit_transform(lat)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2))):
        sc = ax.scatter(emb[:, i], emb[:, j], c=z, s=3, cmap="coolwarm")
        ax.set_xlabel(f"UMAP {i + 1}")
        ax.set_ylabel(f"UMAP {j + 1}")
    fig.colorbar(sc, ax=axes, label="z")
    _save(fig, out)
