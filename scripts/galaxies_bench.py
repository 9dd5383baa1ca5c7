"""Rule entry point: the galaxies speed benchmark (also: python -m specfm.galaxies.bench)."""

from specfm.galaxies.steps import bench
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    bench(snakemake.input.model, snakemake.input.templates, snakemake.input.bins, snakemake.output[0],
          n_ppxf=snakemake.params.n_ppxf, degree=snakemake.params.degree, inference=snakemake.params.inference,
          variants=snakemake.params.variants, code_files=[__file__])
