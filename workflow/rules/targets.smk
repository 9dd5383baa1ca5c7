# Targets that name nothing configured. Without this, `snakemake results/nosuch_maps.fits` gets
# Snakemake's generic MissingRuleException (the {galaxy} wildcard only matches configured names):
# here a rule matches exactly the names that are NOT configured, and its input function fails with
# a message naming the configured galaxies. It never runs a job: for a configured name the wildcard
# constraint keeps it out of the way of the real rules.

include: "helpers/targets.smk"


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
