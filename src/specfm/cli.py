"""`specfm` command line: checks that need no Snakemake (verify artifacts, check a config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specfm import __version__
from specfm import config as specfm_config
from specfm import provenance


def _verify_config(args) -> dict | None:
    """The config whose sources are re-checked: --config, else config/config.yaml under --base if any."""
    files = args.config or ([Path(args.base) / "config" / "config.yaml"]
                            if (Path(args.base) / "config" / "config.yaml").is_file() else [])
    return specfm_config.load(*files) if files else None


def _verify(args) -> int:
    try:
        config = _verify_config(args)
    except specfm_config.ConfigError as exc:
        print(f"specfm verify: invalid configuration: {exc}", file=sys.stderr)
        return 2
    count, drifts = provenance.verify_tree(args.roots, base=args.base)
    from specfm.fetch.sources import verify_lock, verify_sources

    lock = args.lock or (config or {}).get("checksum_lock") or "config/checksums.lock.yaml"
    lock_path = Path(args.base) / lock
    if lock_path.exists():
        drifts += verify_lock(lock_path, base=args.base)
    sources = "no config: source archives not checked"
    if config is not None:
        archives, manifests, source_drifts = verify_sources(config, base=args.base)
        drifts += source_drifts
        sources = (f"{archives} source archive{'s' if archives != 1 else ''} and {manifests} unpack "
                   f"manifest{'s' if manifests != 1 else ''} checked against the config's pins")
    for drift in drifts:
        print(f"DRIFT {drift}")
    print(f"specfm verify: {count} provenance records checked under {', '.join(map(str, args.roots))}; "
          f"{sources}; {'no drift' if not drifts else f'{len(drifts)} problem(s)'}")
    return 1 if drifts else 0


def _check_config(args) -> int:
    try:
        specfm_config.load(*args.files)
    except specfm_config.ConfigError as exc:
        print(f"specfm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    print(f"specfm: {' + '.join(args.files)}: valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specfm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"specfm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-hash artifacts and report any that differ from their provenance")
    verify.add_argument("roots", nargs="*", default=["results"], help="directories to scan (default: results)")
    verify.add_argument("--base", default=".", help="repository root that recorded paths are relative to")
    verify.add_argument("--lock", default=None,
                        help="trust-on-first-use checksum lock (default: the config's checksum_lock)")
    verify.add_argument("--config", nargs="+", metavar="FILE",
                        help="config files whose source pins archives and unpack manifests are checked "
                             "against (default: config/config.yaml under --base, if present)")
    verify.set_defaults(func=_verify)
    check = sub.add_parser("check-config", help="validate config files against the schema")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_check_config)
    __import__("specfm.galaxies.cli", fromlist=["add_parser"]).add_parser(sub)  # specfm galaxies predict
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
