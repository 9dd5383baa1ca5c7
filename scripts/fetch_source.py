"""Rule entry point: fetch one declared source (registry mirror or HTTP mirrors), checksum-verified."""

from pathlib import Path

from specfm.fetch.sources import fetch_source
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    fetch_source(
        snakemake.params.name,
        snakemake.params.source,
        Path(snakemake.output.archive),
        lock_path=snakemake.params.lock,
        **snakemake.params.fetch,
    )
