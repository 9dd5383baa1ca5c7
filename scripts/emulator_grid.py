"""Rule entry point: raw spectra -> the emulator's HDF5 grid."""

from specfm.emulator.steps import build_grid
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    build_grid(snakemake.params.kind, list(snakemake.input.raw), snakemake.output.grid[0],
               **snakemake.params.settings, code_files=[__file__])
