"""A split too large for memory is spilled to memory-mapped files: same tensors, same weights, and the
spill is gone once training has finished."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from specfm.redshift.spectra import SpectraWriter
from specfm.redshift.training import _tensors, train_autoencoder
from specfm.train import checkpoint_dir_for, load_final

N_PIX = 1000
ARCH = {"channels": [4, 8, 8], "pool": 4, "d_model": 16, "n_heads": 8, "n_layers": 1, "n_dec_layers": 1}


@pytest.fixture
def spectra(tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    flux = rng.normal(1.0, 0.3, (n, N_PIX)).astype("f4")
    ivar = np.where(rng.random((n, N_PIX)) < 0.1, 0.0, 4.0).astype("f4")
    meta = {"z": rng.uniform(0.0, 1.5, n), "hash_u": rng.random(n),
            "split": np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10)}
    path = tmp_path / "s_spectra.h5"
    with SpectraWriter(path, np.linspace(3600.0, 9800.0, N_PIX)) as w:
        w.append(flux, ivar, meta)
    return path


@pytest.mark.parametrize("with_z", [False, True])
def test_a_spilled_split_holds_the_tensors_of_the_in_memory_one(spectra, tmp_path, with_z):
    rows = np.array([41, 3, 17, 0, 39, 22])
    cpu = torch.device("cpu")
    held = _tensors(spectra, rows, cpu, with_z=with_z, data={"in_memory_mb": 4000}, spill_dir=tmp_path / "a")
    spilled = _tensors(spectra, rows, cpu, with_z=with_z, data={"in_memory_mb": 0}, spill_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and len(list((tmp_path / "b").glob("*.npy"))) == 2
    for a, b in zip(held.tensors, spilled.tensors):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_training_on_a_spilled_split_gives_the_same_weights_and_removes_the_spill(spectra, tmp_path, monkeypatch,
                                                                                  caplog):
    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    caplog.set_level(logging.INFO, logger="specfm.redshift.training")
    tcfg = {"epochs": 2, "patience": 2, "batch_size": 16, "lr": 1e-3}
    weights = []
    for name, limit in (("held", 4000), ("spilled", 0)):
        out = tmp_path / f"{name}.pt"
        train_autoencoder(spectra, out, arch=ARCH, tcfg={**tcfg, "data": {"in_memory_mb": limit}}, seed=5,
                          threads=1)
        assert not (checkpoint_dir_for(out) / "spill").exists()
        assert ("spilled to" in caplog.text) == (limit == 0)
        weights.append(load_final(out)[0])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
