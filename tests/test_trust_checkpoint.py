"""Checkpoints load with torch.load(weights_only=True): a file in results/checkpoints/ cannot run code
in the next training job, and the state the loop needs (optimizer, scheduler, RNG) still round-trips."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch

from specfm.train import (fit, get_rng_state, load_latest, save_checkpoint, seed_everything,
                          set_rng_state)
from specfm.train.checkpoint import LAST, CheckpointError


class _Payload:
    """Unpickling this object calls Path.touch(marker): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_with_a_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"fingerprint": "x", "state": {"finished": False}, "evil": _Payload(marker)},
               tmp_path / LAST)
    with pytest.raises(CheckpointError) as info:
        load_latest(tmp_path)
    assert not marker.exists()  # nothing was executed
    msg = str(info.value)
    assert str(tmp_path / LAST) in msg and "weights_only" in msg and "\n" not in msg


def test_fit_checkpoint_loads_with_weights_only(tmp_path):
    """The loop's last.pt (RNG states of python, numpy and torch, Adam, ReduceLROnPlateau) is plain data."""
    seed_everything(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    data = torch.utils.data.TensorDataset(x, y)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    fit(model, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), data, data, optimizer=opt,
        scheduler=sched, max_epochs=2, patience=None, checkpoint_dir=tmp_path, seed=1, batch_size=16,
        device="cpu", progress=False)
    raw = torch.load(tmp_path / LAST, weights_only=True)  # raises if anything is not plain data
    assert raw["state"]["epoch"] == 2
    assert load_latest(tmp_path)["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]


def test_numpy_and_rng_state_round_trip(tmp_path):
    seed_everything(3)
    state = {"rng": get_rng_state(), "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
             "scalar": np.float64(2.5), "nested": [{"t": (1, 2.0, "a")}]}
    save_checkpoint(state, tmp_path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    back = load_latest(tmp_path)
    assert back["arr"].dtype == np.float32 and np.array_equal(back["arr"], state["arr"])
    assert back["scalar"] == 2.5 and back["nested"] == [{"t": (1, 2.0, "a")}]
    set_rng_state(back["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unsupported_state_is_named_at_save_time(tmp_path):
    with pytest.raises(TypeError) as info:
        save_checkpoint({"scheduler": {"fn": lambda step: 1.0}}, tmp_path)
    assert "scheduler.fn" in str(info.value)
    assert not (tmp_path / LAST).exists()
