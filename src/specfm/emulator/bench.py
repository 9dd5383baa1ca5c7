"""Throughput: spectra per second of each trained emulator on this machine, full grid, batched."""

from __future__ import annotations

import time

import torch


def spectra_per_second(emu, n_labels: int, *, batch: int = 64, min_seconds: float = 1.0,
                       seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_labels, generator=gen) - 0.5
    emu.eval()
    with torch.inference_mode():
        emu.predict(x, batch=batch)  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            emu.predict(x, batch=batch)
            n += batch
        seconds = time.perf_counter() - start
    return {"spectra_per_second": n / seconds, "batch": batch, "spectra": n, "seconds": seconds,
            "n_wave": int(len(emu.wavelength)), "threads": torch.get_num_threads()}
