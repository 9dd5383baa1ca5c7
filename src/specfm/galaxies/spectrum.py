"""One 1-D galaxy spectrum as the readers hand it on (`single` for files and tables, `manga` for
MaNGA-format rows), in its own module so both readers use it without importing each other."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .preprocessing import vacuum_to_air

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spectrum:
    name: str  # file name, with [row] when the file holds several
    wave: np.ndarray  # [n] Angstrom, observed frame, AIR (converted if the input was vacuum)
    flux: np.ndarray  # [n] float32, NaN = masked
    var: np.ndarray  # [n] float32 variance, NaN = masked
    frame: str  # "air" or "vacuum" (the input's; wave is air either way)
    path: str = ""


def air_wavelengths(wave, frame: str, name: str) -> np.ndarray:
    """``wave`` in air (converted from vacuum when ``frame`` says so), checked finite and increasing;
    errors name the spectrum ``name``."""
    wave = np.asarray(wave, dtype=float)
    if frame == "vacuum":
        log.info("%s: vacuum wavelengths converted to air (Ciddor 1996)", name)
        wave = vacuum_to_air(wave)
    if wave.ndim != 1 or wave.size < 2 or np.any(~np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
        raise ValueError(f"{name}: wavelengths are not a finite, increasing 1-D array")
    return wave


__all__ = ["Spectrum", "air_wavelengths"]
