"""The spectra file of a sample: one wavelength grid, chunked HDF5, appended batch by batch.

Layout: /wave [P] (Angstrom, vacuum), /flux and /ivar [N, P] float32 (median-normalised; ivar 0 =
masked), chunked by rows so a reader takes a few hundred spectra at a time and a full EDR sample
(~500k x 7,781 px) is never in memory at once; /meta/<column> [N] per-spectrum columns (targetid,
z (truth or catalogue; NaN if unknown), split, hash_u, population, snr, norm, n_masked, ...).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from specfm.io import atomic_path

STRING_COLUMNS = {"split", "population", "spectype_cat", "source_file"}


class SpectraWriter:
    """Context manager: append (flux, ivar, meta) batches; the file appears atomically on success."""

    def __init__(self, path, wave: np.ndarray, *, attrs: dict | None = None, chunk_rows: int = 256):
        self.path, self.wave, self.attrs, self.chunk_rows = Path(path), np.asarray(wave), attrs or {}, chunk_rows
        self.n = 0

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self.h5 = h5py.File(tmp, "w")
        self.h5["wave"] = self.wave
        p = self.wave.size
        for name in ("flux", "ivar"):
            self.h5.create_dataset(name, shape=(0, p), maxshape=(None, p), dtype="f4",
                                   chunks=(self.chunk_rows, p), compression="lzf")
        self.meta = self.h5.create_group("meta")
        for k, v in self.attrs.items():
            self.h5.attrs[k] = v
        return self

    def append(self, flux: np.ndarray, ivar: np.ndarray, meta: dict) -> None:
        b = flux.shape[0]
        if b == 0:
            return
        for name, arr in (("flux", flux), ("ivar", ivar)):
            ds = self.h5[name]
            ds.resize(self.n + b, axis=0)
            ds[self.n:] = arr.astype("f4")
        for col, values in meta.items():
            values = np.asarray(values)
            if col in STRING_COLUMNS:
                values = values.astype("S")
            if col not in self.meta:
                dtype = h5py.string_dtype() if col in STRING_COLUMNS else values.dtype
                self.meta.create_dataset(col, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
            ds = self.meta[col]
            ds.resize(self.n + b, axis=0)
            ds[self.n:] = values
        self.n += b

    def __exit__(self, exc_type, exc, tb):
        self.h5.attrs["n_spectra"] = self.n
        self.h5.close()
        return self._atomic.__exit__(exc_type, exc, tb)


def read_meta(path) -> dict:
    """Every /meta column as a numpy array (strings decoded) + 'wave' + the file attributes as 'attrs'."""
    with h5py.File(path, "r") as h5:
        out = {}
        for col, ds in h5["meta"].items():
            v = ds[:]
            out[col] = v.astype(str) if col in STRING_COLUMNS else v
        out["wave"] = h5["wave"][:]
        out["attrs"] = dict(h5.attrs)
    return out


def read_rows(path, rows: np.ndarray, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar) of the given row numbers (sorted reads in chunks, returned in the asked order)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows)
    srt = rows[order]
    with h5py.File(path, "r") as h5:
        p = h5["wave"].size
        flux, ivar = np.empty((rows.size, p), "f4"), np.empty((rows.size, p), "f4")
        for s in range(0, srt.size, chunk):
            sel = srt[s:s + chunk]
            flux[order[s:s + chunk]] = h5["flux"][sel]
            ivar[order[s:s + chunk]] = h5["ivar"][sel]
    return flux, ivar


def model_input(flux: np.ndarray, ivar: np.ndarray, clip: float = 20.0) -> np.ndarray:
    """What the networks see: normalised flux, masked pixels 0, clipped to [-clip, clip] so a
    cosmic or a noise spike cannot dominate a batch."""
    return np.clip(np.where(ivar > 0, flux, 0.0), -clip, clip).astype("f4")
