"""specfm.train: determinism, early stopping, SIGTERM checkpoint/resume, device and DDP plumbing."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from specfm.train import (EXIT_PREEMPTED, Preempted, checkpoint_dir_for, choose_device, cleanup,
                          fit, init_distributed, is_main_process, load_final, load_latest,
                          maybe_relaunch_with_torchrun, save_final, seed_everything,
                          setup_logging, world_size)
from specfm.train import distributed as train_dist

TOY = Path(__file__).with_name("train_toy.py")
_spec = importlib.util.spec_from_file_location("train_toy", TOY)
train_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_toy)

N, BATCH, EPOCHS = 600, 8, 3  # 480 training samples: 60 batches per epoch
STEPS = 60


def mse(model, batch):
    x, y = batch  # (B, 8), (B, 1)
    return nn.functional.mse_loss(model(x), y)


def new_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))


def run(ckdir: Path, seed: int = 1, epochs: int = EPOCHS, loss_fn=mse, patience=10, **kw):
    """A small fit (MLP with dropout, Adam, StepLR) checkpointing to ckdir: (model, FitResult)."""
    seed_everything(seed)
    train, val = train_toy.make_data(0, N)
    model = new_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # state matters on resume
    kw.setdefault("progress", False)
    result = fit(model, loss_fn, train, val, optimizer=opt, scheduler=sched, max_epochs=epochs,
                 patience=patience, checkpoint_dir=ckdir, seed=seed, batch_size=BATCH,
                 device="cpu", **kw)
    return model, result


def assert_same_weights(a: nn.Module | dict, b: nn.Module | dict) -> None:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def losses(history: list[dict]) -> list[tuple[float, float]]:
    return [(h["train_loss"], h["val_loss"]) for h in history]


def test_same_seed_same_weights(tmp_path):
    a, ra = run(tmp_path / "a")
    b, rb = run(tmp_path / "b")
    assert_same_weights(a, b)
    assert losses(ra.history) == losses(rb.history)
    c, _ = run(tmp_path / "c", seed=2)
    assert not torch.equal(a[0].weight, c[0].weight)  # the seed matters: the test above can fail


def test_early_stopping_after_patience_bad_epochs(tmp_path):
    # Validation losses scripted per epoch: best at epoch 5, after 2 bad epochs that must stop
    # counting once it improves; then 3 bad epochs -> stop after epoch 8, i.e. 9 epochs run.
    scripted = [5.0, 4.0, 3.0, 3.5, 3.2, 2.9, 3.0, 2.95, 2.9] + [1.0] * 10
    evals = []

    def loss_fn(model, batch):
        if model.training:
            return mse(model, batch)
        evals.append(1)  # one validation batch per epoch (val_batch_size >= n_val)
        return torch.tensor(scripted[len(evals) - 1])

    model, res = run(tmp_path, epochs=50, loss_fn=loss_fn, patience=3, val_batch_size=N)
    assert res.epochs_run == 9 and len(evals) == 9
    assert res.stopped_early and res.best_epoch == 5 and res.best_val_loss == pytest.approx(2.9)
    assert [h["val_loss"] for h in res.history] == pytest.approx(scripted[:9])
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 5
    assert_same_weights(model, best["model"])  # the best weights are restored, not the last
    assert load_latest(tmp_path)["state"]["finished"]


@pytest.mark.parametrize("kill_at", [95, 120])  # mid-epoch 1; last batch of epoch 1
def test_sigterm_in_process_resume_is_bit_identical(tmp_path, kill_at):
    ref, ref_res = run(tmp_path / "ref")
    seen = 0

    def loss_fn(model, batch):
        nonlocal seen
        if model.training:
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)  # fit's handler: stop at the batch boundary
        return mse(model, batch)

    with pytest.raises(Preempted) as exc:
        run(tmp_path / "ck", loss_fn=loss_fn)
    assert exc.value.code == EXIT_PREEMPTED
    # 95 -> (1, 35): inside epoch 1; 120 -> (2, 0): stops after epoch 1's validation
    assert (exc.value.epoch, exc.value.step) == divmod(kill_at, STEPS)
    state = load_latest(tmp_path / "ck")["state"]
    assert (state["epoch"], state["step"]) == divmod(kill_at, STEPS) and not state["finished"]

    resumed, res = run(tmp_path / "ck")
    assert res.resumed_from == divmod(kill_at, STEPS)
    assert res.steps_run == EPOCHS * STEPS - kill_at  # no batch repeated or skipped
    assert_same_weights(ref, resumed)
    assert losses(res.history) == losses(ref_res.history)


def test_finished_or_foreign_checkpoint_starts_afresh(tmp_path):
    a, _ = run(tmp_path, fingerprint="cfg-1")
    b, res = run(tmp_path, fingerprint="cfg-1")  # last.pt is of a finished run
    assert res.resumed_from is None and res.steps_run == EPOCHS * STEPS
    assert_same_weights(a, b)

    seen = 0

    def loss_fn(model, batch):
        nonlocal seen
        seen += model.training
        if seen == 30:
            os.kill(os.getpid(), signal.SIGTERM)
        return mse(model, batch)

    with pytest.raises(Preempted):
        run(tmp_path, fingerprint="cfg-1", loss_fn=loss_fn)
    _, res = run(tmp_path, fingerprint="cfg-2")  # another configuration: ignore the checkpoint
    assert res.resumed_from is None and res.steps_run == EPOCHS * STEPS


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"toy run exited ({proc.returncode}) before the marker"
        assert time.monotonic() - t0 < timeout, "marker never appeared"
        time.sleep(0.01)


def test_sigterm_subprocess_resume(tmp_path):
    """SIGTERM to a real training process: it checkpoints and exits 143; a rerun resumes and ends
    with the same bytes as an uninterrupted run."""
    def toy(name, *extra):  # 2400 training samples, batch 4: 600 batches per epoch, 4 epochs
        return [sys.executable, str(TOY), "--ckpt", str(tmp_path / f"ck_{name}"),
                "--out", str(tmp_path / f"{name}.pt"), "--log", str(tmp_path / f"{name}.log"),
                "--n", "3000", *extra]

    ref = subprocess.Popen(toy("ref", "--summary", str(tmp_path / "ref.json")))  # alongside
    marker = tmp_path / "marker"
    proc = subprocess.Popen(toy("run", "--summary", str(tmp_path / "s1.json"),
                                "--marker", str(marker), "--marker-after", "300"))
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED
    assert not (tmp_path / "run.pt").exists()
    s1 = json.loads((tmp_path / "s1.json").read_text())
    state = load_latest(tmp_path / "ck_run")["state"]
    assert s1["batches"] >= 300 and state["epoch"] * 600 + state["step"] == s1["batches"]

    done = subprocess.run(toy("run", "--summary", str(tmp_path / "s2.json")), timeout=120)
    assert done.returncode == 0
    assert ref.wait(timeout=120) == 0
    s2 = json.loads((tmp_path / "s2.json").read_text())
    sref = json.loads((tmp_path / "ref.json").read_text())
    assert s2["resumed_from"] == [state["epoch"], state["step"]]
    assert s1["batches"] + s2["batches"] == sref["batches"] == 2400  # none skipped or repeated
    assert losses(s2["history"]) == losses(sref["history"])
    assert "resuming from" in (tmp_path / "run.log").read_text()

    w_run, meta = load_final(tmp_path / "run.pt")
    w_ref, _ = load_final(tmp_path / "ref.pt")
    assert meta["seed"] == 7
    assert_same_weights(w_run, w_ref)


def test_save_and_load_final(tmp_path):
    model = nn.Linear(3, 2)
    save_final(model, tmp_path / "m" / "model.pt", {"seed": 3, "bands": ["g", "r"]})
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.pt"]  # no temporary left
    other = nn.Linear(3, 2)
    state, meta = load_final(tmp_path / "m" / "model.pt", other)
    assert meta == {"seed": 3, "bands": ["g", "r"]}
    assert_same_weights(model, other)


def test_checkpoint_dir_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECFM_CHECKPOINT_DIR", raising=False)
    out = "results/models/stars/model.pt"
    d = checkpoint_dir_for(out)
    assert d.parent == Path("results/checkpoints") and "stars" in d.name
    assert d == checkpoint_dir_for(tmp_path / out)  # the same file: the same directory
    assert d != checkpoint_dir_for("results/models/galaxies/model.pt")
    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", "/scratch/ck")
    assert checkpoint_dir_for(out) == Path("/scratch/ck") / d.name
    assert checkpoint_dir_for(out, root="x").parent == Path("x")


def test_logging_and_progress_bars(tmp_path, capsys):
    log = setup_logging(tmp_path / "logs" / "train.log", stderr=False)
    try:
        run(tmp_path / "ck", epochs=2, log=log, progress=True)
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_specfm", False)]:
            root.removeHandler(h)
            h.close()
    text = (tmp_path / "logs" / "train.log").read_text()
    assert "epoch 0/2 train_loss=" in text and "epoch 1/2" in text and "val_loss=" in text
    assert "epochs" in capsys.readouterr().err  # the tqdm bar


def test_choose_device(monkeypatch):
    assert choose_device() == torch.device("cpu")  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "fake")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert choose_device(2) == torch.device("cuda", 1)
    assert choose_device(0) == torch.device("cpu")  # none granted: leave a visible GPU alone


def test_relaunch_under_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execvp", lambda file, args: calls.append((file, args)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for k in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    argv = ["-m", "specfm.stars.train", "--config", "c.yaml"]
    for n in (None, 0, 1):
        maybe_relaunch_with_torchrun(n, argv)
    assert calls == []
    maybe_relaunch_with_torchrun(2, argv)
    maybe_relaunch_with_torchrun(8, ["train.py", "-x"])  # only 4 visible
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert calls == [  # '--' keeps torchrun's argparse off the script's options
        (sys.executable, [*torchrun, "--nproc_per_node=2", "-m", "specfm.stars.train", "--",
                          "--config", "c.yaml"]),
        (sys.executable, [*torchrun, "--nproc_per_node=4", "train.py", "--", "-x"]),
    ]
    monkeypatch.setenv("LOCAL_RANK", "0")  # already under torchrun: no loop of relaunches
    maybe_relaunch_with_torchrun(2, argv)
    assert len(calls) == 2


def test_current_argv_module_form(monkeypatch):
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.spec_from_loader("specfm.stars.train", loader=None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/x/specfm/stars/train.py", "--a", "1"])
    assert train_dist.current_argv() == ["-m", "specfm.stars.train", "--a", "1"]


def test_world_size_one_is_noop(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() is False and not dist.is_initialized()
    assert world_size() == 1 and is_main_process()
    cleanup()


def test_ddp_gloo_world_size_one_matches_plain(tmp_path):
    """The DDP code path (wrapper, DistributedSampler, all-reduces) on CPU with one gloo process."""
    plain, _ = run(tmp_path / "plain", epochs=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp, res = run(tmp_path / "ddp", epochs=2)
        assert res.epochs_run == 2
    finally:
        cleanup()
    assert not isinstance(ddp, nn.parallel.DistributedDataParallel)  # the caller's module
    assert_same_weights(plain, ddp)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPECFM_TEST_TORCHRUN") != "1" and not os.environ.get("CI"),
                    reason="~35 s (three torchrun launches of two workers): always run in CI; "
                           "locally set SPECFM_TEST_TORCHRUN=1")
def test_torchrun_two_gloo_ranks_preempt_and_resume(tmp_path):
    """The real multi-process path on CPU: 2 ranks under torchrun (gloo), SIGTERM to the whole
    process group as SLURM sends it, resume, and compare with an uninterrupted 2-rank run."""
    def cmd(name, *extra):  # 960 training samples / 2 ranks / batch 4: 120 steps per epoch
        return train_dist.torchrun_command(2, [
            str(TOY), "--ckpt", str(tmp_path / f"ck_{name}"), "--out", str(tmp_path / f"{name}.pt"),
            "--log", str(tmp_path / f"{name}.log"), "--n", "1200", "--epochs", "2", *extra])

    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(cmd("run", "--summary", str(tmp_path / "s1.json"),
                                "--marker", str(marker), "--marker-after", "30"),
                            start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    state = load_latest(tmp_path / "ck_run")["state"]
    assert 30 <= state["epoch"] * 120 + state["step"] < 240 and not state["finished"]

    resume = subprocess.run(cmd("run", "--summary", str(tmp_path / "s2.json")), **quiet)
    # the reference runs alone: 4 gloo workers on 2 cores slow each other down a lot
    ref = subprocess.run(cmd("ref", "--summary", str(tmp_path / "ref.json")), **quiet)
    assert resume.returncode == 0 and ref.returncode == 0
    s2 = json.loads((tmp_path / "s2.json").read_text())
    s2_rank1 = json.loads((tmp_path / "s2.rank1.json").read_text())
    sref = json.loads((tmp_path / "ref.json").read_text())
    assert s2["resumed_from"] == s2_rank1["resumed_from"] == [state["epoch"], state["step"]]
    assert losses(s2["history"]) == losses(sref["history"])
    assert_same_weights(load_final(tmp_path / "run.pt")[0], load_final(tmp_path / "ref.pt")[0])


# -- multi-node launch under SLURM ---------------------------------------------------------

SLURM_JOB = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[007-008]",
             "SLURM_JOB_ID": "123456", "SLURM_PROCID": "1"}


def test_slurm_environment_maps_to_the_rendezvous():
    assert train_dist.slurm_rendezvous({}) is None  # not under SLURM
    assert train_dist.slurm_rendezvous({"SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "5"}) is None
    rdzv = train_dist.slurm_rendezvous(SLURM_JOB)
    assert rdzv == train_dist.SlurmRendezvous(nnodes=2, node_rank=1, master_addr="gpu007",
                                              port=29400 + 456, job_id="123456")
    assert rdzv.torchrun_args(4) == [
        "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu007:29856", "--rdzv_id=123456", "--rdzv_conf=is_host=false"]
    # task 0 hosts the store; the old variable names and an explicit port are read too
    old = train_dist.slurm_rendezvous({"SLURM_NNODES": "3", "SLURM_NODELIST": "a1,b[2-3]",
                                       "SLURM_JOBID": "7", "SLURM_PROCID": "0",
                                       "SPECFM_RDZV_PORT": "31000"})
    assert (old.nnodes, old.master_addr, old.endpoint) == (3, "a1", "a1:31000")
    assert old.torchrun_args(1)[-1] == "--rdzv_conf=is_host=true"
    with pytest.raises(RuntimeError, match="SLURM_JOB_NODELIST"):
        train_dist.slurm_rendezvous({"SLURM_JOB_NUM_NODES": "2"})


@pytest.mark.parametrize("nodelist, first", [
    ("node7", "node7"), ("gpu[003-004,010],cpu1", "gpu003"), ("a,b", "a"),
    ("n[12]", "n12"), ("r[1-2]-ib[3-4]", "r1-ib3"), ("x[08,02]", "x08")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert train_dist.first_host(nodelist) == first


def test_first_host_of_a_broken_node_list_is_a_named_error():
    with pytest.raises(ValueError, match="gpu\\[1-2"):
        train_dist.first_host("gpu[1-2")


def test_multi_node_relaunch_goes_srun_then_torchrun(monkeypatch):
    """Stage 1 (the job script on the first node) becomes srun with one task per node and a
    clean environment; stage 2 (each srun task) becomes a torchrun agent of the rendezvous."""
    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((args, env)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for k in ("LOCAL_RANK", "WORLD_SIZE", "SPECFM_SLURM_STEP", "SPECFM_DDP_ON_CPU",
              "SPECFM_RDZV_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_GPUS": "8",
                 "SLURM_CPUS_ON_NODE": "32", "SRUN_CPUS_PER_TASK": "4"}.items():
        monkeypatch.setenv(k, v)
    argv = ["train.py", "--x", "1"]
    with pytest.raises(ValueError, match="gpu=5 .* 2 nodes"):
        maybe_relaunch_with_torchrun(5, argv)
    maybe_relaunch_with_torchrun(8, argv)  # 8 = the job's total: 4 per node
    (cmd, env), = calls
    assert cmd == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                   "--kill-on-bad-exit=1", "--cpus-per-task=32", "--gpus-per-node=4",
                   sys.executable, *argv]
    assert env["SPECFM_SLURM_STEP"] == "123456" and env["SLURM_JOB_ID"] == "123456"
    assert not {"SLURM_NTASKS", "SLURM_GPUS", "SLURM_PROCID", "SRUN_CPUS_PER_TASK"} & set(env)

    monkeypatch.setenv("SPECFM_SLURM_STEP", "123456")  # now inside the srun step, task 1
    monkeypatch.setenv("SLURM_PROCID", "1")
    maybe_relaunch_with_torchrun(8, argv)
    cmd, env = calls[1]
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                   "--nproc_per_node=4", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu007:29856",
                   "--rdzv_id=123456", "--rdzv_conf=is_host=false", "train.py", "--", "--x", "1"]
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu007", "29856")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # fewer GPUs on this node
    with pytest.raises(RuntimeError, match="4 GPUs per node wanted, 2 visible"):
        maybe_relaunch_with_torchrun(8, argv)
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun: done
    maybe_relaunch_with_torchrun(8, argv)
    assert len(calls) == 2


FAKE_SRUN = '''#!{python}
"""srun for one machine: the tasks are local processes, each with its node's SLURM_* variables."""
import json, os, subprocess, sys
args, opts = sys.argv[1:], {{}}
while args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
with open(os.environ["FAKE_SRUN_LOG"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "slurm_env": sorted(k for k in os.environ if k.startswith("SLURM_"))}}, f)
n = int(opts["ntasks"])
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_NODEID": str(i),
                                      "SLURM_LOCALID": "0", "SLURM_JOB_NUM_NODES": opts["nodes"],
                                      "SLURM_JOB_NODELIST": "localhost,localhost"}})
         for i in range(n)]
sys.exit(max(p.wait() for p in procs))
'''


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPECFM_TEST_TORCHRUN") != "1" and not os.environ.get("CI"),
                    reason="~30 s (two torchrun agents, two ranks, four stream workers): always "
                           "run in CI; locally set SPECFM_TEST_TORCHRUN=1")
def test_two_cpu_ranks_over_two_slurm_nodes_through_the_launcher(tmp_path):
    """The job-script path of a 2-node SLURM job on one CPU machine: the launcher becomes (fake)
    srun, its two tasks become torchrun agents meeting at the c10d rendezvous, and the two gloo
    ranks stream one epoch with 2 workers each: every training row once, none twice."""
    import numpy as np
    import pandas as pd

    ids = np.arange(1, 201, dtype=np.int64) * 1_000_003
    split = np.where(np.arange(200) % 7 == 0, "val", "train")
    pd.DataFrame({"source_id": ids, "x": np.linspace(-1, 1, 200), "split": split}).to_parquet(
        tmp_path / "t.parquet", row_group_size=30)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "srun").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK") and not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_NODELIST="localhost,localhost", SLURM_JOB_ID="4242", SLURM_NTASKS="8",
               SPECFM_RDZV_PORT=str(port), SPECFM_DDP_ON_CPU="1",
               FAKE_SRUN_LOG=str(tmp_path / "srun.json"))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_launch_toy.py")),
                           "--gpus", "2", "--table", str(tmp_path / "t.parquet"),
                           "--ckpt", str(tmp_path / "ck"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    srun = json.loads((tmp_path / "srun.json").read_text())
    assert srun["argv"][:5] == ["--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                                "--kill-on-bad-exit=1"]
    assert "SLURM_NTASKS" not in srun["slurm_env"] and "SLURM_JOB_ID" in srun["slurm_env"]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["rank_sum"]) for r in ranks] == [(0, 2, 1.0), (1, 2, 1.0)]
    assert sorted(r["slurm_procid"] for r in ranks) == ["0", "1"]  # one rank per (fake) node
    read = ranks[0]["ids"] + ranks[1]["ids"]
    assert len(read) == len(set(read)) and set(read) == set(ids[split == "train"].tolist())
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[0]["steps_run"] == ranks[1]["steps_run"]
