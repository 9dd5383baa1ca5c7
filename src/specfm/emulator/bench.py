"""Throughput: spectra per second of each trained emulator on this machine, full grid, batched."""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for the queued work, or the clock measures only launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spectra_per_second(emu, n_labels: int, *, batch: int = 64, min_seconds: float = 1.0,
                       seed: int = 0, device=None) -> dict:
    """Full-grid predictions of `batch` random label sets, repeated for at least `min_seconds`,
    on `device` (default: the emulator's)."""
    device = torch.device(device) if device is not None else emu.lo.device
    emu = emu.to(device)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n_labels, generator=gen) - 0.5).to(device)
    emu.eval()
    with torch.inference_mode():
        emu.predict(x, batch=batch)  # warm-up
        _sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            emu.predict(x, batch=batch)
            _sync(device)
            n += batch
        seconds = time.perf_counter() - start
    return {"spectra_per_second": n / seconds, "batch": batch, "spectra": n, "seconds": seconds,
            "n_wave": int(len(emu.wavelength)), "threads": torch.get_num_threads(),
            "device": str(device)}
