# Constants and helper functions of the rules in workflow/rules/targets.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

import re

UNCONFIGURED_GALAXY_PRODUCTS = (
    "results/{unconfigured}_maps.fits",  # also {galaxy}_ppxf_maps.fits: unconfigured = "<name>_ppxf"
    "results/{unconfigured}_truth.fits",
    "results/galaxies/{unconfigured}_metrics.json",
)


def unconfigured_constraint():
    """Any single path part except a configured galaxy (or its `_ppxf` maps, or a spectra target's
    `_spectra_metrics.json`). The look-ahead runs to the end of the path, so it names what follows
    the wildcard in each product pattern."""
    names = "|".join(sorted(map(re.escape, config["galaxies"].get("targets", {}))))
    tails = "|".join(re.escape(p.split("{unconfigured}")[1]) for p in UNCONFIGURED_GALAXY_PRODUCTS)
    return rf"(?!(?:{names})(?:_ppxf|_spectra)?(?:{tails})$)[^/]+" if names else r"[^/]+"


def unconfigured_galaxy(wildcards):
    """Input function of `unconfigured_galaxy_target`: always an error naming what is configured."""
    name = wildcards.unconfigured.removesuffix("_ppxf")
    known = ", ".join(sorted(config["galaxies"].get("targets", {}))) or "none"
    raise ValueError(
        f"'{name}' is not a configured galaxy (galaxies.targets: {known}); ask for one of those "
        f"(e.g. results/<galaxy>_maps.fits) or add '{name}' under galaxies.targets in the config"
    )
