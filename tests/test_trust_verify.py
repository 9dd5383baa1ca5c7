"""`specfm verify` fails loudly on what it cannot vouch for: a missing root, a tree with no records,
a broken record, a product with no record, and a source archive or unpack manifest that is not the
config's pin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from specfm import provenance
from specfm.cli import main
from specfm.fetch.sources import unpack_source

from test_trust_sources import MEMBERS, sha, tar

REPO = Path(__file__).resolve().parents[1]


def product(tmp_path: Path, rel: str = "results/p.txt") -> Path:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("made\n")
    provenance.write(path, code=["specfm.io"])
    return path


def verify(tmp_path: Path, *args: str) -> int:
    return main(["verify", str(tmp_path / "results"), "--base", "/", *args])


def test_missing_root_is_an_error(tmp_path, capsys):
    assert verify(tmp_path) != 0
    out = capsys.readouterr()
    assert str(tmp_path / "results") in out.out + out.err and "does not exist" in out.out + out.err


def test_tree_without_records_is_an_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert verify(tmp_path) != 0
    assert "no provenance records" in capsys.readouterr().out


def test_record_without_path_is_named_not_a_traceback(tmp_path, capsys):
    rec = provenance.record_path(product(tmp_path))
    data = json.loads(rec.read_text())
    del data["product"]["path"]
    rec.write_text(json.dumps(data))
    assert verify(tmp_path) == 1
    out = capsys.readouterr().out
    assert str(rec) in out and "'path'" in out


def test_product_without_record_is_noticed(tmp_path, capsys):
    product(tmp_path)
    (tmp_path / "results/orphan.fits").write_text("no record\n")
    (tmp_path / "results/checkpoints/run").mkdir(parents=True)  # resumable state: not a product
    (tmp_path / "results/checkpoints/run/last.pt").write_text("x")
    (tmp_path / "results/bench").mkdir()
    (tmp_path / "results/bench/speed.json").write_text("{}")  # timings: not content-addressed
    assert verify(tmp_path) == 1
    out = capsys.readouterr().out
    assert "orphan.fits" in out and "no provenance record" in out
    assert "last.pt" not in out and "speed.json" not in out
    (tmp_path / "results/orphan.fits").unlink()
    assert verify(tmp_path) == 0


def test_input_listed_by_a_record_needs_no_record_of_its_own(tmp_path):
    side = tmp_path / "results/part.reservoir.npz"
    side.parent.mkdir(parents=True)
    side.write_text("sample\n")
    out = tmp_path / "results/scaling.json"
    out.write_text("{}\n")
    provenance.write(out, inputs={"reservoir": side}, code=["specfm.io"])
    assert verify(tmp_path) == 0


@pytest.fixture
def workflow_dir(tmp_path, monkeypatch):
    """A workflow directory (the working directory, as for Snakemake) whose config pins the
    ppxf_sdist source to a local archive, unpacked, with one product."""
    wf = tmp_path / "wf"
    (wf / "config").mkdir(parents=True)
    shutil.copy(REPO / "config/config.yaml", wf / "config/config.yaml")
    archive = tar(wf / "resources/archives/ppxf_sdist/pkg-1.0.tar.gz", MEMBERS)
    overlay = {"sources": {"ppxf_sdist": {"kind": "http", "urls": ["file:///nowhere/pkg-1.0.tar.gz"],
                                          "filename": archive.name, "sha256": sha(archive)}}}
    (wf / "config/pin.yaml").write_text(yaml.safe_dump(overlay))
    manifest = wf / "resources/ppxf_sdist/manifest.json"
    monkeypatch.chdir(wf)  # the manifest records the archive relative to the workflow directory
    unpack_source(archive.relative_to(wf), ["*.fits"], manifest, sha256=sha(archive), what="pin")
    product(wf)
    return wf, archive, manifest


def wf_verify(wf: Path, *extra: str) -> int:
    return main(["verify", str(wf / "results"), "--base", str(wf),
                 "--config", str(wf / "config/config.yaml"), str(wf / "config/pin.yaml"), *extra])


def test_verify_checks_archives_and_manifests_against_the_config(workflow_dir, capsys):
    wf, archive, manifest = workflow_dir
    assert wf_verify(wf) == 0
    assert "1 source archive" in capsys.readouterr().out
    pin = sha(archive)
    tar(archive, {**MEMBERS, "pkg-1.0/data/a.fits": b"Z" * 100})  # repacked, placed by hand
    assert wf_verify(wf) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if str(archive.relative_to(wf)) in line and "DRIFT" in line)
    assert pin in line and sha(archive) in line
    assert "manifest.json" in out  # the manifest's members came from other bytes than these


def test_verify_checks_a_manifest_against_a_changed_pin(workflow_dir, capsys):
    wf, archive, manifest = workflow_dir
    overlay = yaml.safe_load((wf / "config/pin.yaml").read_text())
    overlay["sources"]["ppxf_sdist"]["sha256"] = "3" * 64  # the config now pins other bytes
    (wf / "config/pin.yaml").write_text(yaml.safe_dump(overlay))
    assert wf_verify(wf) == 1
    out = capsys.readouterr().out
    assert "3" * 64 in out and "manifest.json" in out


def test_verify_with_a_missing_config_is_an_error(tmp_path, capsys):
    product(tmp_path)
    assert main(["verify", str(tmp_path / "results"), "--base", "/", "--config", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml" in capsys.readouterr().err
