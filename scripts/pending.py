"""Entry point of a rule whose implementation has not landed yet: fail with one clear line."""

import sys

sys.exit(
    f"specfm: rule '{snakemake.rule}' is planned but not implemented yet (tracked in issue "
    f"#{snakemake.params.issue}); it would have written {', '.join(snakemake.output)}"
)
