"""Rule entry point: Redrock on the test split, full scan (redshift_redrock) or SpecPT-narrowed (redshift_hybrid)."""

from specfm.logs import rule_logging
from specfm.redshift.steps import redrock

rr = snakemake.params.redrock
with rule_logging(snakemake.log[0]):
    redrock(snakemake.input.spectra, snakemake.input.templates, snakemake.output.table[0], zmin=rr["zmin"],
            zmax=rr["zmax"], dlogz=rr["dlogz"], n_max=rr["n_max"], specpt=snakemake.input.get("specpt"),
            hybrid=snakemake.params.get("hybrid"), code_files=[__file__])
