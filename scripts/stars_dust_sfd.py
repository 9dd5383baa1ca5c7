"""Rule entry point: the SFD E(B-V) maps through dustmaps' own download (sha256 recorded TOFU)."""

from pathlib import Path

from specfm.logs import rule_logging
from specfm.stars.dust import fetch_sfd

with rule_logging(snakemake.log[0]):
    # the maps' directory is the outputs' own (not a param: it must follow the outputs wherever they go)
    fetch_sfd(Path(snakemake.output[0]).parent, snakemake.params.lock)
