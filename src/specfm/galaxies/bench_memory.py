"""Benchmark: peak memory of binning a cube from a file, against cube size.

    python -m specfm.galaxies.bench_memory [--out results/bench/galaxies_cube_memory.json]

A PHANGS-MUSE mosaic is 700-1500 spaxels on a side (1480 x 915, 897 x 896 and 1235 x 711 for
NGC 1433, 3351 and 1672) x 3,681 planes (4750-9350 A at 1.25 A), float32 DATA and STAT: a 1235 x 711
mosaic is 12.9 GB per extension, 6.8 GB even for the ~1,930 planes the paper grid needs.
``cube.preprocess_file`` bins it in strips of rows; this benchmark writes synthetic cubes in the
same layout (full 3,681 planes) at two or more spatial sizes, bins each in a fresh subprocess with
the streaming path (and the in-memory path, ``read_cube`` + ``preprocess``, for comparison) and
records each child's peak RSS (``resource.getrusage``, ru_maxrss), so the numbers are not polluted
by the parent. Bounded memory shows as a streaming peak that grows far slower than the cube.

The synthetic cube is a flat continuum with per-spaxel S/N ~ 5 and a few NaN pixels, binned to
S/N 50 (~100 spaxels per bin), so the per-bin sums stay small next to the cube.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_PLANES = 3681  # 4750-9350 A at 1.25 A, the PHANGS-MUSE DR1 cubes
Z = 0.008


def write_synthetic_cube(path: Path, ny: int, nx: int, *, seed: int = 0) -> int:
    """A PHANGS-layout cube written strip by strip (the writer must not hold it either); returns bytes."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from .cube_io import VAR_UNIT_PHANGS, cube_header

    rng = np.random.default_rng(seed)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.crval = [184.70675, 14.41641]
    w.wcs.cd = np.array([[-0.2 / 3600, 0.0], [0.0, 0.2 / 3600]])
    data_hdr = cube_header(4750.0, 1.25, w)
    sigma = 20.0
    with open(path, "wb") as fh:
        fits.PrimaryHDU().writeto(fh)
    for ext in ("DATA", "STAT"):
        # astropy's recipe for files larger than memory: a header from a tiny array with the real
        # NAXISn values, then the data written plane by plane and padded to a 2880-byte block
        hdu = fits.ImageHDU(np.zeros((1, 1, 1), np.float32), header=data_hdr.copy())
        hdu.header["EXTNAME"] = ext
        if ext == "STAT":
            hdu.header["BUNIT"] = VAR_UNIT_PHANGS
        hdu.header["NAXIS1"], hdu.header["NAXIS2"], hdu.header["NAXIS3"] = nx, ny, N_PLANES
        with open(path, "ab") as fh:
            fh.write(hdu.header.tostring().encode("ascii"))
            for k in range(N_PLANES):
                if ext == "DATA":
                    plane = 100.0 + sigma * rng.standard_normal((ny, nx))
                    if k % 997 == 5:
                        plane[rng.integers(0, ny), rng.integers(0, nx)] = np.nan
                else:
                    plane = np.full((ny, nx), sigma**2)
                fh.write(plane.astype(">f4").tobytes())
            fh.write(b"\0" * ((-(N_PLANES * ny * nx * 4)) % 2880))
    return path.stat().st_size


_CHILD = """
import json, resource, sys, time
from specfm.galaxies import cube as c, cube_io
path, mode, z, snr, mb = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "stream":
    bins = c.preprocess_file(path, z, target_snr=snr, min_snr=1.0, max_chunk_mb=mb)
else:
    bins = c.preprocess(cube_io.read_cube(path, redshift=z), z, target_snr=snr, min_snr=1.0)
print(json.dumps({"seconds": time.perf_counter() - t, "n_bins": bins.n_bins,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_imports_mb": base / 1024}))
"""


def run_child(path: Path, mode: str, target_snr: float, max_chunk_mb: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode, str(Z), str(target_snr), str(max_chunk_mb)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench/galaxies_cube_memory.json")
    parser.add_argument("--sizes", default="64,160", help="spatial sizes (n for n x n spaxels), comma separated")
    parser.add_argument("--max-chunk-mb", type=float, default=32.0,
                        help="strip budget of preprocess_file (its default, 256, is for real mosaics; the "
                             "benchmark cubes are smaller, so a smaller strip shows the bound)")
    parser.add_argument("--target-snr", type=float, default=50.0)
    parser.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="also run read_cube + preprocess for comparison")
    parser.add_argument("--tmpdir", default=None, help="where the synthetic cubes go (deleted afterwards)")
    args = parser.parse_args(argv)
    from specfm.io import write_json_atomic

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"cube_{n}x{n}.fits"
            t = time.perf_counter()
            size = write_synthetic_cube(path, n, n)
            row = {"spaxels": [n, n], "planes": N_PLANES, "file_mb": size / 2**20,
                   "write_seconds": time.perf_counter() - t}
            row["stream"] = run_child(path, "stream", args.target_snr, args.max_chunk_mb)
            if args.in_memory:
                row["in_memory"] = run_child(path, "memory", args.target_snr, args.max_chunk_mb)
            print(json.dumps(row), flush=True)
            rows.append(row)
            path.unlink()
    result = {
        "what": "peak RSS of binning a PHANGS-layout cube from a file: preprocess_file (strips) vs read_cube + "
                "preprocess (whole cube in memory), each in a fresh subprocess",
        "command": "python -m specfm.galaxies.bench_memory " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target_snr": args.target_snr,
        "max_chunk_mb": args.max_chunk_mb,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "runs": rows,
    }
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        result["growth"] = {
            "file_mb_ratio": b["file_mb"] / a["file_mb"],
            "stream_peak_rss_ratio": b["stream"]["peak_rss_mb"] / a["stream"]["peak_rss_mb"],
        }
        if args.in_memory:
            result["growth"]["in_memory_peak_rss_ratio"] = b["in_memory"]["peak_rss_mb"] / a["in_memory"]["peak_rss_mb"]
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
