"""Rule entry point: one partition's raw rows -> feature table (Parquet) + training reservoir."""

import os

from specfm.logs import rule_logging
from specfm.stars.steps import build_partition

p = snakemake.params
sfd = snakemake.input.get("sfd")  # the SFD map files, for archive samples
sfd_dir = os.path.dirname(sfd[0]) if sfd else None
with rule_logging(snakemake.log[0]):
    build_partition(p.kind, list(snakemake.input.raw), snakemake.output.table[0], snakemake.output.reservoir,
                    healpix_level=p.healpix_level, chunk_rows=p.features["chunk_rows"],
                    reservoir=p.features["reservoir"], max_rows=p.max_rows, sfd_dir=sfd_dir, seed=p.seed,
                    code_files=[__file__])
