"""Rule entry point: figure of a processed template grid + provenance."""

from specfm.galaxies.steps import templates_figure
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    templates_figure(snakemake.input.templates, snakemake.output[0], code_files=[__file__])
