"""Rule entry point: gather the attention-ablation variants into one JSON."""

from specfm.galaxies.steps import ablation_summary
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    ablation_summary(dict(zip(snakemake.params.variants, snakemake.input.metrics)), snakemake.output[0],
                     chosen=snakemake.params.chosen, budget=snakemake.params.budget, code_files=[__file__])
