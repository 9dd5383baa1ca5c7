"""Rule entry point: Redrock PCA templates from the SSPs + emission lines."""

from specfm.logs import rule_logging
from specfm.redshift.steps import build_rr_templates

p = snakemake.params
with rule_logging(snakemake.log[0]):
    build_rr_templates(snakemake.input.manifest, snakemake.output[0], n_basis=p.n_basis, n_galaxies=p.n_galaxies,
                       blue=p.blue, seed=p.seed, code_files=[__file__])
