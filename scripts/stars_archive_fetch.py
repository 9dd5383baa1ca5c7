"""Rule entry point: one archive partition (HEALPix pixel) or one target cone -> raw Parquet file."""

from specfm.logs import rule_logging
from specfm.stars.archive import steps

p = snakemake.params
inputs = snakemake.input
labels = inputs.get("labels") or None
with rule_logging(snakemake.log[0]):
    if p.kind == "targets":
        steps.fetch_cone(p.ra, p.dec, p.radius, snakemake.output[0], level=p.level, cfg=p.archive,
                         labels=labels, cuts=p.cuts)
    else:
        steps.fetch_partition(int(snakemake.wildcards.hpx), p.level, snakemake.output[0], cfg=p.archive,
                              xp_index=inputs.get("xp_index") or None, xp_dir=p.xp_dir, labels=labels,
                              cuts=p.cuts)
