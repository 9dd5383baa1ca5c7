"""One self-contained HTML page: a section per system with its headline table, every figure
(embedded, so the single file can be mailed or archived and still show its pictures), the full
metrics JSON behind a fold, and the demo's time per stage.

Hand-written instead of `snakemake --report`: that report needs the Snakemake run's metadata and
cannot be a product of the run itself; `snakemake --report` still works beside it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from specfm.io import write_bytes_atomic

from .headline import Row
from .summary import fmt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}pre{background:#f7f7f7;padding:.5em;overflow:auto;max-height:30em}
nav a{margin-right:1em}"""


@dataclass(frozen=True)
class Figure:
    path: str
    caption: str = ""


@dataclass
class Section:
    name: str                      # anchor id, e.g. "galaxies"
    title: str
    rows: list[Row] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    metrics_files: list[str] = field(default_factory=list)


def caption_text(rst_file: str | Path) -> str:
    """A caption .rst as one line of plain text (the captions are one short paragraph each)."""
    text = Path(rst_file).read_text()
    text = re.sub(r"\{\{\s*snakemake\.wildcards\.(\w+)\s*\}\}", r"this \1", text)  # Snakemake's Jinja fields
    text = re.sub(r"``?([^`]+)``?", r"\1", text)
    return " ".join(text.split())


def _img(figure: Figure) -> str:
    data = Path(figure.path).read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{figure.path}: not a PNG file (the report embeds PNG figures only)")
    src = "data:image/png;base64," + base64.b64encode(data).decode()
    name = html.escape(Path(figure.path).name)
    return (f'<figure><img src="{src}" alt="{name}" data-path="{html.escape(figure.path)}">'
            f"<figcaption><b>{name}</b>: {html.escape(figure.caption)}</figcaption></figure>")


def _rows_table(rows: list[Row]) -> str:
    head = "<tr><th>metric</th><th>value</th><th>reference</th><th>target</th><th>product</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r.metric)}</td><td>{fmt(r.value)}</td>"
        f"<td>{html.escape(r.reference)} {fmt(r.reference_value) if r.reference_value is not None else ''}</td>"
        f"<td>{fmt(r.target)}</td><td><code>{html.escape(r.product)}</code></td></tr>" for r in rows)
    return f'<table class="headline">{head}{body}</table>'


def _metrics_fold(path: str) -> str:
    text = json.dumps(json.loads(Path(path).read_text()), indent=1, sort_keys=True)
    return f"<details><summary>all metrics: <code>{html.escape(path)}</code></summary><pre>{html.escape(text)}</pre></details>"


def _section(section: Section) -> str:
    parts = [f'<section id="{html.escape(section.name)}"><h2>{html.escape(section.title)}</h2>']
    if section.rows:
        parts.append(_rows_table(section.rows))
    parts += [_metrics_fold(p) for p in section.metrics_files]
    parts += [_img(f) for f in section.figures]
    parts.append("</section>")
    return "\n".join(parts)


def timing_table(demo_time: dict) -> str:
    if not demo_time["jobs"]:
        return f"<p>{html.escape(demo_time['how'])}</p>"
    rows = "".join(
        f"<tr><td>{html.escape(stage)}</td><td>{e['jobs']}</td><td>{e['job_seconds']:.0f}</td>"
        f"<td>{e['cpu_seconds']:.0f}</td><td>{100 * e['share_of_job_seconds']:.0f} %</td></tr>"
        for stage, e in sorted(demo_time["per_stage"].items()))
    return (f"<p>wall span of the benchmarked jobs: {demo_time['wall_span_s']:.0f} s "
            f"(budget {demo_time['budget_s']:.0f} s)</p><table><tr><th>stage</th><th>jobs</th>"
            f"<th>job seconds</th><th>CPU seconds</th><th>share</th></tr>{rows}</table>")


def write_report(sections: list[Section], out: str | Path, *, title: str = "specfm report",
                 preamble: str = "", demo_time: dict | None = None) -> None:
    """Write the page atomically; every figure must exist and be a PNG (else a named error)."""
    nav = " ".join(f'<a href="#{html.escape(s.name)}">{html.escape(s.title)}</a>' for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>", preamble]
    body += [_section(s) for s in sections]
    if demo_time is not None:
        body.append(f'<section id="timing"><h2>time per stage</h2>{timing_table(demo_time)}</section>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    write_bytes_atomic(out, page.encode())
