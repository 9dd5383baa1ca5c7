"""Rule entry point: the ensemble's uncertainty calibration, fitted on the validation split."""

from specfm.logs import rule_logging
from specfm.stars.steps import calibrate

with rule_logging(snakemake.log[0]):
    calibrate(list(snakemake.input.features), list(snakemake.input.members), snakemake.output[0],
              settings=snakemake.params.settings, code_files=[__file__])
