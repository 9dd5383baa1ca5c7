"""E-MILES SSP files -> the GalProTE template grid (MUSE LSF, paper wavelength grid), HDF5 and a figure.

Steps (GalProTE Sect. 2): read the grid -> degrade the E-MILES resolution to the MUSE LSF ->
flux-conserving rebin to 4749.37-7100.49 A (948 px) -> divide each template by its median.
The median normalisation is the paper's (Sect. 3.2): the network sees light-weighted,
median-normalised spectra, so grid weights built from these templates are light fractions. The
divisors are kept in ``norm`` so mass weights can be recovered (mass weight ~ light weight / norm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from specfm.io import atomic_path

from .spectra import emiles_fwhm, emission_mask, match_lsf, muse_lsf_fwhm, paper_wavelength_grid, resample
from .templates import read_ssp_grid

EDGE_MARGIN = 50.0  # A read beyond the output grid on each side: > 5 sigma of the kernel + half a pixel
FORMAT = "specfm.galaxies.template_table/1"


@dataclass(frozen=True)
class TemplateGrid:
    wave: np.ndarray  # [n_pix] Angstrom, air
    flux: np.ndarray  # [n_Z, n_age, n_pix] float32, each template divided by its median over `mask`
    log_age: np.ndarray  # [n_age] log10(age / yr)
    mh: np.ndarray  # [n_Z] [M/H], dex
    mask: np.ndarray  # [n_pix] bool, True = kept (outside the Table 2 regions)
    norm: np.ndarray  # [n_Z, n_age] the medians divided out, in the input units (L_sun/A/M_sun)
    meta: dict = field(default_factory=dict)


def _describe(fwhm) -> str:
    return f"{fwhm.__module__}.{fwhm.__name__}" if callable(fwhm) else repr(np.asarray(fwhm).tolist())


def prepare_templates(
    paths: Iterable[str | Path],
    *,
    wave_out=None,
    fwhm_in=emiles_fwhm,
    fwhm_out=muse_lsf_fwhm,
) -> TemplateGrid:
    """Read SSP files and return the processed grid (see the module docstring for the steps).

    ``wave_out`` defaults to the paper grid; ``fwhm_in``/``fwhm_out`` are FWHM in A (numbers,
    arrays on the native grid, or callables of wavelength), default E-MILES -> MUSE (Bacon+17).
    """
    wave_out = paper_wavelength_grid() if wave_out is None else np.asarray(wave_out, dtype=float)
    raw = read_ssp_grid(paths, wave_range=(wave_out[0] - EDGE_MARGIN, wave_out[-1] + EDGE_MARGIN))
    smooth = match_lsf(raw.wave, raw.flux, fwhm_in, fwhm_out)
    flux = resample(raw.wave, smooth, wave_out)
    mask = emission_mask(wave_out)
    norm = np.median(flux[..., mask], axis=-1)
    if np.any(norm <= 0):
        i, j = np.argwhere(norm <= 0)[0]
        raise ValueError(f"{raw.files[i][j]}: median flux {norm[i, j]:g} <= 0 on the output grid")
    meta = {
        "format": FORMAT,
        "family": raw.family,
        "files": [list(row) for row in raw.files],
        "age_gyr": raw.age_gyr.tolist(),
        "fwhm_in": _describe(fwhm_in),
        "fwhm_out": _describe(fwhm_out),
        "lsf_matching": "sigma = sqrt(max(fwhm_out^2 - fwhm_in^2, 0)) / 2.3548; "
        "specfm.galaxies.spectra.match_lsf (varsmooth at sigma^2 levels)",
        "resampling": "flux-conserving bin overlap (specfm.galaxies.spectra.resample)",
        "normalisation": "divided by the median over mask==True pixels; divisor in norm",
        "mask": "GalProTE Table 2, edges inclusive; True = kept",
        "units": {
            "wave": "Angstrom (air)",
            "flux": "dimensionless",
            "norm": "input flux units",
            "log_age": "log10(yr)",
            "mh": "dex",
        },
    }
    return TemplateGrid(
        wave=wave_out,
        flux=(flux / norm[..., None]).astype(np.float32),
        log_age=np.log10(raw.age_gyr * 1e9),
        mh=raw.mh.astype(float),
        mask=mask,
        norm=norm,
        meta=meta,
    )


_ARRAYS = ("wave", "flux", "log_age", "mh", "mask", "norm")


def write_template_table(grid: TemplateGrid, path: str | Path) -> None:
    """Write ``grid`` as HDF5 with deterministic bytes (no object timestamps), atomically.

    One dataset per array (contiguous, uncompressed: 0.6 MB for 150 templates) plus the metadata as
    a sorted-key JSON attribute, so the same grid always gives the same file.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            for name in _ARRAYS:
                h5.create_dataset(name, data=np.asarray(getattr(grid, name)), track_times=False)
            h5.attrs["meta"] = json.dumps(grid.meta, sort_keys=True)


def read_template_table(path: str | Path) -> TemplateGrid:
    with h5py.File(path, "r") as h5:
        arrays = {name: h5[name][()] for name in _ARRAYS}
        meta = json.loads(h5.attrs["meta"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a template table of format {FORMAT} (found {meta.get('format')!r})")
    return TemplateGrid(meta=meta, **arrays)


def plot_templates(grid: TemplateGrid, path: str | Path, *, n_show: int = 6, band=(5000.0, 5500.0)) -> None:
    """PNG: (top) templates across age at the [M/H] nearest solar, Table 2 regions shaded;
    (bottom) the grid image of the mean normalised flux in ``band`` (a colour: blue = young).

    Built on a bare Figure (Agg canvas, no pyplot state) with the Software tag removed, so the
    bytes depend only on the data and the matplotlib version.
    """
    import matplotlib as mpl  # local: reading and writing tables must not need matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 8), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[1.2, 1])
    iz = int(np.argmin(np.abs(grid.mh)))
    colors = mpl.colormaps["viridis"](np.linspace(0, 0.9, n_show))
    for c, ia in zip(colors, np.unique(np.linspace(0, grid.log_age.size - 1, n_show).round().astype(int))):
        top.plot(grid.wave, grid.flux[iz, ia], lw=0.7, color=c, label=f"log age = {grid.log_age[ia]:.2f}")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (~grid.mask).astype(np.int8), [0]])))
    half = 0.5 * (grid.wave[1] - grid.wave[0])
    for i, j in zip(edges[::2], edges[1::2]):
        top.axvspan(grid.wave[i] - half, grid.wave[j - 1] + half, color="0.8", lw=0)
    title = f"templates at [M/H] = {grid.mh[iz]:+.2f} (grey: masked)"
    top.set(xlabel="wavelength [A]", ylabel="flux / median", title=title)
    top.set_xlim(grid.wave[0], grid.wave[-1])
    top.legend(fontsize=7, ncols=2)

    sel = (grid.wave >= band[0]) & (grid.wave <= band[1])
    image = grid.flux[..., sel].mean(axis=-1)
    im = bottom.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    step = max(1, grid.log_age.size // 10)
    bottom.set_xticks(range(0, grid.log_age.size, step), [f"{a:.2f}" for a in grid.log_age[::step]])
    bottom.set_yticks(range(grid.mh.size), [f"{z:+.2f}" for z in grid.mh])
    bottom.set(xlabel="log10(age / yr)", ylabel="[M/H]", title=f"mean flux / median, {band[0]:.0f}-{band[1]:.0f} A")
    fig.colorbar(im, ax=bottom)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
