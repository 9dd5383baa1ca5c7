"""The cost-curve entry point (issue 13 part 3): scaling law, projection, record fields."""

import json

import numpy as np
import pytest

from specfm.report import cost_curve as cc


def test_fit_scaling_recovers_a_line_and_its_slope():
    n = np.array([100.0, 400.0, 1600.0])
    fit = cc.fit_scaling(n, 2.0 + 0.01 * n)
    assert fit["a_seconds"] == pytest.approx(2.0)
    assert fit["b_seconds_per_unit"] == pytest.approx(0.01)
    assert cc.project(fit, 1e6) == pytest.approx(2.0 + 1e4)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_loglog_slope_of_a_power_law(k):
    n = np.array([10.0, 100.0, 1000.0])
    assert cc.fit_scaling(n, 3.0 * n**k)["loglog_slope"] == pytest.approx(k)


def test_projection_never_below_the_per_unit_part():
    # a negative intercept (noise on a near-linear step) must not make the projection smaller than b N
    fit = cc.fit_scaling([10, 20], [0.5, 1.5])
    assert fit["a_seconds"] < 0
    assert cc.project(fit, 1000) == pytest.approx(fit["b_seconds_per_unit"] * 1000)


@pytest.mark.parametrize("sizes, seconds", [([5], [1.0]), ([5, 5], [1.0, 2.0]), ([0, 5], [1.0, 2.0]),
                                            ([1, 5], [0.0, 2.0])])
def test_fit_scaling_refuses_what_cannot_give_a_law(sizes, seconds):
    with pytest.raises(ValueError):
        cc.fit_scaling(sizes, seconds)


def test_sizes_must_increase():
    cc.check_monotone([{"size": 1}, {"size": 4}])
    with pytest.raises(ValueError, match="increase"):
        cc.check_monotone([{"size": 4}, {"size": 1}])


def test_every_step_has_two_increasing_sizes_and_a_projection_target():
    for system, steps in cc.STEPS.items():
        for name, st in steps.items():
            assert len(st.sizes) >= 2 and list(st.sizes) == sorted(set(st.sizes)), (system, name)
            assert st.full["size"] > max(st.sizes), (system, name)


def test_measure_writes_the_fields_the_readme_table_uses(tmp_path, monkeypatch):
    """A cheap fake step through the real child-process path: seconds, peak RSS, load, commit, fit."""
    monkeypatch.setitem(cc.STEPS, "fake", {"alloc": cc.Step("MiB allocated", (20, 80), _alloc, full={"size": 1000, "what": "x"})})
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    # the child re-imports this module: register the fake step there through a sitecustomize hook
    (tmp_path / "sitecustomize.py").write_text(
        "from specfm.report import cost_curve as cc\n"
        "from tests_cost_fake import alloc\n"
        "cc.STEPS['fake'] = {'alloc': cc.Step('MiB allocated', (20, 80), alloc)}\n")
    (tmp_path / "tests_cost_fake.py").write_text(
        "import numpy as np\n"
        "def alloc(n, work, cfg):\n"
        "    a = np.ones(int(n) * 2**20 // 8)\n"
        "    return {'sum': float(a.sum())}\n")
    (tmp_path / "cfg.json").write_text("{}")  # a config snapshot: the fake step reads none
    # a large parent: Linux carries the forked image's high-water mark over exec into the child's
    # ru_maxrss, so a child measured that way would report >= this whatever it allocates
    ballast = np.ones(400 * 2**20 // 8)
    res = cc.measure("fake", work=tmp_path / "work", config=str(tmp_path / "cfg.json"), log=lambda *_: None)
    del ballast
    entry = res["steps"]["alloc"]
    runs = entry["runs"]
    assert [r["size"] for r in runs] == [20, 80]
    for r in runs:
        assert set(r) >= {"size", "seconds", "peak_rss_mb", "rss_before_step_mb", "load_before", "load_after"}
        assert r["seconds"] > 0
    # the child's own peak RSS, not the parent's: 80 MiB allocated shows as ~60 MiB more than 20 MiB
    assert runs[1]["peak_rss_mb"] - runs[0]["peak_rss_mb"] == pytest.approx(60, abs=15)
    assert runs[0]["peak_rss_mb"] < 400  # the child's own peak (imports + 20 MiB), not the parent's ballast
    assert {"a_seconds", "b_seconds_per_unit", "loglog_slope"} <= set(entry["fit"])
    assert entry["projection"]["size"] == 1000
    assert "commit" in res and res["machine"]["cpus"] >= 1
    json.dumps(res)  # JSON-ready


def _alloc(n, work, cfg):  # the parent-side twin of the child's fake step (never called in the parent)
    raise AssertionError("the step must run in the child process")
