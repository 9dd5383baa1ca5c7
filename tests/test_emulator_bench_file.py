"""The emulator grid rule is `cache: True`, so Snakemake refuses it a `benchmark:`; its script writes
its own TSV in Snakemake's columns, which the demo's time per stage reads like any other."""

from __future__ import annotations

import time

from specfm.report.timing import COLUMNS, demo_time, own_benchmark, read_benchmark


def test_own_benchmark_writes_a_snakemake_like_row_only_on_success(tmp_path):
    path = tmp_path / "bench" / "emulator_grid.tsv"
    with own_benchmark(path):
        t0 = time.process_time()
        while time.process_time() - t0 < 0.2:  # burn 0.2 s of CPU
            pass
        time.sleep(0.1)
    head, row = path.read_text().splitlines()
    assert head.split("\t") == list(COLUMNS) and len(row.split("\t")) == len(COLUMNS)
    job = read_benchmark(path)
    assert job["seconds"] >= 0.3 and 0.19 <= job["cpu_seconds"] < job["seconds"] and job["max_rss_mb"] > 10
    assert row.split("\t")[1] == "0:00:00"
    timing = demo_time([path], ["emulator_grid", "emulator_train"], budget_s=60)
    assert timing["per_rule"]["emulator_grid"]["jobs"] == 1 and "emulator" in timing["per_stage"]

    failed = tmp_path / "bench" / "failed.tsv"
    try:
        with own_benchmark(failed):
            raise RuntimeError("the job failed")
    except RuntimeError:
        pass
    assert not failed.exists()
