"""Rule entry point: the redshift catalogue of a sample (SpecPT, Redrock, hybrid, truth / catalogue z)."""

from specfm.logs import rule_logging
from specfm.redshift.steps import catalogue

i = snakemake.input
with rule_logging(snakemake.log[0]):
    catalogue(i.spectra, i.specpt, i.redrock, i.hybrid, snakemake.output[0], code_files=[__file__])
