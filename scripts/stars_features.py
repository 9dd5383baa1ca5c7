"""Rule entry point: a sample's raw catalogue -> feature table (Parquet) + scaling statistics."""

from specfm.logs import rule_logging
from specfm.stars.steps import build_features

p = snakemake.params
with rule_logging(snakemake.log[0]):
    build_features(p.kind, list(snakemake.input), snakemake.output.table[0], snakemake.output.scaling[0],
                   healpix_level=p.healpix_level, chunk_rows=p.features["chunk_rows"],
                   reservoir=p.features["reservoir"], seed=p.seed, code_files=[__file__])
