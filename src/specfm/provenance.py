"""Provenance records: what every product is made of, so anyone can check it later.

Each product ``X`` gets a sidecar ``X.prov.json`` holding the sha256 of ``X`` and of every input,
the parameters, a digest of the code that made it, the versions of the packages it used and its
seed. The record holds no wall-clock time, so a deterministic rerun reproduces the record byte for
byte too (timings go to the rule's log). ``specfm verify`` re-hashes and reports drift.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from specfm.io import sha256_file, write_json_atomic

SUFFIX = ".prov.json"
SCHEMA_VERSION = 1
# Distributions whose version changes numbers in our products.
TRACKED_PACKAGES = ("specfm", "numpy", "scipy", "astropy", "pyarrow", "h5py", "torch", "matplotlib",
                    "ppxf", "vorbin", "dust_extinction", "gaiaxpy", "pandas", "lightgbm")


def record_path(product: str | Path) -> Path:
    return Path(str(product) + SUFFIX)


def code_digest(modules: Iterable[str], extra_files: Iterable[str | Path] = ()) -> str:
    """sha256 over the source of the named modules (whole sub-packages included) and extra files.

    Paths enter the digest relative to the package root, so two clones at different places agree.
    """
    digest = hashlib.sha256()
    files: dict[str, Path] = {}
    for name in modules:
        module = importlib.import_module(name)
        origin = Path(module.__file__)
        root = Path(importlib.import_module(name.split(".")[0]).__file__).parent.parent
        candidates = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in candidates:
            files[path.relative_to(root).as_posix()] = path
    for path in map(Path, extra_files):
        files[path.name] = path
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + files[rel].read_bytes() + b"\0")
    return digest.hexdigest()


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _hash_paths(paths: Mapping[str, str | Path] | Iterable[str | Path]) -> dict[str, dict]:
    items = paths.items() if isinstance(paths, Mapping) else ((str(p), p) for p in paths)
    out = {}
    for label, path in items:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"provenance: input {path} does not exist or is not a file")
        out[str(label)] = {"path": path.as_posix(), "sha256": sha256_file(path)}
    return out


def write(product: str | Path, *, inputs=(), params: Mapping | None = None, code=(), code_files=(),
          seed: int | None = None, step: str = "") -> Path:
    """Write ``product.prov.json`` for an existing, complete product; return the record's path."""
    product = Path(product)
    if not product.is_file():
        raise FileNotFoundError(f"provenance: product {product} does not exist")
    record = {
        "schema": SCHEMA_VERSION,
        "step": step,
        "product": {"path": product.as_posix(), "sha256": sha256_file(product),
                    "bytes": product.stat().st_size},
        "inputs": _hash_paths(inputs),
        "params": json.loads(json.dumps(params or {}, sort_keys=True, default=str)),
        "code_digest": code_digest(code, code_files),
        "packages": package_versions(),
        "seed": seed,
    }
    out = record_path(product)
    write_json_atomic(out, record)
    return out


@dataclass(frozen=True)
class Drift:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_record(record_file: str | Path, base: str | Path = ".") -> list[Drift]:
    """Re-hash one record's product and inputs; list every difference."""
    record_file = Path(record_file)
    try:
        record = json.loads(record_file.read_text())
        entries = [("product", record["product"])]
        entries += [(f"input '{k}'", v) for k, v in (record.get("inputs") or {}).items()]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        return [Drift(str(record_file), f"unreadable provenance record ({type(exc).__name__}: {exc})")]
    base = Path(base)
    found = []
    for role, entry in entries:
        missing = [k for k in ("path", "sha256") if not isinstance(entry, dict) or k not in entry]
        if missing:
            found.append(Drift(str(record_file), f"{role} entry has no {' or '.join(map(repr, missing))}: "
                                                 "not a usable provenance record"))
            continue
        path = base / entry["path"]
        if not path.is_file():
            found.append(Drift(entry["path"], f"{role} missing (recorded in {record_file})"))
        elif sha256_file(path) != entry["sha256"]:
            what = "modified since it was made" if role == "product" else "changed since the product was made from it"
            found.append(Drift(entry["path"], f"{role} {what} (recorded sha256 {entry['sha256'][:12]}..., "
                                              f"now {sha256_file(path)[:12]}...; record {record_file})"))
    return found


def find_records(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob("*" + SUFFIX))


# Under a scanned root, directories whose files are not products: resumable training state and
# timings (which differ run to run, so they have no content record).
UNRECORDED_DIRS = ("checkpoints", "bench")


def _recorded_paths(records: Iterable[Path], base: Path) -> set[Path]:
    """Every product and input path the records vouch for (resolved)."""
    out = set()
    for record_file in records:
        try:
            record = json.loads(record_file.read_text())
            entries = [record["product"], *(record.get("inputs") or {}).values()]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue  # check_record reports it
        out.update((base / e["path"]).resolve() for e in entries if isinstance(e, dict) and "path" in e)
    return out


def unrecorded(root: str | Path, records: Iterable[Path], base: str | Path = ".") -> list[Drift]:
    """Files under `root` that no record vouches for: neither a product with its own record nor an
    input a record lists (hidden temporaries and UNRECORDED_DIRS aside)."""
    root, base = Path(root), Path(base)
    vouched = _recorded_paths(records, base)
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if (not path.is_file() or path.name.endswith(SUFFIX) or any(p.startswith(".") for p in rel)
                or any(p in UNRECORDED_DIRS for p in rel[:-1])):
            continue
        if path.resolve() not in vouched and not record_path(path).exists():
            found.append(Drift(str(path), "no provenance record (and no record lists it as an input): "
                                          "nothing vouches for it"))
    return found


def verify_tree(roots: Iterable[str | Path], base: str | Path = ".") -> tuple[int, list[Drift]]:
    """Check every record under `roots`, and every file there that no record vouches for; return
    (number of records, problems). A missing root, or roots holding no record, is a problem too."""
    roots = [Path(r) for r in roots]
    drifts = [Drift(str(r), "does not exist (nothing to verify)") for r in roots if not r.is_dir()]
    records = [rec for r in roots if r.is_dir() for rec in find_records(r)]
    drifts += [d for rec in records for d in check_record(rec, base)]
    drifts += [d for r in roots if r.is_dir() for d in unrecorded(r, records, base)]
    if not records:
        drifts.append(Drift(", ".join(map(str, roots)), "no provenance records found: nothing was verified "
                                                        "(has the workflow run in this directory?)"))
    return len(records), drifts
