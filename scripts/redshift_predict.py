"""Rule entry point: the fold ensemble's z, spread and the autoencoder latents for every spectrum."""

from specfm.logs import rule_logging
from specfm.redshift.steps import predict

with rule_logging(snakemake.log[0]):
    predict(snakemake.input.spectra, snakemake.input.autoencoder, list(snakemake.input.folds),
            snakemake.output.table[0], snakemake.output.latents[0], gpu=snakemake.resources.gpu,
            threads=snakemake.threads, code_files=[__file__])
