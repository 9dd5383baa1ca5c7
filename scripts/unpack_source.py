"""Rule entry point: check a fetched archive against its pin, unpack the declared members, list them with sha256."""

from pathlib import Path

from specfm.fetch.sources import unpack_source
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    unpack_source(Path(snakemake.input.archive), snakemake.params.members, Path(snakemake.output.manifest),
                  **snakemake.params.pin)
