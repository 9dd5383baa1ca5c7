"""Rule entry point: pPXF maps of one galaxy's bins (the baseline)."""

from specfm.galaxies.steps import ppxf_maps
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    ppxf_maps(snakemake.input.bins, snakemake.input.templates, snakemake.output[0],
              degree=snakemake.params.degree, n_jobs=snakemake.threads, code_files=[__file__])
