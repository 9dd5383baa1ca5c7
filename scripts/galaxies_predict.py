"""Rule entry point: GalProTE maps of one galaxy's bins."""

from specfm.galaxies.steps import model_maps
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    model_maps(snakemake.input.bins, snakemake.input.model, snakemake.input.templates, snakemake.output[0],
               clip_frac=snakemake.params.clip_frac, inference=snakemake.params.inference,
               estimate=snakemake.params.estimate, code_files=[__file__])
