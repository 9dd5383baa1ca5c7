"""Rule entry point: the SFD E(B-V) maps through dustmaps' own download (sha256 recorded TOFU)."""

from specfm.logs import rule_logging
from specfm.stars.dust import fetch_sfd

with rule_logging(snakemake.log[0]):
    fetch_sfd(snakemake.params.map_dir, snakemake.params.lock)
