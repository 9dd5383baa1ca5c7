"""Rule entry point: a `spectra` target's files -> GalProTE (+ pPXF) table, one row per spectrum."""

from specfm.galaxies.steps import predict_spectra, source_members
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    settings = dict(snakemake.params.settings)
    members = settings.pop("members")
    spectra = source_members(snakemake.input.spectra[0], members) if members else list(snakemake.input.spectra)
    predict_spectra(spectra, settings.pop("redshifts"), snakemake.input.model, snakemake.input.templates,
                    snakemake.output.table[0], **settings, metrics_out=snakemake.output.metrics[0], code_files=[__file__])
