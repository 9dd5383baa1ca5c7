"""Rule entry point: mock IFU cube + truth maps for a `kind: mock` galaxy."""

from specfm.galaxies.steps import mock_cube
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    mock_cube(snakemake.input.manifest, snakemake.output.cube, snakemake.output.truth, **snakemake.params.settings,
              code_files=[__file__])
