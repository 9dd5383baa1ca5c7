"""The four emulators' shapes, TransformerPayne's sinusoidal frequencies, MAQE_0.95, the warm-up +
cosine schedule, a resumable training run, and label inference through a tiny trained emulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specfm.emulator import grid as G
from specfm.emulator.inference import fit_labels, summarise
from specfm.emulator.models import Emulator, build_network, tp_periods
from specfm.emulator.schedule import WarmupCosine
from specfm.emulator.scores import maqe, scores
from specfm.emulator.transformer_payne import frequencies

WAVE = np.linspace(4000.0, 5000.0, 101)
ARCH = {"payne": {"widths": [16, 16]}, "bigpayne": {"widths": [32, 32, 32]},
        "conv": {"widths": [16], "channels": 2, "length0": 13, "n_up": 3, "up_features": 4, "conv_features": 4},
        "transformer_payne": {"d": 16, "tokens": 4, "blocks": 2, "heads": 2, "line_fwhm": 2.5}}


@pytest.mark.parametrize("name", sorted(ARCH))
def test_every_emulator_maps_labels_to_the_grid_and_to_chosen_pixels(name):
    emu = Emulator(name, ARCH[name], WAVE, np.ones(101), [3.6, 0, -2], [3.8, 5, 0.5], [True, False, False])
    x = torch.rand(5, 3) - 0.5
    assert emu(x).shape == (5, 101)
    idx = torch.randint(0, 101, (5, 7))
    assert emu(x, idx).shape == (5, 7)
    assert torch.allclose(emu(x, idx), torch.gather(emu(x), 1, idx), atol=1e-5)
    assert emu.predict(x, batch=2, chunk=64).shape == (5, 101)
    assert torch.allclose(emu.predict(x, batch=2, chunk=64), emu(x), atol=1e-5)


def test_label_scaling_round_trips_with_log_teff():
    emu = Emulator("payne", ARCH["payne"], WAVE, np.ones(101), [np.log10(4000), 0], [np.log10(8000), 5],
                   [True, False])
    lab = torch.tensor([[4000.0, 0.0], [8000.0, 5.0], [math.sqrt(4000 * 8000), 2.5]])
    assert torch.allclose(emu.scale(lab), torch.tensor([[-0.5, -0.5], [0.5, 0.5], [0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(emu.unscale(emu.scale(lab)), lab, rtol=1e-5)


def test_sinusoidal_frequencies_span_the_window_down_to_the_line_width():
    min_p, max_p = tp_periods(WAVE, {"line_fwhm": 2.5})
    assert max_p == pytest.approx(math.log10(5000 / 4000))  # slowest sine: once over the window
    assert min_p == pytest.approx(2.5 / (5000 * math.log(10)) / 2)  # fastest: half a line FWHM
    om = frequencies(8, min_p, max_p)
    assert om[0] == pytest.approx(2 * math.pi / max_p, rel=1e-6)
    assert om[-1] == pytest.approx(2 * math.pi / min_p, rel=1e-6)
    ratios = (om[1:] / om[:-1]).numpy()
    assert np.allclose(ratios, ratios[0])  # log-spaced
    net = build_network("transformer_payne", {"d": 8, "tokens": 2, "blocks": 1, "heads": 2, "line_fwhm": 2.5},
                        3, WAVE)
    assert torch.allclose(net.omega, om)


def test_paper_sizes_have_the_papers_parameter_counts():
    wave = np.linspace(4000, 5000, 22315)
    counts = {name: sum(p.numel() for p in build_network(name, {"line_fwhm": 2.5} if name == "transformer_payne"
                                                         else {}, 98, wave).parameters())
              for name in ("payne", "bigpayne", "conv", "transformer_payne")}
    assert 2.5e6 < counts["payne"] < 3.5e6          # paper: ~3 M
    assert 50e6 < counts["bigpayne"] < 58e6         # ~54 M
    assert 8e6 < counts["conv"] < 10e6              # ~9 M
    assert 14e6 < counts["transformer_payne"] < 20e6  # ~17 M


def test_maqe_is_the_mean_of_the_largest_five_percent():
    err = np.arange(1, 101, dtype=float)  # by hand: top 5 of 1..100 = 96..100, mean 98
    assert maqe(err) == 98.0
    assert maqe(-err[::-1].reshape(10, 10) * -1) == 98.0
    assert maqe(np.array([3.0, 1.0])) == 3.0  # at least one value
    s = scores(np.full((2, 3), 1.5), np.ones((2, 3)), err=np.full((2, 3), 0.25))
    assert s["mse"] == 0.25 and s["mae"] == 0.5 and s["chi2_per_pixel"] == 4.0


def test_warmup_then_cosine():
    f = WarmupCosine(100, 0.1)
    assert [f(0), f(5), f(10)] == [0.0, 0.5, 1.0]
    assert f(55) == pytest.approx(0.5)
    assert f(100) == 0.0 and f(150) == 0.0
    assert f(32.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def toy_grid(tmp_path, n=120):
    """Gaussian lines whose depth and width follow two labels: an emulator can learn it in seconds."""
    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 4100, 80)
    lab = np.column_stack([rng.uniform(4000, 6000, n), rng.uniform(1, 5, n)])
    depth = 0.2 + 0.6 * (lab[:, :1] - 4000) / 2000
    width = 1.0 + 0.5 * lab[:, 1:2]
    flux = 1 - depth * np.exp(-0.5 * ((wave - 4050) / width) ** 2)
    g = G.Grid(ids=np.array([f"t{i}" for i in range(n)], dtype=object), labels=lab, label_names=["teff", "logg"],
               label_units=["K", "dex"], wavelength=wave, flux=flux.astype(np.float32),
               flux_error=np.full(flux.shape, 0.01, np.float32), pixel_mask=np.zeros(flux.shape, bool),
               status=np.array(["ok"] * n, dtype=object), split=G.stable_split([f"t{i}" for i in range(n)], 0.15, 0.15),
               attrs={"counts": {}})
    path = tmp_path / "grid.h5"
    G.write(g, path)
    return path


def train(tmp_path, path, model="payne", steps=400, out=None, eval_every=100, **kw):
    from specfm.emulator.training import train_emulator

    arch = {"payne": {"widths": [32, 32]}, "transformer_payne": {"d": 16, "tokens": 4, "blocks": 1, "heads": 2,
                                                                  "line_fwhm": 2.0}}[model]
    opt = {"steps": steps, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "warmup": 0.1,
           "eval_every": eval_every, "n_wave_train": 32, "val_batch_size": 32}
    out = out or tmp_path / f"{model}.pt"
    summary = train_emulator(path, out, model=model, arch=arch, train=opt, mode="scratch", size="all", seed=1,
                             subset_seed=2, log_labels=[], progress=False, threads=1, **kw)
    return out, summary


def test_training_beats_the_mean_and_inference_recovers_the_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    from specfm.emulator.training import load_emulator

    path = toy_grid(tmp_path)
    out, summary = train(tmp_path, path, steps=800)
    assert summary["steps"] == 800 and len(summary["history"]) == 8
    assert all("maqe_0.95" in h for h in summary["history"])
    g = G.read(path)
    val = g.rows("val")
    mean_mse = float(((g.flux[val] - g.flux[g.rows("train")].mean(0)) ** 2).mean())
    assert summary["best_val_mse"] < 0.1 * mean_mse
    emu, meta = load_emulator(out)
    train_rows = g.rows("train")[:4]  # spectra the emulator was trained on
    fitted, mse, seconds = fit_labels(emu, g.flux[train_rows], np.ones(g.flux[train_rows].shape, np.float32),
                                      restarts=8, steps=500, lr=0.05, clip=10.0, warmup=0.1, seed=0)
    true = g.labels[train_rows]
    assert np.all(np.abs(fitted[:, 0] - true[:, 0]) < 150), (fitted, true)  # of a 2000 K range
    assert np.all(np.abs(fitted[:, 1] - true[:, 1]) < 0.3), (fitted, true)  # of a 4 dex range
    s = summarise(true, fitted, ["teff", "logg"])
    assert s["teff"]["n"] == 4 and s["teff"]["scatter"] < 150 and seconds > 0


def spy_on_training(monkeypatch, kill_at=None):
    """Record the pixel indices TransformerPayne is asked for in each training step (the loss's
    `model(x, pix)` call) and, at training step `kill_at`, send SIGTERM as a scheduler would."""
    import os
    import signal

    from specfm.emulator import training

    pixels, forward = [], Emulator.forward

    def spy_forward(self, x, idx=None):
        if self.training:
            pixels.append(None if idx is None else idx.detach().clone())
            if kill_at is not None and len(pixels) == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)  # fit checkpoints at the batch boundary
        return forward(self, x, idx)

    monkeypatch.setattr(training.Emulator, "forward", spy_forward)
    return pixels


def test_transformer_payne_trains_on_random_pixels_and_resumes(tmp_path, monkeypatch):
    """A run stopped by SIGTERM mid-epoch and rerun ends with the same weights as an uninterrupted
    run of the same seed; every training step sees n_wave_train (32) distinct random pixels of
    each spectrum, not the whole grid (80) and not the same pixels every step."""
    from specfm.train import Preempted, load_final

    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    path = toy_grid(tmp_path, n=60)
    kw = {"model": "transformer_payne", "steps": 60, "eval_every": 20}
    pixels = spy_on_training(monkeypatch)
    _, a = train(tmp_path, path, out=tmp_path / "straight.pt", **kw)
    assert len(pixels) == 60 and all(p is not None and p.shape == (16, 32) for p in pixels)
    assert all(len(set(row.tolist())) == 32 for p in pixels for row in p)  # no pixel twice
    assert 0 <= min(int(p.min()) for p in pixels) and max(int(p.max()) for p in pixels) < 80
    assert not torch.equal(pixels[0], pixels[1])  # drawn afresh each step
    assert np.isfinite(a["best_val_mse"])

    spy_on_training(monkeypatch, kill_at=30)  # mid-epoch 1 (20 steps per epoch)
    with pytest.raises(Preempted):
        train(tmp_path, path, out=tmp_path / "resumed.pt", **kw)
    assert not (tmp_path / "resumed.pt").exists()
    rest = spy_on_training(monkeypatch)
    _, b = train(tmp_path, path, out=tmp_path / "resumed.pt", **kw)
    assert len(rest) == 30  # resumed at step 30: no step repeated or skipped
    assert [h["val_loss"] for h in b["history"]] == [h["val_loss"] for h in a["history"]]
    straight, resumed = load_final(tmp_path / "straight.pt")[0], load_final(tmp_path / "resumed.pt")[0]
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_a_training_size_larger_than_the_split_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFM_CHECKPOINT_DIR", str(tmp_path / "ck"))
    from specfm.emulator.training import train_emulator

    path = toy_grid(tmp_path, n=30)
    with pytest.raises(G.GridError, match="training size 500 is larger than the training split"):
        train_emulator(path, tmp_path / "x.pt", model="payne", arch={"widths": [4]},
                       train={"steps": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0, "warmup": 0.1,
                              "eval_every": 1, "val_batch_size": 2}, mode="scratch", size=500, seed=0,
                       subset_seed=0, progress=False)


def test_inference_batches_give_the_same_fits_as_one_pass():
    """Fits are independent (Adam elementwise, clipping per fit): the batch size changes memory,
    not results."""
    torch.manual_seed(0)
    emu = Emulator("payne", ARCH["payne"], WAVE, np.ones(101), [4000, 1], [6000, 5], [False, False])
    flux = emu(torch.rand(3, 2) - 0.5).detach().numpy()
    kw = {"restarts": 4, "steps": 20, "lr": 0.05, "clip": 1.0, "warmup": 0.1, "seed": 3}
    whole = fit_labels(emu, flux, np.ones(flux.shape, np.float32), batch=12, device="cpu", **kw)
    parts = fit_labels(emu, flux, np.ones(flux.shape, np.float32), batch=5, **kw)
    assert np.allclose(whole[0], parts[0], rtol=1e-5) and np.allclose(whole[1], parts[1], rtol=1e-4, atol=1e-9)
    assert whole[0].shape == (3, 2) and whole[1].shape == (3,)
