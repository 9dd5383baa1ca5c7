import sys
from pathlib import Path

# tests/fakes.py and tests/train_toy.py are imported by name from the tests.
sys.path.insert(0, str(Path(__file__).parent))


import os  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ("--configfile", "config/config.yaml", "tests/config/tiny.yaml")


@pytest.fixture(autouse=True)
def checkpoints_outside_the_checkout(tmp_path_factory, monkeypatch):
    """Every test gets its own checkpoint root: a test that trains in-process (cwd = the checkout)
    would otherwise leave resumable state in the checkout's results/checkpoints/, and one shared
    root would let two tests resume each other's runs (the folder name depends only on the output
    path). A test that needs another root sets or deletes the variable itself."""
    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The README's first command (`snakemake` = the `demo` target) on the tiny config, run once in a
    workflow copy and shared by the tests that check its products (every stage's chain, the report).

    Returns (workflow directory, the finished process)."""
    from fakes import copy_workflow

    wf = copy_workflow(tmp_path_factory.mktemp("demo") / "wf")
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", *TINY], cwd=wf, capture_output=True,
                          text=True, timeout=2400, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    return wf, proc
