"""The rule files keep the conventions Snakemake's linter checks (log: on every rule, no lambdas or
hard-coded path params, rules and functions apart, no path composition with '+')."""

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

REPO = Path(__file__).resolve().parents[1]

# The one lint we accept, and why: envs/ are not wired to rules (no `conda:`), because no conda or
# mamba can be installed from the package registries this project is built with, so `--sdm conda`
# could never be tested here; the README says so. Every other lint fails the test.
ACCEPTED = ("Specify a conda environment or container for each rule.",)


def lint_findings(text: str) -> list[tuple[str, str]]:
    """(where, lint title) for every bullet of `snakemake --lint`'s text output."""
    findings, where = [], None
    for line in text.splitlines():
        if line.startswith("Lints for "):
            where = line[len("Lints for "):].rstrip(":")
        elif (m := re.match(r"^\s{4}\* (.+?):?$", line)) and where:
            findings.append((where, m.group(1).rstrip(":")))
    return findings


def test_lint_findings_are_parsed():
    text = ("Lints for rule a (line 3, x.smk):\n    * No log directive defined.:\n      explanation\n"
            "Lints for snakefile x.smk:\n    * Mixed rules and functions in same snakefile.:\n")
    assert lint_findings(text) == [("rule a (line 3, x.smk)", "No log directive defined."),
                                   ("snakefile x.smk", "Mixed rules and functions in same snakefile.")]


def test_snakemake_lint_is_clean_but_for_the_conda_lint():
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    findings = lint_findings(proc.stdout + proc.stderr)
    assert findings, "snakemake --lint printed no findings at all: the accepted conda lint should be there"
    unexpected = [f for f in findings if f[1] not in ACCEPTED]
    assert not unexpected, "\n".join(f"{where}: {title}" for where, title in unexpected)
