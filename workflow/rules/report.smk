# Report: one HTML page with every figure and a metrics table per system (results/report.html),
# the terminal summary printed at the end of a run (results/summary.txt), and the demo's time per
# stage from the jobs' benchmark files (results/bench/demo_time.json). `snakemake --report` still
# collects every output wrapped in report() with its caption from workflow/report/.


include: "helpers/report.smk"


report: "../report/workflow.rst"


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
        html_prov=f"{REPORT_HTML}.prov.json",
        summary=REPORT_SUMMARY,
        summary_prov=f"{REPORT_SUMMARY}.prov.json",
    log:
        "logs/report/html.log",
    params:
        systems=report_systems(),
    localrule: True
    script:
        "../../scripts/report_html.py"
