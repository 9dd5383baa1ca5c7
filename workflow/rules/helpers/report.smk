# Constants and helper functions of the rules in workflow/rules/report.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

REPORT_HTML = "results/report.html"
REPORT_SUMMARY = "results/summary.txt"
DEMO_TIME = "results/bench/demo_time.json"
SYSTEM_TITLES = {
    "galaxies": "galaxies: GalProTE age / [M/H] / A_V maps, with pPXF",
    "stars": "stars: Masked Stellar Autoencoder catalogue",
    "redshift": "redshift: SpecPT, with Redrock",
    "emulator": "emulator: TransformerPayne and baselines",
}


def figure_caption(system, figure):
    """The caption file of a figure: workflow/report/<system>_<kind>.rst whose kind ends its name."""
    stem = os.path.splitext(os.path.basename(figure))[0]
    kinds = [os.path.basename(p)[len(system) + 1:-4] for p in sorted(glob.glob(f"workflow/report/{system}_*.rst"))]
    matches = [k for k in kinds if stem == k or stem.endswith(f"_{k}")]
    return f"workflow/report/{system}_{max(matches, key=len)}.rst" if matches else None


def with_captions(system, figures):
    """Figures given as paths get their caption by name; (path, caption) pairs are kept."""
    return [f if isinstance(f, tuple) else (f, figure_caption(system, f)) for f in figures]


def report_systems():
    """name -> {title, metrics, figures} of every system this config builds, in page order."""
    stages = {
        "galaxies": (galaxies_metrics_files, galaxies_report_figures),
        "stars": (stars_metrics_files, stars_report_figures),
        "redshift": (redshift_metrics_files, redshift_report_figures),
        "emulator": (emulator_metrics_files, emulator_report_figures),
    }
    systems = {}
    for name, (metrics, figures) in stages.items():
        if name in demo_systems() and metrics():
            systems[name] = {"title": SYSTEM_TITLES[name], "metrics": metrics(),
                             "figures": with_captions(name, figures())}
    return systems


def report_inputs(wildcards):
    systems = report_systems()
    return {
        "metrics": [m for s in systems.values() for m in s["metrics"]],
        "figures": [f for s in systems.values() for f, _ in s["figures"]],
        "timing": DEMO_TIME,
    }


def report_stage_products(wildcards):
    """Everything the demo builds before it is timed and reported."""
    return stage_targets()


def report_rule_names():
    return sorted(r.name for r in workflow.rules)


def report_budget_s():
    return 60 * config["demo"]["budget_minutes"]


def print_fresh_summary(since):
    """At the end of a run that rebuilt the report: its summary and the whole run's wall time."""
    if os.path.exists(REPORT_SUMMARY) and os.path.getmtime(REPORT_SUMMARY) >= since:
        print(f"\n{open(REPORT_SUMMARY).read().rstrip()}")
        print(f"whole run: {(time.time() - since) / 60:.1f} min wall")
