"""Rule entry point: a redshift sample -> its spectra file (one grid, normalised, split by TARGETID hash)."""

from specfm.logs import rule_logging
from specfm.redshift.steps import make_spectra

p = snakemake.params
with rule_logging(snakemake.log[0]):
    make_spectra(p.kind, snakemake.output[0], grid=p.grid, sample=snakemake.wildcards.sample, seed=p.seed,
                 inputs=list(snakemake.input.files), mock=p.mock, selection=snakemake.input.get("selection"),
                 code_files=[__file__])
