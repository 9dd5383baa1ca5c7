# Shared helpers: config validation, paths, resources. Named functions, not lambdas, so each
# can be read and tested on its own.

import glob
import os
import sys
import time

from specfm import config as specfm_config
from specfm import seeds as specfm_seeds

# Validate (and fill defaults) before any job starts; a ConfigError names the offending key.
try:
    specfm_config.validate(config)
except specfm_config.ConfigError as exc:
    sys.exit(f"specfm: invalid configuration: {exc}")


def one_of(names):
    """A wildcard constraint matching exactly the configured names (no accidental prefixes)."""
    return "|".join(sorted(names)) or "(?!)"


wildcard_constraints:
    tset=one_of(config["galaxies"].get("template_sets", {})),
    galaxy=one_of(config["galaxies"].get("targets", {})),
    sample=one_of([*config["stars"].get("samples", {}), *config["redshift"].get("samples", {})]),
    model=one_of(config["emulator"]["models"]),
    member=r"\d+",
    fold=r"\d+",


SOURCES = config["sources"]


def with_prov(path):
    """A product and its provenance record, as one multiext output (so Snakemake's cache keeps both)."""
    base, ext = os.path.splitext(path)
    return multiext(base, ext, f"{ext}.prov.json")


def derived_seed(*names):
    """A per-step seed derived from the master seed and the step's names (stable across runs)."""
    return specfm_seeds.derive(config["seed"], *names)


def archive_path(source):
    """Where the downloaded file of a source lives."""
    return f"resources/archives/{source}/{SOURCES[source]['filename']}"


def manifest_path(source):
    """The list of unpacked members (with sha256) of a registry/archive source."""
    return f"resources/{source}/manifest.json"


def train_resources(system, key):
    """Resources of a training/inference job from config: gpu (0 = CPU), mem_mb, runtime (minutes)."""
    return config[system]["train"][key]


# Scheduling: the galaxies chain (training, then pPXF, the ablation and the benchmark one after the
# other) and the stars ensemble are the demo's longest paths, so their jobs go first on a small
# machine and the many short redshift / emulator jobs fill the gaps (results/bench/demo_time.json).
LONG_CHAIN_PRIORITY = {"galaxies": 20, "stars": 10}

BENCH_DIR = "results/bench/rules"


def rule_bench(name):
    """The benchmark file of a job (`name` may hold wildcards); results/bench/demo_time.json sums them."""
    return f"{BENCH_DIR}/{name}.tsv"


def stage_targets():
    """Every system's products for this config: the demo's template sets and each stage's chain."""
    sets = config["demo"]["galaxies_templates"]
    chains = {"galaxies": galaxies_demo_targets, "stars": stars_demo_targets,
              "redshift": redshift_demo_targets, "emulator": emulator_demo_targets}
    return [
        *[f"results/interim/galaxies/templates_{t}.h5" for t in sets],
        *[f"results/galaxies/figures/templates_{t}.png" for t in sets],
        *[path for system in demo_systems() for path in chains[system]()],
    ]


def demo_systems():
    """The systems `demo` builds and the report shows (config demo.systems)."""
    return config["demo"]["systems"]


def demo_targets():
    """What `demo` builds: every stage end to end, its time per stage, the report and summary."""
    return [*stage_targets(), DEMO_TIME, REPORT_HTML, REPORT_SUMMARY]
