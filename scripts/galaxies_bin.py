"""Rule entry point: IFU cube -> Voronoi-binned rest-frame spectra on the GalProTE grid."""

from specfm.galaxies.steps import bin_cube
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    bin_cube(snakemake.input.cube, snakemake.output[0], **snakemake.params.settings, code_files=[__file__])
