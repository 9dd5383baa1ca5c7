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
                    "ppxf", "vorbin", "dust_extinction", "gaiaxpy", "pandas")


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
        product = record["product"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return [Drift(str(record_file), f"unreadable provenance record ({exc})")]
    base = Path(base)
    found = []
    entries = [("product", product)] + [(f"input '{k}'", v) for k, v in record.get("inputs", {}).items()]
    for role, entry in entries:
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


def verify_tree(roots: Iterable[str | Path], base: str | Path = ".") -> tuple[int, list[Drift]]:
    """Check every record under `roots`; return (number of records, drifts)."""
    records = [r for root in roots if Path(root).exists() for r in find_records(root)]
    drifts = [d for r in records for d in check_record(r, base)]
    return len(records), drifts
