"""Rule entry point: the synthetic-evaluation figures (paper Figs 8-12) of one test split."""

from specfm.galaxies.figures import KINDS
from specfm.galaxies.steps import synthetic_figures
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    synthetic_figures(snakemake.input.predictions, snakemake.wildcards.split,
                      {kind: snakemake.output[kind] for kind in KINDS}, code_files=[__file__])
