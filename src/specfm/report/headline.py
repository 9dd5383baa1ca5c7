"""Headline rows: the few numbers that say whether a system worked, each against its reference.

Every stage's metrics JSON carries ``headline``: a list of {metric, value, reference,
reference_value, target}. Missing or malformed entries are an error naming the file, so a stage
that forgot its headline cannot pass silently as "no numbers".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    system: str
    product: str
    metric: str
    value: float
    reference: str
    reference_value: float | None
    target: float | None


def _number(entry: dict, key: str, path: Path) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{path}: headline entry {entry.get('metric')!r}: {key} is not a number ({value!r})")
    return float(value)


def headline_rows(system: str, metrics_file: str | Path, product: str | None = None) -> list[Row]:
    """The headline rows of one metrics file."""
    path = Path(metrics_file)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the metrics: {exc}") from None
    entries = metrics.get("headline") if isinstance(metrics, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: has no 'headline' list (every stage's metrics must carry one)")
    rows = []
    for entry in entries:
        if not isinstance(entry, dict) or "metric" not in entry or "value" not in entry:
            raise ValueError(f"{path}: headline entry without 'metric' and 'value': {entry!r}")
        value = _number(entry, "value", path)
        rows.append(Row(system, product or path.as_posix(), str(entry["metric"]),
                        math.nan if value is None else value, str(entry.get("reference", "")),
                        _number(entry, "reference_value", path), _number(entry, "target", path)))
    return rows
