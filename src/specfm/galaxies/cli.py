"""`specfm galaxies predict`: a trained GalProTE model on a user's own spectra, no cube, no Snakemake.

    specfm galaxies predict --model results/models/galaxies/galprote_emiles_ppxf.pt \\
        --templates results/interim/galaxies/templates_emiles_ppxf.h5 --z 0.0040 --out table.parquet \\
        spec1.fits spec2.csv

One row per spectrum (log age, [M/H], A_V, residual stats, S/N; with --ppxf also the pPXF baseline).
The spectra go through the cube bins' preprocessing (`specfm.galaxies.single`). Heavy imports stay
inside the command so that `specfm --help` stays quick.
"""

from __future__ import annotations

import argparse
import sys


def _redshifts(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a redshift or a comma-separated list of them") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `specfm galaxies ...` on the top-level sub-parsers of `specfm.cli.main`."""
    galaxies = subparsers.add_parser("galaxies", help="GalProTE on your own spectra (see `specfm galaxies -h`)")
    sub = galaxies.add_subparsers(dest="galaxies_command", required=True)
    p = sub.add_parser("predict", help="log age, [M/H], A_V of single spectra (1-D FITS, tables, MaNGA rows)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spectra", nargs="+", metavar="SPECTRUM",
                   help="1-D FITS with a wavelength WCS and an ERROR/IVAR/VAR extension; a table (.fits, .csv, "
                        ".ecsv, .parquet) with wavelength/flux/error columns; or a MaNGA-format spectra file")
    p.add_argument("--model", required=True, help="GalProTE model file (the galaxies_train product)")
    p.add_argument("--templates", required=True, help="template table the model was trained on (HDF5)")
    z = p.add_mutually_exclusive_group(required=True)
    z.add_argument("--z", type=_redshifts, metavar="Z[,Z...]",
                   help="redshift: one for all spectra, or a comma-separated list, one per spectrum in order")
    z.add_argument("--z-from-file", action="store_true",
                   help="use each file's redshift (MaNGA Z extension, SDSS SPECOBJ Z)")
    p.add_argument("--out", required=True, help="output table: .parquet, .fits or .csv")
    frame = p.add_mutually_exclusive_group()
    frame.add_argument("--vacuum", dest="frame", action="store_const", const="vacuum",
                       help="wavelengths are in vacuum (converted to air); default: what the file says, else air")
    frame.add_argument("--air", dest="frame", action="store_const", const="air", help="wavelengths are in air")
    p.add_argument("--ppxf", action="store_true", help="also fit pPXF (same spectra and templates): ppxf_* columns")
    p.add_argument("--ppxf-degree", type=int, default=12, help="pPXF multiplicative polynomial degree (default 12)")
    p.add_argument("--clip-frac", type=float, default=0.05, help="grid weights below this fraction of the maximum "
                                                                 "are zeroed (default 0.05)")
    p.add_argument("--estimate", choices=("grid", "head"), default="grid",
                   help="log age, [M/H], A_V from the clipped grid (the paper, default) or from the model's mean "
                        "head (models trained with galaxies.model.mean_head)")
    p.add_argument("--max-bad-frac", type=float, default=0.2,
                   help="refuse a spectrum with more masked pixels than this in the template window (default 0.2)")
    p.set_defaults(func=_predict, frame=None)
    return p


def _predict(args) -> int:
    import logging

    from .steps import predict_spectra

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = predict_spectra(args.spectra, None if args.z_from_file else args.z, args.model, args.templates,
                                args.out, frame=args.frame, clip_frac=args.clip_frac,
                                ppxf_degree=args.ppxf_degree if args.ppxf else None, max_bad_frac=args.max_bad_frac,
                                estimate=args.estimate)
    except (ValueError, FileNotFoundError) as exc:
        print(f"specfm galaxies predict: {exc}", file=sys.stderr)
        return 2
    cols = ["log_age", "mh", "av", "resid_std"] + (["ppxf_log_age", "ppxf_mh", "ppxf_av"] if args.ppxf else [])
    print(f"{'spectrum':<36} {'z':>8} " + " ".join(f"{c:>12}" for c in cols))
    for i, name in enumerate(table["spectrum"]):
        print(f"{name[-36:]:<36} {table['redshift'][i]:8.5f} " + " ".join(f"{table[c][i]:12.3f}" for c in cols))
    print(f"wrote {args.out}")
    return 0


__all__ = ["add_parser"]
