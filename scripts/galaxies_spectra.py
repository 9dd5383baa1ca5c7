"""Rule entry point: a `spectra` target's files -> GalProTE (+ pPXF) table, one row per spectrum."""

from specfm.galaxies.steps import predict_spectra
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    predict_spectra(list(snakemake.input.spectra), snakemake.params.settings["redshifts"], snakemake.input.model,
                    snakemake.input.templates, snakemake.output[0],
                    **{k: v for k, v in snakemake.params.settings.items() if k != "redshifts"}, code_files=[__file__])
