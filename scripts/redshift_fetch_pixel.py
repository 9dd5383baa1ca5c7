"""Rule entry point: one DESI healpix coadd or redrock file (network; TOFU checksum in the lock)."""

from specfm.logs import rule_logging
from specfm.redshift.steps import fetch_pixel

w, p = snakemake.wildcards, snakemake.params
with rule_logging(snakemake.log[0]):
    fetch_pixel(snakemake.output[0], base_url=p.base_url, survey=w.survey, program=w.program, healpix=int(w.healpix),
                kind=w.kind, lock=p.lock, fetch=p.fetch)
