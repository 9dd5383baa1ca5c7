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
