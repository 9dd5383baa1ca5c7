"""Workflow steps of the galaxies stage: each reads files, calls the library, writes a product
and its provenance record. The rule scripts call these and nothing else."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from specfm import provenance
from specfm.fetch.sources import manifest_files

from .template_table import plot_templates, prepare_templates, read_template_table, write_template_table

log = logging.getLogger(__name__)

# The modules whose source enters the code digest of the template products (not the whole
# sub-package: a change to the model must not invalidate the template grid).
CODE = ["specfm.galaxies.templates", "specfm.galaxies.spectra", "specfm.galaxies.template_table",
        "specfm.galaxies.steps", "specfm.io", "specfm.fetch.sources"]


def build_templates(manifest: str | Path, out: str | Path, *, code_files=()) -> None:
    """SSP files listed (and checksum-verified) by `manifest` -> processed template grid (HDF5)."""
    paths = manifest_files(manifest, "*.fits")
    if not paths:
        raise ValueError(f"{manifest}: lists no .fits SSP files")
    log.info("processing %d SSP files from %s", len(paths), manifest)
    start = time.perf_counter()
    grid = prepare_templates(paths)
    write_template_table(grid, out)
    log.info("wrote %s: %d [M/H] x %d ages x %d px (%d kept by the emission mask) in %.1f s", out,
             *grid.flux.shape, int(grid.mask.sum()), time.perf_counter() - start)
    provenance.write(out, inputs={"manifest": manifest}, code=CODE, code_files=code_files,
                     params={"grid": "paper", "lsf": grid.meta["fwhm_out"]}, step="galaxies_templates")


def templates_figure(table: str | Path, out: str | Path, *, code_files=()) -> None:
    grid = read_template_table(table)
    plot_templates(grid, out)
    log.info("wrote %s", out)
    provenance.write(out, inputs={"templates": table}, code=CODE, code_files=code_files,
                     step="galaxies_templates_figure")


def mock_cube(manifest: str | Path, out_cube: str | Path, out_truth: str | Path, *, shape, snr_center: float,
              seed: int, redshift: float, code_files=()) -> None:
    """A mock MUSE cube with known truth maps, from the raw SSP files of `manifest`."""
    from .mock_cube import make_mock_cube

    paths = manifest_files(manifest, "*.fits")
    start = time.perf_counter()
    make_mock_cube(paths, out_cube, out_truth, shape=tuple(shape), seed=seed, redshift=redshift,
                   snr_center=snr_center)
    log.info("wrote mock cube %s and truth %s (%s spaxels, z=%g, seed %d) in %.1f s", out_cube, out_truth,
             "x".join(map(str, shape)), redshift, seed, time.perf_counter() - start)
    params = {"shape": list(shape), "snr_center": snr_center, "redshift": redshift}
    code = [*CODE, "specfm.galaxies.mock_cube", "specfm.galaxies.cube"]
    for out in (out_cube, out_truth):
        provenance.write(out, inputs={"manifest": manifest}, params=params, seed=seed, code=code,
                         code_files=code_files, step="galaxies_mock_cube")


def bin_cube(cube_path: str | Path, out: str | Path, *, redshift: float, target_snr: float, min_snr: float,
             code_files=()) -> None:
    """IFU cube -> de-redshifted, masked, Voronoi-binned spectra on the paper grid (HDF5)."""
    from .cube import preprocess, read_cube, write_bins

    start = time.perf_counter()
    cube = read_cube(cube_path, redshift=redshift)
    bins = preprocess(cube, redshift, target_snr=target_snr, min_snr=min_snr)
    write_bins(bins, out)
    log.info("binned %s: %d bins from %d spaxels (target S/N %g) in %.1f s", cube_path, bins.n_bins,
             int((bins.bin_id >= 0).sum()), target_snr, time.perf_counter() - start)
    provenance.write(out, inputs={"cube": cube_path}, code=[*CODE, "specfm.galaxies.cube"], code_files=code_files,
                     params={"redshift": redshift, "target_snr": target_snr, "min_snr": min_snr},
                     step="galaxies_bin")
