"""The run's report: one HTML page with every figure and a metrics table per system, the terminal
summary, and the demo's time per stage. Reads products only; knows no stage's internals beyond the
`headline` list each metrics file carries."""

from .headline import Row, headline_rows
from .html import Figure, Section, write_report
from .summary import format_summary
from .timing import demo_time

__all__ = ["Figure", "Row", "Section", "demo_time", "format_summary", "headline_rows", "write_report"]
