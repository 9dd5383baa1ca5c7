"""Rule entry point: fetch one file of a grid source (kind http_grid), checksum-verified (TOFU)."""

from pathlib import Path

from specfm.fetch.grid_source import fetch_grid_file
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    fetch_grid_file(snakemake.wildcards.gsource, snakemake.params.source, snakemake.wildcards.gfile,
                    Path(snakemake.output.path), lock_path=snakemake.params.lock, **snakemake.params.fetch)
