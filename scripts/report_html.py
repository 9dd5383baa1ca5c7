"""Rule entry point: results/report.html and results/summary.txt."""

from specfm.logs import rule_logging
from specfm.report.steps import build_report

with rule_logging(snakemake.log[0]):
    build_report(snakemake.params.systems, snakemake.input.timing, snakemake.output.html,
                 snakemake.output.summary, code_files=[__file__])
