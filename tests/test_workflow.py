"""The workflow itself: DAGs, config errors before any job, an offline end-to-end run of the demo
chain (fetch -> unpack -> templates -> figure) that is byte-reproducible and verifiable, the
fetch failure message, and the between-workflow cache.

Each test runs Snakemake in a copy of the workflow under tmp_path; the E-MILES sdist is replaced by
a tiny fake tarball served from a file:// URL, so no network is needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fakes import copy_workflow, offline_workflow

pytestmark = pytest.mark.slow  # Snakemake runs of the workflow (pytest -m "not slow" skips them)

BIN = Path(sys.executable).parent
PRODUCTS = (
    "results/interim/galaxies/templates_emiles_ppxf.h5",
    "results/interim/galaxies/templates_emiles_ppxf.h5.prov.json",
    "results/galaxies/figures/templates_emiles_ppxf.png",
    "results/galaxies/figures/templates_emiles_ppxf.png.prov.json",
)


def snakemake(wf: Path, *args: str, env: dict | None = None, timeout: int = 300):
    cmd = [str(BIN / "snakemake"), "--cores", "2", *args]
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=timeout, env=full_env)


def specfm_verify(wf: Path):
    return subprocess.run([str(BIN / "specfm"), "verify"], cwd=wf, capture_output=True, text=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline_wf(tmp_path):
    return offline_workflow(tmp_path)


def dry_run_jobs(wf: Path, *args: str) -> dict[str, int]:
    proc = snakemake(wf, "-n", *args, "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_runs_list_the_demo_and_the_full_dag(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    demo = dry_run_jobs(wf)
    assert {"fetch_ppxf_sdist", "unpack_ppxf_sdist", "galaxies_templates", "galaxies_templates_figure", "demo"} <= set(demo)
    full = dry_run_jobs(wf, "all")
    for rule in ("galaxies_train", "galaxies_ppxf", "galaxies_predict", "stars_pretrain", "stars_finetune",
                 "redshift_train_fold", "emulator_train"):
        assert rule in full, rule
    big = dry_run_jobs(wf, "all", "--configfile", "config/config.yaml", "config/fullscale.yaml")
    assert big["stars_finetune"] == 20 and big["redshift_train_fold"] == 10  # one job per member / fold
    assert big["galaxies_predict"] == 3  # ngc4254, ngc5068, mockgal


def test_a_configured_redrock_template_file_replaces_the_built_templates(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (tmp_path / "rrdir").mkdir()
    (tmp_path / "rrdir" / "rrtemplate-galaxy.fits").write_bytes(b"")  # a dry run only checks it exists
    overlay = {"redshift": {"redrock": {"template_file": "$RR_TEMPLATE_DIR/rrtemplate-galaxy.fits"}}}
    (wf / "config" / "rr.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(wf, "-n", "--configfile", "config/config.yaml", "config/rr.yaml", "--quiet", "rules",
                     env={"RR_TEMPLATE_DIR": str(tmp_path / "rrdir")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2}
    assert {"redshift_redrock", "redshift_hybrid"} <= jobs and "redshift_rr_templates" not in jobs


def test_invalid_config_stops_before_any_job_naming_the_key(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "config" / "bad.yaml").write_text("galaxies:\n  train:\n    epochs: many\n")
    proc = snakemake(wf, "--configfile", "config/config.yaml", "config/bad.yaml")
    assert proc.returncode != 0
    assert "galaxies.train.epochs" in proc.stdout + proc.stderr
    assert not (wf / "results").exists() and not (wf / "resources").exists()


def test_single_target_offline_run_is_reproducible_and_verifiable(offline_wf):
    wf = offline_wf
    cfg = ["--configfile", "config/config.yaml", "config/offline.yaml"]
    proc = snakemake(wf, "results/galaxies/figures/templates_emiles_ppxf.png", *cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for product in PRODUCTS:
        assert (wf / product).is_file(), product
    log = (wf / "logs/galaxies/templates_emiles_ppxf.log").read_text()
    assert "2 [M/H] x 3 ages" in log

    ok = specfm_verify(wf)
    assert ok.returncode == 0 and "2 provenance records" in ok.stdout and "no drift" in ok.stdout

    report = snakemake(wf, "results/galaxies/figures/templates_emiles_ppxf.png", *cfg, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "templates_emiles_ppxf.png" in (wf / "report.html").read_text(errors="replace")

    before = {p: sha(wf / p) for p in PRODUCTS}
    proc = snakemake(wf, "results/galaxies/figures/templates_emiles_ppxf.png", *cfg,
                     "--forcerun", "galaxies_templates")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "galaxies_templates_figure" in proc.stdout + proc.stderr  # really reran downstream too
    assert {p: sha(wf / p) for p in PRODUCTS} == before  # byte-identical rerun

    table = wf / PRODUCTS[0]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the flux array
    table.write_bytes(bytes(data))
    bad = specfm_verify(wf)
    assert bad.returncode == 1 and "templates_emiles_ppxf.h5: product modified" in bad.stdout


def test_unreachable_source_fails_at_the_fetch_with_one_clear_line(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "config" / "dead.yaml").write_text(yaml.safe_dump({
        "fetch": {"retries": 1, "backoff": 0.01, "timeout": 2},
        "sources": {"phangs_ngc4254_cube": {"urls": ["http://127.0.0.1:9/NGC4254.fits"]}},
    }))
    target = "resources/archives/phangs_ngc4254_cube/NGC4254_PHANGS_DATACUBE_native.fits"
    proc = snakemake(wf, target, "--configfile", "config/config.yaml", "config/dead.yaml")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    line = next(line for line in out.splitlines() if "could not fetch" in line)
    assert "http://127.0.0.1:9/NGC4254.fits" in line and "place the file by hand at" in line and target in line
    assert not (wf / target).exists()


def test_between_workflow_cache_is_reused_by_a_second_clone(offline_wf, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    cfg = ["--configfile", "config/config.yaml", "config/offline.yaml"]
    # the cached rule's product, not the whole demo (the fake sdist holds 6 templates); before --cache,
    # which would take it for one more rule name
    target = PRODUCTS[0]
    first = snakemake(offline_wf, target, "--cache", "galaxies_templates", *cfg, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert any(cache.iterdir()), "nothing was stored in the cache"

    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("Snakefile", "workflow", "config", "profiles", "scripts"):
        subprocess.run(["cp", "-r", str(offline_wf / part), str(clone)], check=True)
    second = snakemake(clone, target, "--cache", "galaxies_templates", *cfg, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    log = clone / "logs/galaxies/templates_emiles_ppxf.log"  # Snakemake touches it; the script never wrote
    assert not log.exists() or log.read_text() == "", "the cached rule ran again"
    product = "results/interim/galaxies/templates_emiles_ppxf.h5"
    assert sha(clone / product) == sha(offline_wf / product)
