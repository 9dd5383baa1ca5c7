"""Rule entry point: spectra per second of each emulator (results/bench/emulator_speed.json)."""

from specfm.emulator.steps import bench
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    bench(list(snakemake.input.models), snakemake.output.speed, **snakemake.params.settings,
          gpu=snakemake.resources.gpu, threads=snakemake.threads, code_files=[__file__])
