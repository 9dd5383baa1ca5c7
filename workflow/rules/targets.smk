# Targets that name nothing configured. Without this, `snakemake results/nosuch_maps.fits` gets
# Snakemake's generic MissingRuleException (the {galaxy} wildcard only matches configured names):
# here a rule matches exactly the names that are NOT configured, and its input function fails with
# a message naming the configured galaxies. It never runs a job: for a configured name the wildcard
# constraint keeps it out of the way of the real rules.

import re

UNCONFIGURED_GALAXY_PRODUCTS = (
    "results/{unconfigured}_maps.fits",  # also {galaxy}_ppxf_maps.fits: unconfigured = "<name>_ppxf"
    "results/{unconfigured}_truth.fits",
    "results/galaxies/{unconfigured}_metrics.json",
)


def unconfigured_constraint():
    """Any single path part except a configured galaxy (or its `_ppxf` maps). The look-ahead runs
    to the end of the path, so it names what follows the wildcard in each product pattern."""
    names = "|".join(sorted(map(re.escape, config["galaxies"].get("targets", {}))))
    tails = "|".join(re.escape(p.split("{unconfigured}")[1]) for p in UNCONFIGURED_GALAXY_PRODUCTS)
    return rf"(?!(?:{names})(?:_ppxf)?(?:{tails})$)[^/]+" if names else r"[^/]+"


def unconfigured_galaxy(wildcards):
    """Input function of `unconfigured_galaxy_target`: always an error naming what is configured."""
    name = wildcards.unconfigured.removesuffix("_ppxf")
    known = ", ".join(sorted(config["galaxies"].get("targets", {}))) or "none"
    raise ValueError(
        f"'{name}' is not a configured galaxy (galaxies.targets: {known}); ask for one of those "
        f"(e.g. results/<galaxy>_maps.fits) or add '{name}' under galaxies.targets in the config"
    )


rule unconfigured_galaxy_target:
    """Fails at once, naming the configured galaxies, for a galaxy product of an unknown name."""
    input:
        unconfigured_galaxy,
    output:
        UNCONFIGURED_GALAXY_PRODUCTS,
    wildcard_constraints:
        unconfigured=unconfigured_constraint(),
    log:
        "logs/targets/unconfigured_{unconfigured}.log",
    localrule: True
