"""Workflow steps of the report: the demo's time per stage, and the HTML page + terminal summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from specfm import provenance
from specfm.io import write_bytes_atomic, write_json_atomic

from .headline import headline_rows
from .html import Figure, Section, caption_text, write_report
from .summary import format_summary
from .timing import demo_time

log = logging.getLogger(__name__)
CODE = ["specfm.report", "specfm.io"]


def write_demo_time(bench_files, rules, out: str | Path, *, budget_s: float, code_files=()) -> None:
    """results/bench/demo_time.json from the benchmark files of the run's jobs."""
    timing = demo_time(bench_files, rules, budget_s)
    write_json_atomic(out, timing)
    if not timing["jobs"]:
        log.info("demo time: %s", timing["how"])
        return
    log.info("demo time: %.0f s wall span over %d benchmarked jobs (budget %.0f s); per stage: %s",
             timing["wall_span_s"], timing["jobs"], budget_s,
             ", ".join(f"{k} {v['job_seconds']:.0f} s" for k, v in sorted(timing["per_stage"].items())))


def _sections(systems: Mapping[str, Mapping]) -> tuple[list[Section], list]:
    sections, rows = [], []
    for name, spec in systems.items():
        system_rows = []
        for metrics in spec["metrics"]:
            system_rows += headline_rows(name, metrics, spec.get("product"))
        figures = [Figure(path, caption_text(caption) if caption else "")
                   for path, caption in spec["figures"]]
        sections.append(Section(name, spec["title"], system_rows, figures, list(spec["metrics"])))
        rows += system_rows
    return sections, rows


def build_report(systems: Mapping[str, Mapping], timing_file: str | Path | None, out_html: str | Path,
                 out_summary: str | Path, *, code_files=()) -> None:
    """The report page and the summary text. `systems`: name -> {title, product, metrics: [json],
    figures: [(png, caption .rst or None)]}, in the order the page shows them."""
    sections, rows = _sections(systems)
    timing = json.loads(Path(timing_file).read_text()) if timing_file else None
    write_report(sections, out_html, demo_time=timing,
                 preamble="<p>Built by <code>snakemake</code> from the products listed in each section; "
                          "every number here is read from the metrics files shown under it.</p>")
    extra = []
    if timing and timing["jobs"]:
        extra.append(f"time: {timing['wall_span_s'] / 60:.1f} min wall for the benchmarked jobs "
                     f"(budget {timing['budget_s'] / 60:.0f} min)")
    write_bytes_atomic(out_summary, format_summary(rows, str(out_html), extra).encode())
    inputs = {f"metrics:{p}": p for spec in systems.values() for p in spec["metrics"]}
    for out in (out_html, out_summary):
        provenance.write(out, inputs=inputs, code=CODE, code_files=code_files, step="report")
    log.info("wrote %s (%d sections, %d figures) and %s", out_html, len(sections),
             sum(len(s.figures) for s in sections), out_summary)
