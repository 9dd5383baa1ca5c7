"""Rule entry point (checkpoint): zcatalog -> BGS / ELG selection and the healpix pixels holding it."""

from specfm.logs import rule_logging
from specfm.redshift.steps import select_targets

with rule_logging(snakemake.log[0]):
    select_targets(snakemake.input.zcatalog, snakemake.output.targets[0], snakemake.output.pixels,
                   cuts=snakemake.params.cuts, max_targets=snakemake.params.max_targets,
                   source_pin=snakemake.params.source_pin, code_files=[__file__])
