"""Rule entry point: E-MILES SSP files -> processed template grid (HDF5) + provenance."""

from specfm.galaxies.steps import build_templates
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    build_templates(snakemake.input.manifest, snakemake.output[0], code_files=[__file__])
