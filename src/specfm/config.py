"""Configuration: validation against the JSON schema, defaults, and cross-references.

jsonschema does the type checking; this module adds two things it lacks: filling in the schema's
defaults, and messages that name the offending key as a dotted path (``galaxies.train.epochs``)
so a user sees at once which line of their YAML to fix.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_REL = Path("workflow") / "schemas" / "config.schema.yaml"
# A source checkout (editable install): the schema beside the package's repository.
SCHEMA = Path(__file__).resolve().parents[2] / SCHEMA_REL


def find_schema() -> Path:
    """The config schema: $SPECFM_SCHEMA, else the workflow directory we run in (Snakemake and the
    `specfm` command run from the repository root), else the source checkout of this package.

    Not only the last: a regular (non-editable) install has no repository beside the package.
    """
    candidates = [Path(os.environ["SPECFM_SCHEMA"])] if os.environ.get("SPECFM_SCHEMA") else []
    candidates += [Path.cwd() / SCHEMA_REL, SCHEMA]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"config schema not found (looked at {', '.join(map(str, candidates))}); run from "
                      "the workflow directory or set SPECFM_SCHEMA")


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns in the message."""


def _with_defaults(validator_class):
    """A validator that writes `default` values into the instance while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        where = _key(error.absolute_path)
        keys = ", ".join(f"'{where}.{k}'" if error.absolute_path else f"'{k}'" for k in unknown)
        hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
        return f"unknown config key {keys}{hint}"
    if error.validator == "required" and isinstance(error.instance, dict):
        where = _key(error.absolute_path)
        missing = [k for k in error.validator_value if k not in error.instance]
        keys = ", ".join(f"'{where}.{k}'" if error.absolute_path else f"'{k}'" for k in missing)
        return f"config key {keys} is missing (required in '{where}')"
    return f"config key '{_key(error.absolute_path)}': {error.message}"


def validate(config: dict[str, Any], schema_path: str | Path | None = None) -> dict[str, Any]:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError on the first problem."""
    schema = yaml.safe_load(Path(schema_path or find_schema()).read_text())
    _check_finite(config)  # JSON schema's "number" admits NaN and inf (YAML .nan, .inf)
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_references(config)
    return config


def _check_finite(value: Any, path: tuple = ()) -> None:
    """NaN or inf anywhere is an error naming its key: no setting of ours means either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{_key(path)}': {value} is not a finite number")
    if isinstance(value, dict):
        for key, sub in value.items():
            _check_finite(sub, (*path, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_finite(sub, (*path, i))


def _check_references(config: dict[str, Any]) -> None:
    """Cross-references the schema cannot express: every name used must be declared."""
    sources = config.get("sources", {})

    def need(name: str, table: dict, key: str, what: str) -> None:
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise ConfigError(f"config key '{key}': unknown {what} '{name}' (declared: {known})")

    gal = config.get("galaxies", {})
    sets = gal.get("template_sets", {})
    for name, entry in sets.items():
        need(entry["source"], sources, f"galaxies.template_sets.{name}.source", "source")
    if sets:
        need(gal["template_set"], sets, "galaxies.template_set", "template set")
    for name in config.get("demo", {}).get("galaxies_templates", []):
        need(name, sets, "demo.galaxies_templates", "template set")
    targets = gal.get("targets", {})
    for name, entry in targets.items():
        for field in ("cube", "maps", "source"):
            if field in entry:
                need(entry[field], sources, f"galaxies.targets.{name}.{field}", "source")
        if entry["kind"] == "spectra" and "redshift" not in entry and "redshifts" not in entry:
            raise ConfigError(f"config key 'galaxies.targets.{name}': kind spectra needs redshift (one z for every "
                              "file) or redshifts (one per spectrum)")
        if "source" in entry and not sources[entry["source"]].get("members"):
            raise ConfigError(f"config key 'galaxies.targets.{name}.source': source '{entry['source']}' "
                              "unpacks no members; its files cannot be named")
        if entry["kind"] == "phangs" and "cube" not in entry:
            raise ConfigError(f"config key 'galaxies.targets.{name}.cube': required for kind 'phangs'")
    for name in gal.get("build", []):
        need(name, targets, "galaxies.build", "target")
    variants = gal.get("ablation", {}).get("attention", [])
    chosen = gal.get("model", {}).get("attention")
    if variants and chosen is not None and chosen not in variants:  # its score is the reference row
        raise ConfigError(f"config key 'galaxies.ablation.attention': {variants} must include "
                          f"galaxies.model.attention '{chosen}' (or be [] to skip the ablation)")
    if gal.get("estimate") == "head" and not gal.get("model", {}).get("mean_head"):  # caught before any training
        raise ConfigError("config key 'galaxies.estimate': head needs galaxies.model.mean_head true (a model without "
                          "the mean head has no such estimate)")
    for system in ("stars", "redshift"):
        block = config.get(system, {})
        samples = block.get("samples", {})
        for name, entry in samples.items():
            if "source" in entry:
                need(entry["source"], sources, f"{system}.samples.{name}.source", "source")
        for name in block.get("build", []):
            need(name, samples, f"{system}.build", "sample")
    stars = config.get("stars", {}).get("samples", {})
    for name, entry in stars.items():
        if entry.get("kind") == "targets":
            key = f"stars.samples.{name}.model"
            if "model" not in entry:
                raise ConfigError(f"config key '{key}': required for kind 'targets' (the trained sample whose ensemble predicts)")
            need(entry["model"], stars, key, "sample")
            if stars[entry["model"]].get("kind") == "targets":
                raise ConfigError(f"config key '{key}': '{entry['model']}' is a targets sample, which has no trained ensemble")
    _check_emulator_grid(config.get("emulator", {}).get("grid", {}), sources, need)


def _check_emulator_grid(grid: dict, sources: dict, need) -> None:
    """kind miles / phoenix name a declared source (phoenix: an http_grid one); hdf5 / fits a path."""
    kind = grid.get("kind")
    if kind in ("miles", "phoenix"):
        need(grid["source"], sources, "emulator.grid.source", "source")
        if kind == "phoenix" and sources[grid["source"]]["kind"] != "http_grid":
            raise ConfigError(f"config key 'emulator.grid.source': kind phoenix needs an http_grid source, "
                              f"'{grid['source']}' is {sources[grid['source']]['kind']}")
    elif kind in ("hdf5", "fits") and not grid.get("path"):
        raise ConfigError(f"config key 'emulator.grid.path': required for kind '{kind}'")


def load(*paths: str | Path) -> dict[str, Any]:
    """Load and merge YAML files (later ones override earlier ones, recursively), then validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a config file")
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read ({exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        if data is None:  # Snakemake refuses an empty --configfile too
            raise ConfigError(f"{path}: is empty (no keys); remove it from the list or give it a key")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        merged = merge(merged, data)
    return validate(merged)


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge, the way Snakemake merges --configfile over configfile:."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
