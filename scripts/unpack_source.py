"""Rule entry point: unpack the declared members of a fetched archive and list them with sha256."""

from pathlib import Path

from specfm.fetch.sources import unpack_source
from specfm.logs import rule_logging

with rule_logging(snakemake.log[0]):
    unpack_source(Path(snakemake.input[0]), snakemake.params.members, Path(snakemake.output[0]))
