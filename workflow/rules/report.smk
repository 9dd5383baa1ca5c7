# Report: one HTML page with every figure and a metrics table per system (results/report.html),
# the terminal summary printed at the end of a run (results/summary.txt), and the demo's time per
# stage from the jobs' benchmark files (results/bench/demo_time.json). `snakemake --report` still
# collects every output wrapped in report() with its caption from workflow/report/.


report: "../report/workflow.rst"


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
    matches = [k for k in kinds if stem == k or stem.endswith("_" + k)]
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


rule report_demo_time:
    """Wall span and each stage's share of the run, from the jobs' benchmark files."""
    input:
        report_stage_products,
    output:
        DEMO_TIME,
    log:
        "logs/report/demo_time.log",
    params:
        rules=report_rule_names(),
        budget_s=report_budget_s(),
        bench_dir=BENCH_DIR,
    localrule: True
    script:
        "../../scripts/report_demo_time.py"


rule report_html:
    """The report page (every figure embedded) and the summary the terminal prints."""
    input:
        unpack(report_inputs),
    output:
        html=REPORT_HTML,
        html_prov=REPORT_HTML + ".prov.json",
        summary=REPORT_SUMMARY,
        summary_prov=REPORT_SUMMARY + ".prov.json",
    log:
        "logs/report/html.log",
    params:
        systems=report_systems(),
    localrule: True
    script:
        "../../scripts/report_html.py"


def print_fresh_summary(since):
    """At the end of a run that rebuilt the report: its summary and the whole run's wall time."""
    if os.path.exists(REPORT_SUMMARY) and os.path.getmtime(REPORT_SUMMARY) >= since:
        print("\n" + open(REPORT_SUMMARY).read().rstrip())
        print(f"whole run: {(time.time() - since) / 60:.1f} min wall")
