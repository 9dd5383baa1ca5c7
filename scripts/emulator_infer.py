"""Rule entry point: fit the labels of held-out stars through one emulator."""

from specfm.emulator.steps import infer
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    infer(snakemake.input.grid, snakemake.input.model, snakemake.output.table[0],
          settings=snakemake.params.settings, seed=snakemake.params.seed,
          gpu=snakemake.resources.gpu, threads=snakemake.threads, code_files=[__file__])
