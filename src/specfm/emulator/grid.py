"""The one HDF5 layout every grid kind is written to, its validating reader, splits and filters.

Layout (format attribute ``specfm-emulator-grid-v1``), n spectra of m pixels and k labels:

    /ids          (n,)   str      unique spectrum ids
    /labels       (n, k) float64  attrs names (k str), units (k str); NaN = label unknown
    /wavelength   (m,)   float64  strictly increasing; attrs unit ("Angstrom"), medium ("air"/"vacuum")
    /flux         (n, m) float32  continuum-normalised flux
    /flux_error   (n, m) float32  optional: 1-sigma error of /flux (inf = masked pixel); attr kind
    /pixel_mask   (n, m) bool     optional: True where the pixel was bad and interpolated over
    /status       (n,)   str      "ok", or why the spectrum is not used (missing_labels, bad_pixels)
    /split        (n,)   str      train / val / test from a stable hash of the id; "excluded" if not ok
    attrs: format, kind, counts (JSON), window (2 floats), medium, sampling ("native" or n pixels
           uniform in ln(lambda), specfm.emulator.resample); kind phoenix also medium_conversion
           and source_flux_unit

A user's grid (kind ``hdf5``) needs /ids, /labels (+ names, units), /wavelength, /flux and may have
/flux_error; the grid rule windows, (optionally) normalises and splits it into this layout. The
other kinds read into the same Grid first: ``fits`` (specfm.emulator.fits_grid), ``phoenix``
(specfm.emulator.phoenix), ``miles`` (specfm.emulator.miles).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from specfm.io import atomic_path

FORMAT = "specfm-emulator-grid-v1"
SPLITS = ("train", "val", "test")


class GridError(ValueError):
    """A grid file or grid setting that cannot be used; the message names the file or key."""


@dataclass
class Grid:
    ids: np.ndarray          # (n,) str
    labels: np.ndarray       # (n, k)
    label_names: list[str]
    label_units: list[str]
    wavelength: np.ndarray   # (m,)
    flux: np.ndarray         # (n, m)
    flux_error: np.ndarray | None = None   # (n, m)
    pixel_mask: np.ndarray | None = None   # (n, m) bool
    status: np.ndarray | None = None       # (n,) str
    split: np.ndarray | None = None        # (n,) str
    attrs: dict = field(default_factory=dict)

    def rows(self, split: str) -> np.ndarray:
        """Indices of the spectra of one split, in file order."""
        return np.flatnonzero(self.split == split)

    def label_index(self, name: str, where: str = "label") -> int:
        if name not in self.label_names:
            raise GridError(f"{where}: unknown label {name!r}; the grid has {self.label_names}")
        return self.label_names.index(name)


HDF5_NAMES = {"ids": "/ids", "labels": "/labels", "wavelength": "/wavelength", "flux": "/flux",
              "flux_error": "/flux_error"}


def validate(grid: Grid, source: str, names: dict = HDF5_NAMES) -> Grid:
    """Refuse inconsistent grids with an error naming `source` and the problem (`names`: what the
    file calls each part, e.g. the FITS grid's extensions)."""
    n, m = len(grid.ids), len(grid.wavelength)
    ids, lab, wave, flux, ferr = (names[k] for k in ("ids", "labels", "wavelength", "flux", "flux_error"))
    if grid.labels.ndim != 2 or grid.labels.shape[0] != n:
        raise GridError(f"{source}: {lab} has {grid.labels.shape[0]} rows but {ids} has {n}")
    if grid.flux.shape != (n, m):
        raise GridError(f"{source}: {flux} has shape {grid.flux.shape}, expected (n_ids={n}, n_wave={m})"
                        " (labels and fluxes of different lengths?)")
    if len(grid.label_names) != grid.labels.shape[1] or len(grid.label_units) != grid.labels.shape[1]:
        raise GridError(f"{source}: {lab} names/units must list {grid.labels.shape[1]} entries")
    if not np.all(np.diff(grid.wavelength) > 0):
        bad = int(np.argmax(np.diff(grid.wavelength) <= 0))
        raise GridError(f"{source}: {wave} is not strictly increasing (at index {bad + 1})")
    uniq, counts = np.unique(grid.ids, return_counts=True)
    if (counts > 1).any():
        raise GridError(f"{source}: duplicated ids in {ids}: {list(uniq[counts > 1][:5])}")
    if grid.flux_error is not None and grid.flux_error.shape != (n, m):
        raise GridError(f"{source}: {ferr} has shape {grid.flux_error.shape}, expected {(n, m)}")
    usable = np.ones(n, bool) if grid.status is None else grid.status == "ok"
    bad_rows = np.flatnonzero(usable & ~np.isfinite(grid.flux).all(axis=1))
    if bad_rows.size:
        raise GridError(f"{source}: NaN/inf flux in {bad_rows.size} spectra (first id "
                        f"{grid.ids[bad_rows[0]]!r}); mark them or fix the file")
    return grid


def stable_split(ids, val: float, test: float) -> np.ndarray:
    """train / val / test from sha256(id): a spectrum keeps its split when the grid grows."""
    u = np.array([int(hashlib.sha256(str(i).encode()).hexdigest()[:12], 16) / 16 ** 12 for i in ids])
    return np.where(u < test, "test", np.where(u < test + val, "val", "train")).astype(object)


def write(grid: Grid, path) -> None:
    """Write `grid` atomically in the layout above."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = FORMAT
        for k, v in grid.attrs.items():
            h5.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        str_dt = h5py.string_dtype()
        h5.create_dataset("ids", data=np.asarray(grid.ids, dtype=object), dtype=str_dt)
        lab = h5.create_dataset("labels", data=grid.labels.astype(np.float64))
        lab.attrs["names"], lab.attrs["units"] = list(grid.label_names), list(grid.label_units)
        w = h5.create_dataset("wavelength", data=grid.wavelength.astype(np.float64))
        w.attrs["unit"] = grid.attrs.get("wavelength_unit", "Angstrom")
        w.attrs["medium"] = grid.attrs.get("medium", "air")
        h5.create_dataset("flux", data=grid.flux.astype(np.float32))
        if grid.flux_error is not None:
            e = h5.create_dataset("flux_error", data=grid.flux_error.astype(np.float32))
            e.attrs["kind"] = grid.attrs.get("flux_error_kind", "given")
        if grid.pixel_mask is not None:
            h5.create_dataset("pixel_mask", data=grid.pixel_mask.astype(bool))
        for name in ("status", "split"):
            h5.create_dataset(name, data=np.asarray(getattr(grid, name), dtype=object), dtype=str_dt)


def _strings(ds) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]], dtype=object)


def read(path, *, require_split: bool = True) -> Grid:
    """A grid file (ours, or a user's with the required datasets), validated."""
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise GridError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        missing = [k for k in ("ids", "labels", "wavelength", "flux") if k not in h5]
        if missing:
            raise GridError(f"{path}: missing datasets {missing} (see specfm.emulator.grid)")
        lab = h5["labels"]
        if "names" not in lab.attrs:
            raise GridError(f"{path}: /labels needs attrs 'names' (and 'units')")
        names = [str(s) for s in lab.attrs["names"]]
        units = [str(s) for s in lab.attrs.get("units", [""] * len(names))]
        opt = {k: h5[k][()] for k in ("flux_error", "pixel_mask") if k in h5}
        grid = Grid(ids=_strings(h5["ids"]), labels=lab[()].astype(np.float64), label_names=names,
                    label_units=units, wavelength=h5["wavelength"][()].astype(np.float64),
                    flux=h5["flux"][()], flux_error=opt.get("flux_error"), pixel_mask=opt.get("pixel_mask"),
                    status=_strings(h5["status"]) if "status" in h5 else None,
                    split=_strings(h5["split"]) if "split" in h5 else None,
                    attrs={k: _attr(v) for k, v in h5.attrs.items()})
    if require_split and grid.split is None:
        raise GridError(f"{path}: no /split dataset (build the grid with the emulator_grid rule)")
    return validate(grid, str(path))


def _attr(v):
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.tolist() if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)


def domain_rows(grid: Grid, rows: np.ndarray, domain: dict, key: str) -> np.ndarray:
    """The rows whose labels lie inside every [lo, hi] box of `domain` ({label: [lo, hi]})."""
    keep = np.ones(len(rows), bool)
    for name, (lo, hi) in domain.items():
        v = grid.labels[rows, grid.label_index(name, f"{key}.{name}")]
        keep &= (v >= lo) & (v <= hi)
    if not keep.any():
        raise GridError(f"{key}: the domain {domain} selects no spectrum of the {len(rows)} candidates")
    return rows[keep]


def training_rows(grid: Grid, size, seed: int, key: str = "emulator.sizes") -> np.ndarray:
    """The first `size` training spectra of a seeded permutation: smaller sets nest in larger ones."""
    rows = grid.rows("train")
    n = len(rows) if size == "all" else int(size)
    if n > len(rows):
        raise GridError(f"{key}: training size {n} is larger than the training split "
                        f"({len(rows)} spectra)")
    if n < 1:
        raise GridError(f"{key}: training size must be at least 1, got {n}")
    return np.sort(rows[np.random.default_rng(seed).permutation(len(rows))[:n]])
