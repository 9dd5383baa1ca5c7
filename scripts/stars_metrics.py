"""Rule entry point: held-out metrics (with and without XP, beside the trees) and the figures."""

from specfm.logs import rule_logging
from specfm.stars.products import FIGURES
from specfm.stars.steps import evaluate

out = snakemake.output
with rule_logging(snakemake.log[0]):
    evaluate(snakemake.input.predictions, snakemake.input.baseline, list(snakemake.input.features),
             list(snakemake.input.members), out.metrics, {name: out[name] for name in FIGURES},
             calibration=snakemake.input.get("calibration"), code_files=[__file__])
