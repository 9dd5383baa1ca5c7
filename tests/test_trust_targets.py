"""A target that names nothing configured fails at once with a message naming the configured galaxies
(Snakemake alone says MissingRuleException), and configured targets are not disturbed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import copy_workflow

BIN = Path(sys.executable).parent
INCLUDE = 'include: "workflow/rules/targets.smk"\n'


def dry(wf: Path, *targets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "-n", *targets, "--quiet", "rules"], cwd=wf,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("targets") / "wf")
    snakefile = wf / "Snakefile"
    text = snakefile.read_text()
    if INCLUDE not in text:  # until the Snakefile includes it
        anchor = 'include: "workflow/rules/report.smk"\n'
        assert anchor in text
        snakefile.write_text(text.replace(anchor, anchor + INCLUDE))
    return wf


@pytest.mark.parametrize("target", ["results/nosuch_maps.fits", "results/nosuch_ppxf_maps.fits",
                                    "results/galaxies/nosuch_metrics.json"])
def test_unconfigured_galaxy_names_the_configured_ones(wf, target):
    proc = dry(wf, target)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "MissingRuleException" not in out
    assert "'nosuch' is not a configured galaxy" in out and "mockgal" in out and "ngc4254" in out


@pytest.mark.parametrize("target", ["results/mockgal_maps.fits", "results/mockgal_ppxf_maps.fits",
                                    "results/galaxies/mockgal_metrics.json", "results/galaxies/sdss3_spectra_metrics.json",
                                    "all"])
def test_configured_targets_are_unchanged(wf, target):
    proc = dry(wf, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unconfigured_galaxy_target" not in proc.stdout
    assert "InputFunctionException" not in proc.stdout + proc.stderr  # not even a non-strict one
