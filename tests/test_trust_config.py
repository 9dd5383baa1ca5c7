"""Bad configs are refused at config time, by key: non-finite numbers, the ablation cross-key rule,
missing / directory / empty files, a missing required key; the schema is found from the workflow."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from specfm import __version__
from specfm import config as cfg
from specfm.cli import main

BASE = yaml.safe_load(open("config/config.yaml"))


def bad(mutate) -> str:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(data)
    return str(info.value)


@pytest.mark.parametrize("where,key,value", [
    ("galaxies.targets.mockgal", "redshift", float("nan")),
    ("galaxies.trainset", "size_factor", float("nan")),
    ("galaxies.binning", "target_snr", float("inf")),
])
def test_non_finite_numbers_are_named(where, key, value):
    def mutate(d):
        block = d
        for part in where.split("."):
            block = block.setdefault(part, {})
        block[key] = value

    msg = bad(mutate)
    assert f"'{where}.{key}'" in msg and ("nan" in msg or "inf" in msg)


def test_non_finite_in_yaml_overlay_fails_check_config(tmp_path, capsys):
    overlay = tmp_path / "nan.yaml"
    overlay.write_text("galaxies:\n  binning:\n    target_snr: .inf\n")
    assert main(["check-config", "config/config.yaml", str(overlay)]) == 2
    assert "galaxies.binning.target_snr" in capsys.readouterr().err


def test_ablation_must_include_the_model_attention():
    msg = bad(lambda d: (d["galaxies"].setdefault("model", {}).update(attention="patch"),
                         d["galaxies"].setdefault("ablation", {}).update(attention=["none", "global"])))
    assert "galaxies.ablation.attention" in msg and "patch" in msg and "galaxies.model.attention" in msg
    ok = copy.deepcopy(BASE)
    ok["galaxies"].setdefault("ablation", {})["attention"] = []  # [] skips the ablation: allowed
    cfg.validate(ok)


def test_missing_required_key_says_which_and_where():
    msg = bad(lambda d: d["sources"]["ppxf_sdist"].pop("licence"))
    assert "'sources.ppxf_sdist.licence'" in msg and "missing" in msg


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "absent.yaml", "does not exist"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "empty.yaml").write_text("# nothing\n") and p / "empty.yaml", "is empty"),
])
def test_check_config_missing_directory_or_empty(tmp_path, capsys, make, needle):
    path = make(tmp_path)
    assert main(["check-config", "config/config.yaml", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err and "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


def test_schema_is_found_from_the_workflow_directory(tmp_path):
    """Not only through the source checkout: a copy of the workflow finds its own schema."""
    wf = tmp_path / "wf"
    (wf / "workflow" / "schemas").mkdir(parents=True)
    schema = yaml.safe_load(Path(cfg.find_schema()).read_text())
    schema["properties"]["seed"]["description"] = "copied"
    (wf / "workflow" / "schemas" / "config.schema.yaml").write_text(yaml.safe_dump(schema))
    code = "from specfm import config as c; print(c.find_schema())"
    out = subprocess.run([sys.executable, "-c", code], cwd=wf, capture_output=True, text=True,
                         env={**os.environ, "SPECFM_SCHEMA": ""})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == wf / "workflow" / "schemas" / "config.schema.yaml"
