"""Rule entry point: raw spectra -> the emulator's HDF5 grid, timed into its own benchmark file (the
rule is cache: True, so Snakemake refuses it a benchmark:)."""

from specfm.emulator.steps import build_grid
from specfm.logs import rule_logging
from specfm.report.timing import own_benchmark

with rule_logging(snakemake.log[0]), own_benchmark(snakemake.params.bench):
    build_grid(snakemake.params.kind, list(snakemake.input.raw), snakemake.output.grid[0],
               **snakemake.params.settings, code_files=[__file__])
