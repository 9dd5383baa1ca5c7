"""The schema stops bad configs before any job starts, naming the key; defaults are filled in."""

import copy

import pytest
import yaml

from specfm import config as cfg

BASE = yaml.safe_load(open("config/config.yaml"))


def bad(mutate):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(data)
    return str(info.value)


def test_shipped_configs_are_valid_and_defaults_filled():
    merged = cfg.load("config/config.yaml", "config/fullscale.yaml")
    assert merged["galaxies"]["train"]["gpu"] == 1
    assert merged["fetch"]["retries"] == 5  # default from the schema
    tiny = cfg.load("config/config.yaml", "tests/config/tiny.yaml")
    assert tiny["stars"]["ensemble_size"] == 2 and tiny["stars"]["pretrain"]["p_xp"] == 0.9  # default
    assert tiny["fetch"]["backoff"] == 2.0  # default: neither config.yaml nor tiny.yaml sets it


def test_unknown_key_is_named():
    assert "'galaxies.trian'" in bad(lambda d: d["galaxies"].update(trian={}))
    assert "'colour'" in bad(lambda d: d.update(colour="blue"))


def test_wrong_type_is_named():
    msg = bad(lambda d: d["stars"].update(ensemble_size="twenty"))
    assert "stars.ensemble_size" in msg and "integer" in msg


def test_missing_required_key_is_named():
    msg = bad(lambda d: d["sources"]["ppxf_sdist"].pop("licence"))
    assert "sources.ppxf_sdist" in msg and "licence" in msg


def test_bad_checksum_and_dangling_reference():
    assert "sources.ppxf_sdist.sha256" in bad(lambda d: d["sources"]["ppxf_sdist"].update(sha256="abc"))
    msg = bad(lambda d: d["galaxies"]["targets"]["ngc4254"].update(cube="no_such_source"))
    assert "galaxies.targets.ngc4254.cube" in msg and "no_such_source" in msg
    msg = bad(lambda d: d["galaxies"]["targets"]["sdss3"].update(source="no_such_source"))
    assert "galaxies.targets.sdss3.source" in msg and "no_such_source" in msg
    msg = bad(lambda d: d["galaxies"]["targets"]["sdss3"].update(source="manga_8485_1901_logcube"))
    assert "galaxies.targets.sdss3.source" in msg and "unpacks no members" in msg
    msg = bad(lambda d: d["galaxies"]["targets"]["sdss3"].pop("redshifts"))
    assert "galaxies.targets.sdss3" in msg and "needs redshift" in msg


def test_cli_check_config(tmp_path, capsys):
    from specfm.cli import main

    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: -1\n")
    assert main(["check-config", "config/config.yaml", str(broken)]) == 2
    assert "seed" in capsys.readouterr().err
    assert main(["check-config", "config/config.yaml"]) == 0
