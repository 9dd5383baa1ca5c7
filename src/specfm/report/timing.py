"""The demo's time per stage, from the `benchmark:` files Snakemake writes for each job.

Each job's benchmark TSV holds its wall seconds and CPU time; the file's modification time is the
job's end. The span from the earliest job start to the latest job end is the run's wall time as far
as the benchmarked jobs tell it (jobs without a benchmark file, and Snakemake's own start-up, are
not in it; the terminal summary prints the whole invocation's wall time).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import resource
import time
from pathlib import Path
from typing import Iterable, Iterator

from specfm.io import write_bytes_atomic

STAGES = ("galaxies", "stars", "redshift", "emulator", "report")


def read_benchmark(path: str | Path) -> dict:
    """One benchmark TSV: its first data row (s, cpu_time, max_rss in MB) plus the end time."""
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    row = rows[0]

    def num(key):
        try:
            return float(row.get(key, "nan"))
        except ValueError:
            return float("nan")

    end = path.stat().st_mtime
    return {"seconds": num("s"), "cpu_seconds": num("cpu_time"), "max_rss_mb": num("max_rss"),
            "end": end, "start": end - num("s")}


COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time")


def _cpu_and_rss() -> tuple[float, float]:
    """CPU seconds (user + system, this process and its waited-for children) and peak RSS in MB."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return cpu, max(me.ru_maxrss, kids.ru_maxrss) / 1024.0  # ru_maxrss is in KiB on Linux


@contextlib.contextmanager
def own_benchmark(path: str | Path) -> Iterator[None]:
    """Write a benchmark TSV like Snakemake's for a job that may not have a `benchmark:` (a rule with
    `cache: True`, which Snakemake refuses one): wall s, h:m:s, peak RSS and CPU seconds; the other
    columns NA. Written only when the job succeeds, as Snakemake's."""
    t0, (cpu0, _) = time.perf_counter(), _cpu_and_rss()
    yield
    seconds, (cpu1, rss) = time.perf_counter() - t0, _cpu_and_rss()
    values = {"s": f"{seconds:.4f}", "h:m:s": str(datetime.timedelta(seconds=int(seconds))),
              "max_rss": f"{rss:.2f}", "cpu_time": f"{cpu1 - cpu0:.2f}"}
    row = "\t".join(values.get(c, "NA") for c in COLUMNS)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, ("\t".join(COLUMNS) + "\n" + row + "\n").encode())


def rule_of(path: Path, rules: Iterable[str]) -> str:
    """The rule a benchmark file belongs to: the longest rule name its file name starts with."""
    stem = path.stem
    matches = [r for r in rules if stem == r or stem.startswith(r + "_")]
    return max(matches, key=len) if matches else stem


def stage_of(rule: str) -> str:
    prefix = rule.split("_", 1)[0]
    return prefix if prefix in STAGES else "fetch"


def demo_time(bench_files: Iterable[str | Path], rules: Iterable[str], budget_s: float) -> dict:
    """Wall span, per-stage and per-rule job seconds of the benchmarked jobs."""
    rules = list(rules)
    jobs = []
    for path in map(Path, bench_files):
        job = read_benchmark(path)
        job["rule"] = rule_of(path, rules)
        jobs.append(job)
    if not jobs:  # every product came from an earlier run or the cache: nothing ran to be timed
        return {"wall_span_s": None, "budget_s": budget_s, "within_budget": None, "jobs": 0,
                "job_seconds": 0.0, "per_stage": {}, "per_rule": {},
                "how": "no benchmark files: the products were built earlier or taken from the cache"}
    span = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    total = sum(j["seconds"] for j in jobs) or 1.0
    per_stage: dict[str, dict] = {}
    per_rule: dict[str, dict] = {}
    for job in jobs:
        for table, key in ((per_stage, stage_of(job["rule"])), (per_rule, job["rule"])):
            entry = table.setdefault(key, {"jobs": 0, "job_seconds": 0.0, "cpu_seconds": 0.0, "max_rss_mb": 0.0})
            entry["jobs"] += 1
            entry["job_seconds"] += job["seconds"]
            entry["cpu_seconds"] += job["cpu_seconds"]
            entry["max_rss_mb"] = max(entry["max_rss_mb"], job["max_rss_mb"])
    for entry in per_stage.values():
        entry["share_of_job_seconds"] = entry["job_seconds"] / total
    return {"wall_span_s": span, "budget_s": budget_s, "within_budget": span <= budget_s,
            "jobs": len(jobs), "job_seconds": total, "per_stage": per_stage, "per_rule": per_rule,
            "how": "spans and job seconds from the Snakemake benchmark files of this run's jobs"}
