"""Rule entry point: partition reservoirs -> the sample's median/IQR scaling statistics."""

from specfm.logs import rule_logging
from specfm.stars.steps import scaling_statistics

with rule_logging(snakemake.log[0]):
    scaling_statistics(list(snakemake.input.reservoirs), snakemake.output[0], reservoir=snakemake.params.reservoir,
                       seed=snakemake.params.seed, code_files=[__file__])
