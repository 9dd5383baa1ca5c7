"""Rule entry point: one partition's raw rows -> feature table (Parquet) + training reservoir."""

from specfm.logs import rule_logging
from specfm.stars.steps import build_partition

p = snakemake.params
with rule_logging(snakemake.log[0]):
    build_partition(p.kind, list(snakemake.input), snakemake.output.table[0], snakemake.output.reservoir,
                    healpix_level=p.healpix_level, chunk_rows=p.features["chunk_rows"],
                    reservoir=p.features["reservoir"], max_rows=p.max_rows, seed=p.seed,
                    code_files=[__file__])
