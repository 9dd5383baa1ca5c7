"""Rule entry point: SpecPT / Redrock / hybrid speed in one process on the same spectra."""

from specfm.logs import rule_logging
from specfm.redshift.steps import bench

p, rr = snakemake.params, snakemake.params.redrock
with rule_logging(snakemake.log[0]):
    bench(snakemake.input.spectra, snakemake.input.templates, list(snakemake.input.folds), snakemake.output[0],
          n=p.n, zmin=rr["zmin"], zmax=rr["zmax"], dlogz=rr["dlogz"], hybrid=p.hybrid, threads=snakemake.threads,
          code_files=[__file__])
