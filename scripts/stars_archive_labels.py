"""Rule entry point: APOGEE / GALAH / RAVE catalogues -> one label table (one row per source_id)."""

from specfm.logs import rule_logging
from specfm.stars.archive import steps

files = {name: str(path) for name, path in snakemake.input.items()}
with rule_logging(snakemake.log[0]):
    steps.build_labels(snakemake.output[0], priority=snakemake.params.priority, pins=snakemake.params.pins, **files)
