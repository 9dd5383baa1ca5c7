"""The report package: headline rows, the terminal summary, the demo's time per stage, the page."""

from __future__ import annotations

import base64
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from specfm.report import Figure, Row, Section, demo_time, format_summary, headline_rows, write_report  # noqa: E402
from specfm.report.timing import rule_of  # noqa: E402


def _metrics(tmp_path, obj, name="m.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_headline_rows_read_every_entry(tmp_path):
    path = _metrics(tmp_path, {"headline": [
        {"metric": "NMAD", "value": 0.001, "reference": "Redrock", "reference_value": 0.0008, "target": 0.0006},
        {"metric": "eta", "value": 0.02}]})
    rows = headline_rows("redshift", path)
    assert [r.metric for r in rows] == ["NMAD", "eta"]
    assert rows[0].reference_value == 0.0008 and rows[0].target == 0.0006
    assert rows[1].reference_value is None and rows[1].system == "redshift"


@pytest.mark.parametrize("obj, problem", [
    ({"scores": {}}, "no 'headline' list"),
    ({"headline": []}, "no 'headline' list"),
    ({"headline": [{"value": 1.0}]}, "without 'metric'"),
    ({"headline": [{"metric": "x", "value": "big"}]}, "not a number"),
])
def test_a_metrics_file_without_a_usable_headline_is_named(tmp_path, obj, problem):
    path = _metrics(tmp_path, obj)
    with pytest.raises(ValueError, match=problem) as err:
        headline_rows("stars", path)
    assert str(path) in str(err.value)


def test_summary_is_an_aligned_table_with_the_report_path():
    rows = [Row("galaxies", "results/g.json", "log age scatter", 0.16123, "pPXF", 0.121, None),
            Row("stars", "results/s.json", "teff MAE (with XP)", 248.04, "thesis", 92.0, None)]
    text = format_summary(rows, "results/report.html", ["time: 18.0 min"])
    lines = text.splitlines()
    assert lines[0] == "specfm summary"
    header, rule, first = lines[1], lines[2], lines[3]
    assert header.index("value") == first.index("0.1612")  # columns line up
    assert set(rule.replace(" ", "")) == {"-"}
    assert "pPXF 0.121" in first and "thesis 92" in lines[4]
    assert lines[-2] == "time: 18.0 min" and lines[-1] == "report: results/report.html"


def _bench(path, seconds, cpu, end):
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{seconds}\t0:00:00\t100.5\t1\t1\t1\t0\t0\t0\t{cpu}\n")
    os.utime(path, (end, end))


def test_demo_time_sums_jobs_per_stage_and_spans_first_start_to_last_end(tmp_path):
    _bench(tmp_path / "galaxies_train.tsv", 100.0, 180.0, end=1000.0)
    _bench(tmp_path / "galaxies_bin_mockgal.tsv", 10.0, 9.0, end=1100.0)
    _bench(tmp_path / "stars_finetune_apogee_xp_1.tsv", 50.0, 49.0, end=1200.0)
    _bench(tmp_path / "fetch_ppxf_sdist.tsv", 5.0, 1.0, end=890.0)
    rules = ["galaxies_train", "galaxies_bin", "stars_finetune", "fetch_ppxf_sdist"]
    t = demo_time(sorted(tmp_path.glob("*.tsv")), rules, budget_s=1200)
    assert t["wall_span_s"] == pytest.approx(1200.0 - 885.0)
    assert t["per_stage"]["galaxies"]["job_seconds"] == pytest.approx(110.0)
    assert t["per_stage"]["galaxies"]["cpu_seconds"] == pytest.approx(189.0)
    assert t["per_stage"]["fetch"]["jobs"] == 1
    assert t["per_stage"]["stars"]["share_of_job_seconds"] == pytest.approx(50 / 165)
    assert t["within_budget"] and t["jobs"] == 4


def test_a_benchmark_file_belongs_to_the_longest_matching_rule(tmp_path):
    rules = ["galaxies_templates", "galaxies_templates_figure"]
    assert rule_of(tmp_path / "galaxies_templates_figure_emiles_ppxf.tsv", rules) == "galaxies_templates_figure"
    assert rule_of(tmp_path / "galaxies_templates_emiles_ppxf.tsv", rules) == "galaxies_templates"


def test_demo_time_without_benchmarks_says_so_instead_of_a_number():
    t = demo_time([], [], 1200)
    assert t["jobs"] == 0 and t["wall_span_s"] is None and t["within_budget"] is None
    assert "no benchmark files" in t["how"]


def test_report_embeds_every_figure_and_refuses_a_non_png(tmp_path):
    png = tmp_path / "a.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(png)
    plt.close(fig)
    rows = [Row("stars", "s.json", "teff MAE", 250.0, "thesis", 92.0, None)]
    metrics = _metrics(tmp_path, {"headline": [{"metric": "teff MAE", "value": 250.0}]})
    out = tmp_path / "report.html"
    write_report([Section("stars", "stars", rows, [Figure(str(png), "Kiel diagram")], [str(metrics)])], out)
    page = out.read_text()
    assert base64.b64encode(png.read_bytes()).decode() in page
    assert 'id="stars"' in page and "Kiel diagram" in page and "teff MAE" in page
    bad = tmp_path / "b.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="b.png: not a PNG"):
        write_report([Section("x", "x", [], [Figure(str(bad))])], tmp_path / "r2.html")
    assert not (tmp_path / "r2.html").exists()


def test_captions_lose_their_rst_and_jinja_markup(tmp_path):
    from specfm.report.html import caption_text

    rst = tmp_path / "c.rst"
    rst.write_text("Maps of ``LOGAGE`` for\n{{ snakemake.wildcards.galaxy }}: `pPXF` side by side.\n")
    assert caption_text(rst) == "Maps of LOGAGE for this galaxy: pPXF side by side."
