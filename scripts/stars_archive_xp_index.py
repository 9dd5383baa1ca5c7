"""Rule entry point: the ESA XP bulk directory's _MD5SUM.txt (its file list and checksums)."""

from specfm.fetch import download
from specfm.io import atomic_path
from specfm.logs import rule_logging
from specfm.stars.archive.xp_bulk import read_md5sum

with rule_logging(snakemake.log[0]) as log:
    with atomic_path(snakemake.output[0]) as tmp:
        download(snakemake.params.url.rstrip("/") + "/_MD5SUM.txt", tmp, progress=False)
        log.info("XP bulk index: %d files", len(read_md5sum(tmp)))
