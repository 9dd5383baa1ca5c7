"""Rule entry point: results/bench/demo_time.json from the benchmark files of the run's jobs."""

import glob

from specfm.logs import rule_logging
from specfm.report.steps import write_demo_time

with rule_logging(snakemake.log[0]):
    write_demo_time(sorted(glob.glob(f"{snakemake.params.bench_dir}/*.tsv")), snakemake.params.rules,
                    snakemake.output[0], budget_s=snakemake.params.budget_s, code_files=[__file__])
