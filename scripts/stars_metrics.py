"""Rule entry point: held-out metrics (with and without XP) and the figures."""

from specfm.logs import rule_logging
from specfm.stars.steps import evaluate

out = snakemake.output
names = ("residuals", "kiel", "alpha_fe", "age_metallicity", "zscores", "reconstruction")
with rule_logging(snakemake.log[0]):
    evaluate(snakemake.input.predictions, list(snakemake.input.features), list(snakemake.input.members),
             out.metrics, {name: out[name] for name in names}, code_files=[__file__])
