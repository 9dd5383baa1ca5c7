"""A declared source that is a grid of files (``kind: http_grid``): one file per grid point.

A synthetic library such as PHOENIX-ACES (Husser et al. 2013) is thousands of files, one per
(Teff, log g, [Fe/H], [alpha/M]) point, plus one wavelength file. The config declares the mirrors
(`urls`, tried in order), the `wavelength_file`, a `pattern` for one point's path under a mirror and
a `subset` (a list of boxes; each box gives every axis as a list of values or a
``{start, stop, step}`` range, both ends included; the subset is the union of the boxes' products).
Each file is fetched on its own by `fetch.http.download` to ``resources/archives/NAME/FILENAME``
and its sha256 recorded, trust on first use, in the lock under ``NAME/FILENAME`` (FILENAME is the
pattern's last path part, unique per point), so every later fetch, on any machine, must reproduce it.

The placeholders of `pattern` are written the PHOENIX way (the only layout so far), e.g. for
Teff 5800, log g 4.5, [Fe/H] 0, [alpha/M] +0.2:
``{teff}`` 05800, ``{logg}`` 4.50, ``{feh}`` -0.0 (zero is written -0.0; else a sign and one decimal,
+0.5, -1.0), ``{alpha}`` .Alpha=+0.20 (empty for 0.0).
How sure: the folder ``Z-0.0`` / ``Z+0.5`` and ``lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``
under ``https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/PHOENIX-ACES-AGSS-COND-2011/``
and ``.../HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``: sure (the same spelling in many
independent public download scripts). The alpha part ``.Alpha=+0.20`` / ``.Alpha=-0.20`` in both the
folder (``Z-0.0.Alpha=+0.20``) and the file name: fairly sure (several scripts agree, one writes it
without the sign, which would not match the others). Not every point exists upstream (alpha != 0 only
for roughly 3500 <= Teff <= 8000 K and -3 <= [Fe/H] <= 0; hot models lack the lowest log g): a missing
point is a FetchError (HTTP 404) naming its URL; leave it out of the subset.
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from .http import download
from .lock import ChecksumLock

log = logging.getLogger(__name__)

AXES = ("teff", "logg", "feh", "alpha")
_NAME = re.compile(r"lte(?P<teff>\d{5})-(?P<logg>\d\.\d\d)(?P<feh>[+-]\d\.\d)"
                   r"(?:\.Alpha=(?P<alpha>[+-]\d\.\d\d))?\.")


def axis_values(spec, where: str) -> list[float]:
    """A list of values, or {start, stop, step} with both ends included."""
    if isinstance(spec, Mapping):
        start, stop, step = (float(spec[k]) for k in ("start", "stop", "step"))
        if step <= 0 or stop < start:
            raise ValueError(f"{where}: range {dict(spec)} needs step > 0 and stop >= start")
        n = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 6) for i in range(n) if start + i * step <= stop + 1e-9]
    return [float(v) for v in spec]


def grid_points(name: str, source: Mapping[str, Any]) -> list[tuple[float, ...]]:
    """The (teff, logg, feh, alpha) points of the source's subset, sorted, each once."""
    points = set()
    for b, box in enumerate(source["subset"]):
        axes = [axis_values(box.get(a, [0.0]), f"sources.{name}.subset[{b}].{a}") for a in AXES]
        points.update(itertools.product(*axes))
    if not points:
        raise ValueError(f"sources.{name}.subset: selects no grid point")
    return sorted(points)


def phoenix_tokens(teff: float, logg: float, feh: float, alpha: float) -> dict[str, str]:
    """The PHOENIX spelling of one point (module docstring)."""
    return {"teff": f"{int(round(teff)):05d}", "logg": f"{logg:.2f}",
            "feh": "-0.0" if round(feh, 1) == 0 else f"{feh:+.1f}",
            "alpha": "" if round(alpha, 2) == 0 else f".Alpha={alpha:+.2f}"}


def parse_point(filename: str) -> tuple[float, float, float, float]:
    """(teff, logg, feh, alpha) from a PHOENIX file name; ValueError if it is not one."""
    m = _NAME.match(Path(filename).name)
    if not m:
        raise ValueError(f"{filename}: not a PHOENIX file name (lteTTTTT-G.GG[+-]Z.Z[.Alpha=+A.AA].*)")
    return (float(m["teff"]), float(m["logg"]), float(m["feh"]), float(m["alpha"] or 0.0))


def grid_files(name: str, source: Mapping[str, Any]) -> dict[str, list[str]]:
    """FILENAME -> its mirror URLs: the wavelength file first, then one file per point."""
    def urls(rel: str) -> list[str]:
        return [f"{base.rstrip('/')}/{rel.lstrip('/')}" for base in source["urls"]]

    files = {Path(source["wavelength_file"]).name: urls(source["wavelength_file"])}
    for point in grid_points(name, source):
        rel = source["pattern"].format(**phoenix_tokens(*point))
        files[Path(rel).name] = urls(rel)
    return files


def grid_lock_key(name: str, filename: str) -> str:
    return f"{name}/{filename}"


def fetch_grid_file(name: str, source: Mapping[str, Any], filename: str, dest: Path, *,
                    lock_path: str | Path, retries: int = 5, backoff: float = 2.0,
                    timeout: float = 60) -> Path:
    """One file of a grid source to `dest`, its sha256 recorded (first fetch) or checked (later)."""
    files = grid_files(name, source)
    if filename not in files:
        raise ValueError(f"sources.{name}: {filename!r} is not a file of this grid's subset")
    download(files[filename], Path(dest), None, retries=retries, backoff=backoff, timeout=timeout,
             lock=ChecksumLock(lock_path), lock_key=grid_lock_key(name, filename))
    return Path(dest)
