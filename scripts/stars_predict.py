"""Rule entry point: ensemble members -> the sample's catalogue with 16/50/84 quantiles."""

from specfm.logs import rule_logging
from specfm.stars.steps import predict

with rule_logging(snakemake.log[0]):
    predict(list(snakemake.input.features), list(snakemake.input.members), snakemake.output[0],
            calibration=snakemake.input.get("calibration"), code_files=[__file__])
