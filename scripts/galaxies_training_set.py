"""Rule entry point: template grid -> GalProTE training set (HDF5)."""

from specfm.galaxies.steps import training_set
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    training_set(snakemake.input.templates, snakemake.output[0], size_factor=snakemake.params.size_factor,
                 seed=snakemake.params.seed, augment=snakemake.params.augment,
                 extended=snakemake.params.extended, sfh=snakemake.params.sfh, code_files=[__file__])
