"""Rule entry point: compare a galaxy's model maps with pPXF (and the truth of a mock, or the
published PHANGS maps of a real galaxy)."""

from specfm.galaxies.steps import compare
from specfm.logs import rule_logging

out = snakemake.output
with rule_logging(snakemake.log[0]):
    compare(snakemake.input.model, snakemake.input.ppxf, snakemake.input.get("truth"), snakemake.input.bench,
            out.metrics, {"panels": out.panels, "running": out.running, "residuals": out.residuals},
            published_path=snakemake.input.get("published"), maps_units=snakemake.params.maps_units,
            published_pin=snakemake.params.published_pin, code_files=[__file__])
