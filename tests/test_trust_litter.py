"""No litter: a product killed mid-write leaves a hidden temporary that the next write of that product
removes (a live writer's is left alone), and a SIGTERM-ended training job says so in its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from specfm.io import atomic_path, write_bytes_atomic

HERE = Path(__file__).resolve().parent


def temporaries(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f".{path.name}.tmp-*"))


def writer(path: Path, then: str) -> subprocess.Popen:
    """A process that opens atomic_path(path), writes, then SIGKILLs itself or sleeps."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from specfm.io import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            tmp.write_bytes(b"half")
            print("writing", flush=True)
            if {then!r} == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_stale_temporary_of_a_killed_writer_is_removed(tmp_path):
    product = tmp_path / "table.h5"
    proc = writer(product, "kill")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert len(temporaries(product)) == 1 and not product.exists()
    (tmp_path / f".{product.name}.tmp-abc123.h5").write_bytes(b"old")  # from before pids in names
    other = tmp_path / f".other.h5.tmp-1@host-x.h5"
    other.write_bytes(b"another product's")
    write_bytes_atomic(product, b"done")
    assert product.read_bytes() == b"done"
    assert temporaries(product) == [] and other.exists()


def test_live_writers_temporary_is_kept(tmp_path):
    product = tmp_path / "table.h5"
    proc = writer(product, "sleep")
    try:
        live = temporaries(product)
        assert len(live) == 1
        with atomic_path(product) as tmp:
            tmp.write_bytes(b"done")
        assert temporaries(product) == live
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_ended_training_job_logs_the_signal(tmp_path):
    """A rule script's log (specfm.logs.rule_logging) says the job ended on SIGTERM, not just '143'."""
    log, marker = tmp_path / "job.log", tmp_path / "marker"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from pathlib import Path
        import torch
        from torch import nn
        from specfm.logs import rule_logging
        from specfm.train import fit, seed_everything
        from train_toy import make_data

        torch.set_num_threads(1)
        with rule_logging({str(log)!r}):
            seed_everything(0)
            train, val = make_data(0, 3000)
            model = nn.Linear(8, 1)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            n = 0

            def loss_fn(m, batch):
                global n
                n += 1
                if n == 50:
                    Path({str(marker)!r}).touch()
                time.sleep(0.002)
                return nn.functional.mse_loss(m(batch[0]), batch[1])

            import time
            fit(model, loss_fn, train, val, optimizer=opt, max_epochs=50, patience=None,
                checkpoint_dir={str(tmp_path / "ck")!r}, seed=0, batch_size=4, device="cpu", progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    text = log.read_text()
    failed = [line for line in text.splitlines() if " ERROR " in line and "failed:" in line]
    assert failed, text
    assert "SIGTERM" in failed[-1] and "checkpoint" in failed[-1], failed[-1]


def test_tests_keep_checkpoints_out_of_the_checkout():
    """The autouse fixture in conftest.py: in-process training in a test writes its resumable state
    under a temporary root, not into the checkout's results/checkpoints/."""
    from specfm.train import checkpoint_dir_for

    checkout = HERE.parent.resolve()
    root = Path(os.environ["SPECFM_CHECKPOINT_DIR"]).resolve()
    assert checkout not in root.parents and root != checkout
    assert checkout not in checkpoint_dir_for("results/models/x.pt").resolve().parents
