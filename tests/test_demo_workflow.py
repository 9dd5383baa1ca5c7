"""The README's first command end to end (tiny config): every stage's products, the time per
stage, the terminal summary, and the report as a real browser renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from browser.check_page import HOW_TO_INSTALL, check_page, chromium

SYSTEMS = ("galaxies", "stars", "redshift", "emulator")

pytestmark = pytest.mark.slow


def test_demo_prints_a_summary_with_every_systems_headline(tiny_demo):
    wf, proc = tiny_demo
    summary = (wf / "results/summary.txt").read_text()
    assert summary.rstrip() in proc.stdout  # printed at the end of the run, as written
    for system in SYSTEMS:
        assert f"\n{system} " in summary, system
    assert "report: results/report.html" in summary and "whole run:" in proc.stdout


def test_demo_times_each_stage_from_the_benchmark_files(tiny_demo):
    wf, _ = tiny_demo
    timing = json.loads((wf / "results/bench/demo_time.json").read_text())
    assert set(SYSTEMS) <= set(timing["per_stage"])
    assert timing["wall_span_s"] > 0 and timing["budget_s"] == 1200
    shares = sum(stage["share_of_job_seconds"] for stage in timing["per_stage"].values())
    assert shares == pytest.approx(1.0)
    for rule in ("galaxies_train", "stars_finetune"):
        assert rule in timing["per_rule"], rule


def test_every_product_of_the_demo_verifies(tiny_demo):
    wf, _ = tiny_demo
    bin_dir = os.path.dirname(sys.executable)
    verify = subprocess.run([f"{bin_dir}/specfm", "verify"], cwd=wf, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_report_renders_in_headless_chromium_with_every_figure(tiny_demo):
    wf, _ = tiny_demo
    try:
        chromium()
    except RuntimeError:
        pytest.fail(HOW_TO_INSTALL)
    page = check_page(wf / "results/report.html")
    assert set(SYSTEMS) <= set(page["sections"]), page["sections"]
    broken = [img["path"] for img in page["images"] if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    html = (wf / "results/report.html").read_text()
    assert len(page["images"]) == html.count("<img ") >= 10
