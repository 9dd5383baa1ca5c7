# specfm: public survey data -> stellar and galactic property catalogues and maps.
#
#   snakemake --cores all              # `demo`: the embedded default, offline, minutes on a laptop
#   snakemake --profile slurm all      # everything configured, on a SLURM cluster with GPUs
#   snakemake results/ngc4254_maps.fits   # one product and what it depends on
#
# The config is validated against workflow/schemas/config.schema.yaml before any job starts.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/galaxies.smk"
include: "workflow/rules/stars.smk"
include: "workflow/rules/redshift.smk"
include: "workflow/rules/emulator.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/targets.smk"


RUN_START = time.time()


onsuccess:
    print_fresh_summary(RUN_START)


rule demo:
    """Every system end to end on the embedded default, offline, with the report: minutes on a laptop."""
    default_target: True
    input:
        demo_targets(),


rule all:
    """Everything configured, at whatever scale the config sets (the slurm profile adds fullscale.yaml)."""
    input:
        demo_targets(),
        galaxies_targets(),
        stars_targets(),
        redshift_targets(),
        emulator_targets(),
