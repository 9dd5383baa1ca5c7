"""Rule entry point: gradient-boosted trees per label (with and without XP) -> their catalogue."""

from specfm.logs import rule_logging
from specfm.stars.steps import baseline

with rule_logging(snakemake.log[0]):
    baseline(list(snakemake.input.features), snakemake.output[0], settings=snakemake.params.settings,
             seed=snakemake.params.seed, threads=snakemake.threads, code_files=[__file__])
