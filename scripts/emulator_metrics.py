"""Rule entry point: held-out scores, figures and metrics.json of the emulator stage."""

from specfm.emulator.products import FIGURES
from specfm.emulator.steps import evaluate
from specfm.logs import rule_logging

out, p = snakemake.output, snakemake.params
with rule_logging(snakemake.log[0]):
    evaluate(snakemake.input.grid, list(snakemake.input.models), list(snakemake.input.inference),
             out.metrics, {name: out[name] for name in FIGURES}, out.summary,
             headline_model=p.headline_model, sizes=p.sizes, finetune_sizes=p.finetune_sizes,
             targets=p.targets, threads=snakemake.threads, code_files=[__file__])
