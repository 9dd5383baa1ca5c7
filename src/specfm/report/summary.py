"""The terminal summary printed at the end of a run: a plain-text table a user reads at a glance."""

from __future__ import annotations

import math
from typing import Iterable

from .headline import Row

COLUMNS = ("system", "metric", "value", "reference", "target", "product")


def fmt(value: float | None) -> str:
    """Numbers as people read them: 4 significant digits, '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _cells(row: Row) -> tuple[str, ...]:
    reference = row.reference
    if row.reference_value is not None:
        reference = f"{reference} {fmt(row.reference_value)}".strip()
    return (row.system, row.metric, fmt(row.value), reference or "-", fmt(row.target), row.product)


def format_summary(rows: Iterable[Row], report_path: str, extra: Iterable[str] = ()) -> str:
    """Fixed-width table of the headline rows, then any extra lines, then where the report is."""
    table = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(["specfm summary", *lines, *extra, f"report: {report_path}"]) + "\n"
