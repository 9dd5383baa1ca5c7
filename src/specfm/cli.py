"""`specfm` command line: checks that need no Snakemake (verify artifacts, check a config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specfm import __version__
from specfm import config as specfm_config
from specfm import provenance


def _verify(args) -> int:
    count, drifts = provenance.verify_tree(args.roots, base=args.base)
    lock_drifts = []
    lock_path = Path(args.base) / args.lock
    if lock_path.exists():
        from specfm.fetch.sources import verify_lock

        lock_drifts = verify_lock(lock_path, base=args.base)
    for drift in [*drifts, *lock_drifts]:
        print(f"DRIFT {drift}")
    total = len(drifts) + len(lock_drifts)
    print(f"specfm verify: {count} provenance records checked under {', '.join(map(str, args.roots))}; "
          f"{'no drift' if not total else f'{total} problem(s)'}")
    return 1 if total else 0


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
    verify.add_argument("--lock", default="config/checksums.lock.yaml", help="trust-on-first-use checksum lock")
    verify.set_defaults(func=_verify)
    check = sub.add_parser("check-config", help="validate config files against the schema")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_check_config)
    __import__("specfm.galaxies.cli", fromlist=["add_parser"]).add_parser(sub)  # specfm galaxies predict
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
