"""The PHOENIX-ACES grid source (kind http_grid) and grid kind phoenix, against a real HTTP server on
127.0.0.1 serving small, clearly synthetic files in the PHOENIX layout (made here with astropy):
names and URLs, one TOFU lock entry per file, a changed upstream file refused naming it, the grid's
labels, the vacuum -> air conversion, and the same chain through Snakemake."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from fakes import copy_workflow
from specfm.emulator import grid as G
from specfm.emulator.phoenix import vac_to_air
from specfm.emulator.steps import build_grid
from specfm.fetch import ChecksumError, ChecksumLock
from specfm.fetch.grid_source import fetch_grid_file, grid_files, grid_points, parse_point, phoenix_tokens
from specfm.report.timing import read_benchmark

LIB = "PHOENIX-ACES-AGSS-COND-2011"
WAVE_FILE = f"WAVE_{LIB}.fits"
PATTERN = f"{LIB}/Z{{feh}}{{alpha}}/lte{{teff}}-{{logg}}{{feh}}{{alpha}}.{LIB}-HiRes.fits"
SUBSET = [{"teff": {"start": 5000, "stop": 5800, "step": 400}, "logg": [4.5], "feh": [0.0]},
          {"teff": [5800], "logg": [4.0], "feh": [-0.5], "alpha": [0.2]}]
POINTS = [(5000.0, 4.5, 0.0, 0.0), (5400.0, 4.5, 0.0, 0.0), (5800.0, 4.0, -0.5, 0.2), (5800.0, 4.5, 0.0, 0.0)]
FAST = dict(retries=1, backoff=0.01, timeout=5)
BIN = os.path.dirname(sys.executable)


def test_phoenix_names_follow_the_published_spelling():
    assert phoenix_tokens(5800, 4.5, 0.0, 0.0) == {"teff": "05800", "logg": "4.50", "feh": "-0.0", "alpha": ""}
    rel = PATTERN.format(**phoenix_tokens(5800, 4.0, -0.5, 0.2))
    assert rel == f"{LIB}/Z-0.5.Alpha=+0.20/lte05800-4.00-0.5.Alpha=+0.20.{LIB}-HiRes.fits"
    assert PATTERN.format(**phoenix_tokens(12000, 0.0, 0.5, -0.2)).endswith(
        "Z+0.5.Alpha=-0.20/lte12000-0.00+0.5.Alpha=-0.20.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")
    assert parse_point(Path(rel).name) == (5800.0, 4.0, -0.5, 0.2)
    with pytest.raises(ValueError, match="not a PHOENIX file name"):
        parse_point("spectrum.fits")


def test_the_subset_is_the_union_of_its_boxes_and_ranges_include_both_ends():
    assert grid_points("p", {"subset": SUBSET}) == POINTS
    box = [{"teff": {"start": 4000, "stop": 7000, "step": 100}, "logg": {"start": 3.0, "stop": 5.0, "step": 0.5},
            "feh": [-1.0, -0.5, 0.0, 0.5]}]
    assert len(grid_points("p", {"subset": box})) == 31 * 5 * 4  # config.yaml's phoenix_aces subset


def test_vacuum_to_air_matches_morton_2000_by_hand():
    # Morton (2000) Table 3 analogue computed by hand: at 5000 A vacuum, n - 1 = 2.7904e-4
    s2 = (1e4 / 5000.0) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    assert vac_to_air(np.array([5000.0]))[0] == pytest.approx(5000.0 / n, abs=1e-9)
    assert 5000.0 - vac_to_air(np.array([5000.0]))[0] == pytest.approx(1.395, abs=0.002)  # ~1.4 A


# ----------------------------------------------------------------------------- fake upstream


def fake_spectrum(wave, teff, logg, feh):
    """Synthetic: a Planck-like slope (erg/s/cm^2/cm scale) with three absorption lines whose depth
    follows [Fe/H] and log g, so the labels leave a trace in the normalised flux."""
    x = wave * 1e-8
    planck = 1.0 / (x ** 5 * (np.exp(1.4388 / (x * teff)) - 1.0)) * 1e-27
    depth = 0.3 + 0.1 * feh + 0.02 * logg
    lines = np.prod([1 - depth * np.exp(-0.5 * ((wave - c) / 0.6) ** 2) for c in (4300.0, 4500.0, 4700.0)], axis=0)
    return (planck * lines).astype(np.float32)


def write_upstream(root: Path) -> dict[str, Path]:
    """The wavelength file and one file per POINT in the PHOENIX layout under `root`."""
    wave = np.arange(3800.0, 5200.0, 0.1)  # vacuum, Angstrom
    (root / WAVE_FILE).parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(wave).writeto(root / WAVE_FILE)
    out = {WAVE_FILE: root / WAVE_FILE}
    for teff, logg, feh, alpha in POINTS:
        path = root / PATTERN.format(**phoenix_tokens(teff, logg, feh, alpha))
        path.parent.mkdir(parents=True, exist_ok=True)
        hdu = fits.PrimaryHDU(fake_spectrum(wave, teff, logg, feh))
        hdu.header.update(PHXTEFF=teff, PHXLOGG=logg, PHXM_H=feh, PHXALPHA=alpha, COMMENT="synthetic test file")
        hdu.writeto(path)
        out[path.name] = path
    return out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def upstream(tmp_path):
    root = tmp_path / "upstream" / "data" / "HiResFITS"
    files = write_upstream(root)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path / "upstream")))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    source = {"kind": "http_grid", "urls": [f"http://127.0.0.1:{srv.server_address[1]}/data/HiResFITS"],
              "wavelength_file": WAVE_FILE, "pattern": PATTERN, "subset": SUBSET,
              "licence": "synthetic test files"}
    yield source, files
    srv.shutdown()
    srv.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_all(source, base: Path, lock: Path) -> list[str]:
    paths = []
    for name in grid_files("phx", source):
        dest = base / "resources/archives/phx" / name
        fetch_grid_file("phx", source, name, dest, lock_path=lock, **FAST)
        paths.append(str(dest))
    return paths


def test_fetch_records_each_file_then_a_changed_upstream_file_is_refused_by_name(upstream, tmp_path):
    source, files = upstream
    lock = tmp_path / "checksums.lock.yaml"
    paths = _fetch_all(source, tmp_path, lock)
    entries = ChecksumLock(lock).read()
    assert set(entries) == {f"phx/{name}" for name in files}  # one TOFU entry per file
    for name, path in files.items():
        assert entries[f"phx/{name}"]["sha256"] == _sha(path)
        assert entries[f"phx/{name}"]["url"].endswith(name)

    changed = files["lte05400-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"]
    changed.write_bytes(changed.read_bytes()[:-2880] + b" " * 2880)  # upstream replaced the file
    Path(paths[2]).unlink()
    with pytest.raises(ChecksumError, match=r"sha256 mismatch for .*lte05400-4\.50-0\.0\.PHOENIX"):
        fetch_grid_file("phx", source, changed.name, Path(paths[2]), lock_path=lock, **FAST)
    assert not Path(paths[2]).exists()


def test_the_phoenix_grid_has_the_four_labels_air_wavelengths_and_n_pixels(upstream, tmp_path):
    source, _ = upstream
    lock = tmp_path / "checksums.lock.yaml"
    paths = _fetch_all(source, tmp_path, lock)
    out = tmp_path / "grid.h5"
    counts = build_grid("phoenix", paths, out, window=[4200, 4800], margin=50,
                        continuum={"degree": 3, "lower": 1.0, "upper": 3.0}, max_bad_fraction=0.01,
                        split={"val": 0.1, "test": 0.15}, n_pixels=600, medium="air",
                        pin={"lock_path": str(lock), "source": "phx"})
    g = G.read(out)
    assert counts["spectra"] == 4 and counts["ok"] == 4
    assert g.label_names == ["teff", "logg", "feh", "alpha_m"] and g.label_units == ["K", "dex", "dex", "dex"]
    assert sorted(map(tuple, g.labels.tolist())) == POINTS
    assert "lte05800-4.00-0.5.Alpha=+0.20" in set(g.ids)
    assert len(g.wavelength) == 600 and g.wavelength[0] == 4200.0 and g.wavelength[-1] == 4800.0
    assert np.allclose(np.diff(np.log(g.wavelength)), np.log(4800 / 4200) / 599)
    assert g.attrs["medium"] == "air" and "Morton" in g.attrs["medium_conversion"]
    assert g.attrs["source_flux_unit"] == "erg/s/cm^2/cm" and np.isfinite(g.flux).all()
    # the 4500 A (vacuum) line sits ~1.26 A bluer in air: its minimum is there in every spectrum
    near = (g.wavelength > 4490) & (g.wavelength < 4505)
    centre = g.wavelength[near][np.argmin(g.flux[:, near], axis=1)]
    half_pixel = 0.5 * 4500 * np.log(4800 / 4200) / 599  # 0.50 A
    assert np.allclose(centre, vac_to_air(np.array([4500.0]))[0], atol=half_pixel), centre
    assert (np.abs(centre - 4500.0) > 2 * half_pixel).all()  # not where the vacuum line is


def test_a_grid_file_edited_after_the_fetch_is_refused_naming_it(upstream, tmp_path):
    source, _ = upstream
    lock = tmp_path / "checksums.lock.yaml"
    paths = _fetch_all(source, tmp_path, lock)
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes().replace(b"synthetic test file", b"synthetic TEST file"))
    with pytest.raises(ChecksumError, match=r"lte05000-4\.50-0\.0\.PHOENIX.*sha256 expected"):
        build_grid("phoenix", paths, tmp_path / "grid.h5", window=[4200, 4800], margin=50,
                   continuum={"degree": 3, "lower": 1.0, "upper": 3.0}, max_bad_fraction=0.01,
                   split={"val": 0.1, "test": 0.15}, pin={"lock_path": str(lock), "source": "phx"})


@pytest.mark.slow
def test_phoenix_grid_through_snakemake_then_a_changed_upstream_file_fails_naming_it(upstream, tmp_path):
    source, files = upstream
    wf = copy_workflow(tmp_path / "wf")
    override = {"sources": {"phx": source},
                "emulator": {"grid": {"kind": "phoenix", "source": "phx", "window": [4200, 4800],
                                      "n_pixels": 300}}}
    (wf / "config/phoenix.yaml").write_text(yaml.safe_dump(override))
    cmd = [f"{BIN}/snakemake", "--cores", "1", "results/interim/emulator/grid.h5", "--configfile",
           "config/config.yaml", "config/phoenix.yaml"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = ChecksumLock(wf / "config/checksums.lock.yaml").read()
    assert set(entries) == {f"phx/{name}" for name in files}
    g = G.read(wf / "results/interim/emulator/grid.h5")
    assert g.label_names == ["teff", "logg", "feh", "alpha_m"] and len(g.wavelength) == 300
    assert sorted(map(tuple, g.labels.tolist())) == POINTS
    bench = read_benchmark(wf / "results/bench/rules/emulator_grid.tsv")  # the script's own benchmark
    assert bench["seconds"] > 0 and bench["cpu_seconds"] > 0 and bench["max_rss_mb"] > 50

    name = "lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    files[name].write_bytes(files[name].read_bytes()[:-2880] + b" " * 2880)
    (wf / "resources/archives/phx" / name).unlink()  # the grid is up to date: ask for the file itself
    proc = subprocess.run([*cmd[:3], f"resources/archives/phx/{name}", *cmd[4:]], cwd=wf,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    log = (wf / f"logs/fetch/phx/{name}.log").read_text()
    assert "sha256 mismatch" in log and name in log, log[-2000:]
