"""Workflow steps of the redshift stage: each reads files, calls the library, writes a product and
its provenance record. The rule scripts call these and nothing else."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from specfm import provenance
from specfm.fetch.sources import manifest_files
from specfm.io import atomic_path, write_json_atomic

from . import grid as G
from .spectra import SpectraWriter, model_input, read_meta, read_rows

log = logging.getLogger(__name__)

DATA_CODE = ["specfm.redshift.grid", "specfm.redshift.spectra", "specfm.redshift.mock", "specfm.redshift.desi",
             "specfm.redshift.steps", "specfm.galaxies.templates", "specfm.fetch.sources", "specfm.io"]
MODEL_CODE = ["specfm.train", "specfm.redshift.autoencoder", "specfm.redshift.zmodel", "specfm.redshift.training",
              "specfm.redshift.spectra", "specfm.redshift.grid", "specfm.redshift.steps"]
RR_CODE = ["specfm.redshift.rrfit", "specfm.redshift.rrtemplates", "specfm.redshift.mock", "specfm.redshift.steps"]


def _grid(cfg) -> np.ndarray:
    return G.make_grid(cfg["wmin"], cfg["wmax"], cfg["dw"])


def _split_meta(targetid):
    u = G.hash_unit(targetid)
    return {"hash_u": u, "split": G.split_of(u)}


def _normalise_and_append(writer, flux, ivar, meta, counts, name):
    """Median-normalise a merged batch, drop (and count) spectra with nothing usable, append."""
    fn, ivn, med = G.median_normalise(flux, ivar)
    good = np.isfinite(med)
    counts["dropped_unusable"] += int((~good).sum())
    if (~good).any():
        log.warning("%s: dropping %d spectra that are all-masked, all-NaN or have a median <= 0",
                    name, int((~good).sum()))
    meta = {k: np.asarray(v)[good] for k, v in meta.items()}
    meta["norm"] = med[good]
    meta["n_masked"] = (ivn[good] <= 0).sum(axis=1).astype(np.int32)
    with np.errstate(all="ignore"):
        meta["snr"] = np.nanmedian(np.where(ivn[good] > 0, np.sqrt(ivn[good]) * np.abs(fn[good]), np.nan),
                                   axis=1).astype("f4")
    writer.append(fn[good], ivn[good], meta)


def make_spectra(kind: str, out, *, grid: dict, sample: str, seed: int, inputs: list | None = None,
                 mock: dict | None = None, selection=None, code_files=()) -> None:
    """A sample -> its spectra file (one grid, normalised, split). kind: mock | desi_files | desi;
    `selection` (the desi kind's, required there) says which targets of the coadds are kept and labels them."""
    t0 = time.perf_counter()
    wave = _grid(grid)
    counts = {"dropped_unusable": 0}
    attrs = {"kind": kind, "sample": sample, "grid": json.dumps(grid)}
    if kind == "mock":
        counts.update(_mock_spectra(inputs[0], out, wave, mock or {}, seed, attrs, counts, sample))
    elif kind in ("desi_files", "desi"):
        if kind == "desi" and selection is None:
            raise ValueError(f"redshift sample {sample}: the desi kind needs its selection table")
        counts.update(_desi_spectra(inputs, out, wave, attrs, counts, sample, selection))
    else:
        raise ValueError(f"redshift sample {sample}: unknown kind {kind!r}")
    meta = read_meta(out)
    log.info("%s: %d spectra on %d px (%.1f-%.1f A at %.2f A); splits %s; %s; %.1f s", out, meta["z"].size,
             wave.size, wave[0], wave[-1], grid["dw"], dict(zip(*np.unique(meta["split"], return_counts=True))),
             counts, time.perf_counter() - t0)
    provenance.write(out, inputs={**{f"input{i}": p for i, p in enumerate(inputs or [])},
                                  **({"selection": selection} if selection is not None else {})},
                     params={"kind": kind, "grid": grid, "mock": mock, "counts": counts}, seed=seed,
                     code=DATA_CODE, code_files=code_files, step="redshift_spectra")


def _mock_spectra(manifest, out, wave, cfg, seed, attrs, counts, sample):
    from . import mock as M

    paths = manifest_files(manifest, "*.fits")
    if not paths:
        raise ValueError(f"{manifest}: lists no SSP .fits files")
    basis = M.build_basis(paths)
    s = M.MockSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()})
    merger = G.Merger([M.arm_wave(a) for a in M.ARMS], wave, name=f"mock sample {sample}")
    ids = s.targetid_base + np.arange(s.n_spectra, dtype=np.int64)
    sm = _split_meta(ids)
    is_test = sm["split"] == "test"
    params = mock_params(seed, is_test, basis, s)
    order = {test: np.cumsum(is_test == test) - 1 for test in (False, True)}
    noise_rng = np.random.default_rng([seed, 7])
    mask_counts = {"masked_rest_coverage": 0, "masked_bad": 0}
    batch = 256
    from tqdm import tqdm
    with SpectraWriter(out, wave, attrs=attrs) as w:
        for start in tqdm(range(0, ids.size, batch), desc="mock spectra", mininterval=5):
            sel = np.arange(start, min(start + batch, ids.size))
            p = _gather(params, is_test[sel], order, sel)
            r = M.render(basis, p, noise_rng, s)
            for k in mask_counts:
                mask_counts[k] += r["counts"][k]
            flux, ivar = merger([r["arms"][a][0] for a in M.ARMS], [r["arms"][a][1] for a in M.ARMS])
            meta = {"targetid": ids[sel], "z": p.z, "population": p.pop, "rmag": p.rmag.astype("f4"),
                    "av": p.av.astype("f4"), "hash_u": sm["hash_u"][sel], "split": sm["split"][sel]}
            _normalise_and_append(w, flux, ivar, meta, counts, out)
    log.info("mock: masked %d pixels bluer than the SSPs' rest coverage (z > 1.14) and %d bad pixels",
             mask_counts["masked_rest_coverage"], mask_counts["masked_bad"])
    return mask_counts


def mock_params(seed: int, is_test: np.ndarray, basis, s) -> dict:
    """{False: training/validation Params, True: test Params}, each in its own random stream
    ([seed, 0] / [seed, 1]) and the test one from another SFH family and line-ratio ranges
    (specfm.redshift.mock.draw_params): the test split measures generalisation, not memory, and one
    split's size never changes the other's galaxies."""
    from .mock import draw_params

    return {test: draw_params(np.random.default_rng([seed, int(test)]), int((is_test == test).sum()), basis, s,
                              test=test) for test in (False, True)}


def _gather(params, test_flags, order, sel):
    """Rows of the per-split parameter sets, in target order."""
    from .mock import Params

    fields = Params.__dataclass_fields__
    out = {}
    for f in fields:
        parts = []
        for k, t in enumerate(test_flags):
            parts.append(getattr(params[bool(t)], f)[order[bool(t)][sel[k]]])
        out[f] = np.stack(parts) if np.ndim(parts[0]) else np.array(parts)
    return Params(**out)


def _desi_spectra(inputs, out, wave, attrs, counts, sample, selection=None):
    """Coadd + Redrock file pairs (matched by their name after the 'coadd-'/'redrock-' prefix).

    desi_files: every good-fibre target, labelled by its Redrock file. desi: only the targets the
    zcatalog selection picked for this very coadd (a TARGETID observed in two surveys is kept once, from
    the file the catalogue's primary row names), labelled by the selection (population, Z), because
    the cuts were made on the catalogue, not on the per-pixel files."""
    from . import desi as D

    coadds = _desi_coadds(inputs, sample)
    sel = read_selection(selection) if selection is not None else None
    counts.update(dropped_fiberstatus=0, dropped_unselected=0)
    found = 0
    with SpectraWriter(out, wave, attrs=attrs) as w:
        for c in coadds:
            d = D.read_coadd(c)
            counts["dropped_fiberstatus"] += d["dropped_fiberstatus"]
            if sel is None:
                cat = _redrock_labels(c, d["targetid"])
            else:
                keep, cat = _selection_labels(sel, c, d["targetid"])
                counts["dropped_unselected"] += int((~keep).sum())
                found += int(keep.sum())
                d = {**d, "targetid": d["targetid"][keep], "fluxes": [f[keep] for f in d["fluxes"]],
                     "ivars": [iv[keep] for iv in d["ivars"]]}
            flux, ivar = G.Merger(d["waves"], wave, name=str(c))(d["fluxes"], d["ivars"])
            _normalise_and_append(w, flux, ivar, _desi_meta(d["targetid"], cat, c, attrs["kind"]), counts, c)
    if sel is not None:
        counts["selected_not_found"] = len(sel) - found
        if found < len(sel):
            log.warning("%s: %d of %d selected targets are in none of the coadds (fibre status or a missing "
                        "file)", selection, len(sel) - found, len(sel))
    return counts


def _desi_coadds(inputs, sample) -> list[Path]:
    """The coadd files among the inputs (a source manifest stands for the files it lists, re-verified)."""
    files = []
    for p in map(Path, inputs):
        files += manifest_files(p, "*.fits") if p.name == "manifest.json" else [p]
    coadds = sorted(p for p in files if p.name.startswith("coadd-"))
    if not coadds:
        raise ValueError(f"redshift sample {sample}: no coadd-*.fits among its inputs")
    return coadds


SELECTION_COLUMNS = ("TARGETID", "SURVEY", "PROGRAM", "HEALPIX", "population", "Z")


def read_selection(path) -> pd.DataFrame:
    """The selection table select_targets wrote, with the coadd file name each target is read from."""
    df = pd.read_parquet(path)
    missing = [c for c in SELECTION_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"{path}: not a redshift selection table, missing column(s) {', '.join(missing)}")
    if df["TARGETID"].duplicated().any():
        raise ValueError(f"{path}: TARGETID {df.loc[df['TARGETID'].duplicated(), 'TARGETID'].iloc[0]} "
                         "is selected twice")
    df = df.copy()
    df["coadd"] = [f"coadd-{s}-{p}-{int(h)}.fits" for s, p, h in zip(df["SURVEY"], df["PROGRAM"], df["HEALPIX"])]
    return df


def _selection_labels(sel: pd.DataFrame, coadd: Path, targetid) -> tuple[np.ndarray, dict]:
    """(keep mask over the coadd's targets, catalogue columns of the kept ones) from the selection."""
    rows = sel[sel["coadd"] == coadd.name].set_index("TARGETID")
    keep = np.isin(targetid, rows.index.to_numpy())
    r = rows.loc[targetid[keep]]
    n = int(keep.sum())
    cat = {"Z": r["Z"].to_numpy(float), "population": r["population"].to_numpy(str),
           "ZWARN": r["ZWARN"].to_numpy(np.int64) if "ZWARN" in r else np.full(n, -1),
           "DELTACHI2": r["DELTACHI2"].to_numpy(float) if "DELTACHI2" in r else np.full(n, np.nan),
           "SPECTYPE": r["SPECTYPE"].to_numpy(str) if "SPECTYPE" in r else np.full(n, "")}
    return keep, cat


def _redrock_labels(coadd: Path, targetid) -> dict:
    """Catalogue columns of a coadd's targets from its Redrock file (NaN / -1 where it has none).
    No cuts here: the population is a guess from z (BGS-like below 0.6), for the per-population scores."""
    from . import desi as D

    n = targetid.size
    cat = {"Z": np.full(n, np.nan), "ZWARN": np.full(n, -1), "DELTACHI2": np.full(n, np.nan),
           "SPECTYPE": np.full(n, "", dtype=object)}
    rr_path = coadd.with_name("redrock-" + coadd.name[len("coadd-"):])
    if rr_path.exists():
        rr = D.read_redrock(rr_path)
        pos = {int(t): k for k, t in enumerate(rr["TARGETID"])}
        for i, t in enumerate(targetid):
            if int(t) in pos:
                for col in cat:
                    cat[col][i] = rr[col][pos[int(t)]]
    else:
        log.warning("%s: no Redrock file %s; catalogue z unknown", coadd, rr_path.name)
    z = np.asarray(cat["Z"], float)
    cat["population"] = np.where(np.isfinite(z), np.where(z < 0.6, "BGS", "ELG"), "UNK")
    cat["SPECTYPE"] = cat["SPECTYPE"].astype(str)
    return cat


def _desi_meta(targetid, cat, coadd: Path, kind: str) -> dict:
    """Per-spectrum columns of real spectra: the catalogue's z is both the label and z_cat."""
    sm = _split_meta(targetid)
    z = np.asarray(cat["Z"], float)
    return {"targetid": targetid, "z": z, "z_cat": z, "zwarn_cat": np.asarray(cat["ZWARN"], np.int64),
            "deltachi2_cat": np.asarray(cat["DELTACHI2"], float), "spectype_cat": cat["SPECTYPE"],
            "population": cat["population"], "source_file": np.full(z.size, coadd.name), "hash_u": sm["hash_u"],
            # real files are scored, not trained on, unless the sample trains its own model
            "split": np.full(z.size, "test") if kind == "desi_files" else sm["split"]}


# ------------------------------------------------------------------ Redrock templates


def build_rr_templates(manifest, out, *, n_basis: int, n_galaxies: int, blue: float, seed: int, code_files=()):
    """PCA templates (Redrock's BASIS_VECTORS FITS layout: log10 wavelength WCS, RRTYPE GALAXY)."""
    from astropy.io import fits

    from . import mock as M
    from .rrtemplates import build_templates

    t0 = time.perf_counter()
    basis = M.build_basis(manifest_files(manifest, "*.fits"))
    tpl = build_templates(basis, n_basis=n_basis, n_galaxies=n_galaxies, seed=seed, blue=blue)
    logw = np.log10(tpl["wave"])
    hdr = fits.Header({"CRVAL1": logw[0], "CDELT1": float(np.mean(np.diff(logw))), "CRPIX1": 1, "LOGLAM": 1,
                       "RRTYPE": "GALAXY", "RRSUBTYP": "", "RRVER": "specfm", "RRIGM": "Inoue14",
                       "INSTRUME": "DESI", "EXTNAME": "BASIS_VECTORS"})
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tpl["flux"].astype("f8"), header=hdr),
                         fits.ImageHDU(tpl["explained"], name="EXPLAINED")])
    hdus[0].header["COVERED"] = (tpl["covered_from"], "rest A from which the SSPs cover (zeros bluer)")
    with atomic_path(out) as tmp:
        hdus.writeto(tmp, overwrite=True)
    log.info("%s: %d PCA vectors from %d model galaxies (explained %s), %.1f s", out, n_basis, n_galaxies,
             np.round(np.cumsum(tpl["explained"]), 5).tolist(), time.perf_counter() - t0)
    provenance.write(out, inputs={"manifest": manifest}, params={"n_basis": n_basis, "n_galaxies": n_galaxies,
                     "blue": blue}, seed=seed, code=RR_CODE, code_files=code_files, step="redshift_rr_templates")


def read_rr_templates(path) -> dict:
    """{wave, flux} of a Redrock GALAXY template file: ours, or an official one (redshift.redrock.template_file).

    Read with Redrock's own reader, so a file it accepts (linear or log wavelength, any version) is
    read the same here; only the basis is kept, because the stage chooses the z grid itself."""
    from redrock.templates import Template

    try:
        tpl = Template(filename=str(path))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a Redrock template file ({exc})") from None
    if tpl.template_type != "GALAXY":
        raise ValueError(f"{path}: a Redrock {tpl.template_type} template; the redshift stage fits GALAXY ones")
    return {"wave": np.asarray(tpl.wave, float), "flux": np.asarray(tpl.flux, float)}


# ------------------------------------------------------------------ training


def pretrain(spectra, out, *, arch, tcfg, seed, gpu, threads, code_files=()):
    from .training import train_autoencoder

    summary = train_autoencoder(spectra, out, arch=arch, tcfg=tcfg, seed=seed, gpu=gpu, threads=threads)
    provenance.write(out, inputs={"spectra": spectra}, params={"arch": arch, "train": tcfg, "summary": summary},
                     seed=seed, code=MODEL_CODE, code_files=code_files, step="redshift_pretrain")


def train_fold(spectra, autoencoder, out, *, fold, folds, zarch, tcfg, seed, gpu, threads, code_files=()):
    from .training import train_fold as _train

    summary = _train(spectra, autoencoder, out, fold=int(fold), folds=folds, zarch=zarch, tcfg=tcfg, seed=seed,
                     gpu=gpu, threads=threads)
    provenance.write(out, inputs={"spectra": spectra, "autoencoder": autoencoder},
                     params={"fold": int(fold), "folds": folds, "z": zarch, "train": tcfg, "summary": summary},
                     seed=seed, code=MODEL_CODE, code_files=code_files, step="redshift_train_fold")


# ------------------------------------------------------------------ inference


def predict(spectra, autoencoder, folds, out, latents_out, *, gpu=0, threads=None, code_files=()):
    """Fold mean z and spread for every spectrum + the autoencoder's latents (for the UMAP)."""
    import torch

    from specfm.train import choose_device

    from .training import load_autoencoder, load_zmodel, predict_folds, run_model

    if threads:
        torch.set_num_threads(threads)
    device = choose_device(gpu)
    meta = read_meta(spectra)
    models = [load_zmodel(f)[0] for f in folds]
    rows = np.arange(meta["z"].size)
    zs, spreads, per_fold, secs = [], [], [], 0.0
    lat = []
    ae = load_autoencoder(autoencoder)[0]
    for s in range(0, rows.size, 4096):  # never the whole sample in memory
        flux, ivar = read_rows(spectra, rows[s:s + 4096])
        x = model_input(flux, ivar)
        z, sp, pf, sec = predict_folds(models, x, device)
        zs.append(z), spreads.append(sp), per_fold.append(pf)
        secs += sec
        lat.append(run_model(ae, x, device=device, method="latent"))
    z, spread, per_fold = np.concatenate(zs), np.concatenate(spreads), np.concatenate(per_fold, axis=1)
    table = pd.DataFrame({"TARGETID": meta["targetid"], "z_specpt": z, "z_specpt_err": spread})
    for k in range(per_fold.shape[0]):
        table[f"z_fold{k}"] = per_fold[k]
    table.attrs = {}
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(latents_out) as tmp:
        np.save(tmp, np.concatenate(lat).astype("f4"))
    timing = {"n": int(rows.size), "seconds": secs, "seconds_per_spectrum": secs / max(rows.size, 1),
              "device": str(device), "n_folds": len(folds)}
    write_json_atomic(Path(out).with_suffix(".timing.json"), timing)
    log.info("SpecPT: %d spectra, %d folds, %.3g s per spectrum", rows.size, len(folds), timing["seconds_per_spectrum"])
    for p in (out, latents_out):
        provenance.write(p, inputs={"spectra": spectra, "autoencoder": autoencoder,
                                    **{f"fold{k}": f for k, f in enumerate(folds)}},
                         params={"timing": timing}, code=MODEL_CODE, code_files=code_files, step="redshift_predict")


def redrock_rows(meta, n_max: int | None, split: str = "test") -> np.ndarray:
    """The spectra Redrock fits: the `split` ones, the first n_max by hash (a stable, unbiased subset)."""
    rows = np.flatnonzero(meta["split"] == split)
    rows = rows[np.argsort(meta["hash_u"][rows], kind="stable")]
    return np.sort(rows[:n_max] if n_max else rows)


def redrock(spectra, templates, out, *, zmin, zmax, dlogz, n_max, specpt=None, hybrid=None, code_files=()):
    """Redrock on the test split: full scan, or (with `specpt` + `hybrid` settings) the SpecPT-narrowed scan."""
    from . import rrfit

    meta = read_meta(spectra)
    rows = redrock_rows(meta, n_max)
    tpl = read_rr_templates(templates)
    flux, ivar = read_rows(spectra, rows)
    ids = meta["targetid"][rows]
    if specpt is None:
        table, sec = rrfit.fit_full(tpl, meta["wave"], flux, ivar, ids, zmin=zmin, zmax=zmax, dlogz=dlogz)
        step = "redshift_redrock"
    else:
        pred = pd.read_parquet(specpt).set_index("TARGETID").loc[ids]
        table, sec = rrfit.fit_hybrid(tpl, meta["wave"], flux, ivar, ids, pred["z_specpt"].to_numpy(),
                                      pred["z_specpt_err"].to_numpy(), zmin=zmin, zmax=zmax, dlogz=dlogz, **hybrid)
        step = "redshift_hybrid"
    df = pd.DataFrame({"TARGETID": ids, **table})
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    timing = {"n": int(rows.size), "seconds": sec, "seconds_per_spectrum": sec / max(rows.size, 1)}
    write_json_atomic(Path(out).with_suffix(".timing.json"), timing)
    log.info("%s: %d spectra, %.3g s per spectrum", step, rows.size, timing["seconds_per_spectrum"])
    inputs = {"spectra": spectra, "templates": templates, **({"specpt": specpt} if specpt else {})}
    provenance.write(out, inputs=inputs, params={"zmin": zmin, "zmax": zmax, "dlogz": dlogz, "n_max": n_max,
                     "hybrid": hybrid, "timing": timing}, code=RR_CODE, code_files=code_files, step=step)


def catalogue(spectra, specpt, redrock_fit, hybrid_fit, out, *, code_files=()):
    """One row per spectrum: SpecPT z, fold spread, Redrock and hybrid z (test subset), truth/catalogue z."""
    meta = read_meta(spectra)
    cols = {"TARGETID": meta["targetid"], "z_true": meta["z"], "split": meta["split"],
            "population": meta["population"], "snr": meta["snr"], "n_masked": meta["n_masked"]}
    for extra in ("rmag", "z_cat", "zwarn_cat", "deltachi2_cat", "spectype_cat", "source_file"):
        if extra in meta:
            cols[extra] = meta[extra]
    df = pd.DataFrame(cols)
    sp = pd.read_parquet(specpt)
    rr = pd.read_parquet(redrock_fit).rename(columns={"z": "z_redrock", "zerr": "z_redrock_err", "zwarn": "zwarn_redrock",
                                                      "deltachi2": "deltachi2_redrock", "chi2": "chi2_redrock"})
    hy = pd.read_parquet(hybrid_fit).rename(columns={"z": "z_hybrid", "zerr": "z_hybrid_err", "zwarn": "zwarn_hybrid",
                                                     "deltachi2": "deltachi2_hybrid", "chi2": "chi2_hybrid",
                                                     "window_lo": "hybrid_window_lo", "window_hi": "hybrid_window_hi"})
    df = df.merge(sp, on="TARGETID", how="left").merge(rr, on="TARGETID", how="left").merge(hy, on="TARGETID", how="left")
    for c in ("zwarn_redrock", "zwarn_hybrid"):
        df[c] = df[c].astype("Int64")
    # flags: 1 = SpecPT fold spread large (> 0.01 (1+z)), 2 = Redrock ZWARN != 0, 4 = true z outside the hybrid window
    flags = np.zeros(len(df), np.int32)
    flags |= np.where(df["z_specpt_err"] > 0.01 * (1 + df["z_specpt"]), 1, 0)
    flags |= np.where(df["zwarn_redrock"].fillna(0).to_numpy() != 0, 2, 0)
    outside = (df["z_true"] < df["hybrid_window_lo"]) | (df["z_true"] > df["hybrid_window_hi"])
    flags |= np.where(outside.fillna(False).to_numpy(), 4, 0)
    df["flags"] = flags
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("%s: %d rows, %d with Redrock", out, len(df), int(df["z_redrock"].notna().sum()))
    provenance.write(out, inputs={"spectra": spectra, "specpt": specpt, "redrock": redrock_fit, "hybrid": hybrid_fit},
                     code=["specfm.redshift.steps"], code_files=code_files, step="redshift_catalogue")


# ------------------------------------------------------------------ metrics, figures, ablation, bench

Z_EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6])
SNR_EDGES = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 1e9])
TARGETS = {"BGS": {"nmad": 0.0006, "eta": 0.002}, "ELG": {"nmad": 0.0008, "eta": 0.008}}


def _method_scores(df, col):
    from .metrics import binned, scores

    d = df[np.isfinite(df[col])]
    out = {"all": scores(d[col], d["z_true"])}
    for pop in ("BGS", "ELG"):
        sel = d["population"] == pop
        out[pop] = scores(d.loc[sel, col], d.loc[sel, "z_true"])
    out["per_z_bin"] = binned(d[col], d["z_true"], d["z_true"], Z_EDGES)
    out["per_snr_bin"] = binned(d[col], d["z_true"], d["snr"], SNR_EDGES)
    return out


def _ablation(spectra, fold0, variants: list, rows):
    """Test-split scores of the fold-0 model against the same fold trained with another choice."""
    from .metrics import scores
    from .training import load_zmodel, run_model

    meta = read_meta(spectra)
    flux, ivar = read_rows(spectra, rows)
    x, zt = model_input(flux, ivar), meta["z"][rows]
    out = {}
    for path in [fold0, *variants]:
        model, m = load_zmodel(path)
        out[m["config"]["pooling"]] = {"model": str(path), **scores(run_model(model, x), zt),
                                       "best_val_loss": m["summary"]["best_val_loss"]}
    return out


def metrics(catalogue_path, spectra, autoencoder, latents, folds, timings: dict, out, figures: dict, *,
            ablation=(), seed=0, trained_on=None, code_files=()):
    """Scores of SpecPT, Redrock and the hybrid against the truth (or the catalogue), figures, headline."""
    from specfm.train import load_final

    from .training import load_autoencoder

    df = pd.read_parquet(catalogue_path)
    meta = read_meta(spectra)
    test = df[df["split"] == "test"]
    sub = test[np.isfinite(test["z_redrock"])]
    result = {"sample": Path(catalogue_path).name.replace("_redshifts.parquet", ""), "trained_on": trained_on,
              "truth": "catalogue Redrock Z" if "z_cat" in df else "mock truth",
              "n": {"all": len(df), "test": len(test), "redrock_subset": len(sub)},
              "specpt": _method_scores(test, "z_specpt"),
              "specpt_on_redrock_subset": _method_scores(sub, "z_specpt"),
              "redrock": _method_scores(sub, "z_redrock"), "hybrid": _method_scores(sub, "z_hybrid")}
    t = {k: json.loads(Path(v).read_text()) for k, v in timings.items()}
    sps = {k: v["seconds_per_spectrum"] for k, v in t.items()}
    result["speed"] = {"seconds_per_spectrum": sps, "timings": t,
                       "redrock_over_specpt": sps["redrock"] / max(sps["specpt"], 1e-12),
                       "redrock_over_hybrid": sps["redrock"] / max(sps["hybrid"], 1e-12),
                       "note": "from the rules' own timings (separate jobs; see results/bench/redshift_speed.json "
                               "for one process on the same spectra)"}
    result["training"] = {"autoencoder": load_autoencoder(autoencoder)[1]["summary"],
                          "folds": [load_final(f)[1]["summary"] for f in folds]}
    if ablation:
        result["ablation"] = {"choice": "pooling of the head's tokens before the output layer (zmodel docstring)",
                              "fold": 0, "test": _ablation(spectra, folds[0], list(ablation),
                                                           np.flatnonzero(meta["split"] == "test"))}
    if "z_cat" in df:  # real spectra: both redshifts next to the catalogue's, printed in the log too
        result["objects"] = df[["TARGETID", "z_cat", "zwarn_cat", "deltachi2_cat", "z_specpt", "z_specpt_err",
                                "z_redrock", "z_hybrid", "source_file"]].to_dict(orient="records")
        for r in result["objects"]:
            log.info("TARGETID %s (%s): catalogue z %.5f | SpecPT %.5f +- %.5f | Redrock %.5f | hybrid %.5f",
                     r["TARGETID"], r["source_file"], r["z_cat"], r["z_specpt"], r["z_specpt_err"],
                     r["z_redrock"], r["z_hybrid"])
    result["headline"] = _headline(result)
    _figures(df, test, meta, spectra, autoencoder, latents, figures, seed)
    write_json_atomic(out, result)
    log.info("metrics: %s", json.dumps(result["headline"]))
    inputs = {"catalogue": catalogue_path, "spectra": spectra, "autoencoder": autoencoder, "latents": latents,
              **{f"fold{k}": f for k, f in enumerate(folds)}, **{f"timing_{k}": v for k, v in timings.items()},
              **{f"ablation{k}": v for k, v in enumerate(ablation)}}
    code = ["specfm.redshift.metrics", "specfm.redshift.steps", "specfm.redshift.figures"]
    for product in [out, *figures.values()]:
        provenance.write(product, inputs=inputs, code=code, code_files=code_files, seed=seed, step="redshift_metrics")


def _headline(r) -> list[dict]:
    h = []
    for pop in ("BGS", "ELG"):
        s = r["specpt"][pop]
        if s["n"]:
            target = TARGETS[pop]
            for key, name in (("nmad", "NMAD"), ("eta", "eta")):
                h.append({"metric": f"SpecPT {name} {pop}-like (test, n={s['n']})", "value": s[key],
                          "reference": "SpecPT paper", "reference_value": target[key], "target": target[key]})
    rr, hy = r["redrock"]["all"], r["hybrid"]["all"]
    if rr["n"]:
        h.append({"metric": f"Redrock NMAD (test subset, n={rr['n']})", "value": rr["nmad"],
                  "reference": "SpecPT on the same spectra",
                  "reference_value": r["specpt_on_redrock_subset"]["all"]["nmad"], "target": None})
        h.append({"metric": f"hybrid NMAD (test subset, n={hy['n']})", "value": hy["nmad"],
                  "reference": "Redrock NMAD x 1.5", "reference_value": rr["nmad"],
                  "target": 1.5 * rr["nmad"] if rr["nmad"] is not None else None})
    sp = r["speed"]
    h.append({"metric": "Redrock / SpecPT seconds per spectrum", "value": sp["redrock_over_specpt"],
              "reference": "issue target", "reference_value": 100.0, "target": 100.0})
    h.append({"metric": "Redrock / hybrid seconds per spectrum", "value": sp["redrock_over_hybrid"],
              "reference": "issue target", "reference_value": 10.0, "target": 10.0})
    return h


def _figures(df, test, meta, spectra, autoencoder, latents, figures, seed):
    from . import figures as F
    from .training import load_autoencoder, run_model

    rows = []
    for pop in ("BGS", "ELG", "UNK"):
        cand = np.flatnonzero((meta["split"] == "test") & (meta["population"] == pop))
        rows.extend(cand[:2].tolist())
    rows = np.array(rows[:4] or [0])
    flux, ivar = read_rows(spectra, rows)
    ae = load_autoencoder(autoencoder)[0]
    recon = run_model(ae, model_input(flux, ivar))
    labels = [f"TARGETID {meta['targetid'][r]}  {meta['population'][r]}  z = {meta['z'][r]:.4f}" for r in rows]
    F.reconstructions(meta["wave"], flux, ivar, recon, labels, figures["reconstructions"])
    F.z_vs_true(test, figures["z_vs_true"])
    F.residual_histograms(test, figures["residual_hist"])
    F.residual_per_zbin(test, Z_EDGES, figures["residual_zbins"])
    lat = np.load(latents)
    F.umap_latents(lat, meta["z"], figures["umap"], seed=seed)


def bench(spectra, templates, folds, out, *, n: int, zmin, zmax, dlogz, hybrid: dict, threads: int = 1,
          code_files=()):
    """SpecPT, Redrock and the hybrid timed in ONE process on the same n test spectra, one thread."""
    import os
    import platform

    import torch

    from . import rrfit
    from .training import load_zmodel, predict_folds

    torch.set_num_threads(threads)
    meta = read_meta(spectra)
    rows = redrock_rows(meta, n)
    flux, ivar = read_rows(spectra, rows)
    ids, wave, zt = meta["targetid"][rows], meta["wave"], meta["z"][rows]
    tpl = read_rr_templates(templates)
    models = [load_zmodel(f)[0] for f in folds]
    predict_folds(models, model_input(flux[:2], ivar[:2]))  # warm-up (first-call allocations)
    rrfit.fit_full(tpl, wave, flux[:1], ivar[:1], ids[:1], zmin=zmin, zmax=zmax, dlogz=dlogz)  # numba compile
    t0 = time.perf_counter()
    z, spread, _, _ = predict_folds(models, model_input(flux, ivar))
    t_specpt = time.perf_counter() - t0
    full, t_full = rrfit.fit_full(tpl, wave, flux, ivar, ids, zmin=zmin, zmax=zmax, dlogz=dlogz)
    hyb, t_hyb = rrfit.fit_hybrid(tpl, wave, flux, ivar, ids, z, spread, zmin=zmin, zmax=zmax, dlogz=dlogz, **hybrid)
    from .metrics import scores

    res = {"n": int(rows.size), "threads": threads, "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "n_folds": len(folds),
           "seconds_per_spectrum": {"specpt": t_specpt / rows.size, "redrock": t_full / rows.size,
                                    "hybrid": t_hyb / rows.size},
           "redrock_over_specpt": t_full / max(t_specpt, 1e-12), "redrock_over_hybrid": t_full / max(t_hyb, 1e-12),
           "scores": {"specpt": scores(z, zt), "redrock": scores(full["z"], zt), "hybrid": scores(hyb["z"], zt)},
           "note": "SpecPT: all fold models, batched, model input prepared inside the timing; Redrock: one "
                   "template rebin shared by the batch (included), numba compiled before timing"}
    write_json_atomic(out, res)
    log.info("speed: %s", json.dumps(res["seconds_per_spectrum"]))
    provenance.write(out, inputs={"spectra": spectra, "templates": templates}, params={"n": n, "hybrid": hybrid},
                     code=[*RR_CODE, *MODEL_CODE], code_files=code_files, step="redshift_bench")


# ------------------------------------------------------------------ desi kind (network)


def read_zcatalog(path, columns=None) -> dict:
    """The columns of a DESI zcatalog (zall-pix-*/zpix-*: ZCATALOG HDU, else the first table)."""
    import fitsio

    try:
        with fitsio.FITS(str(path)) as fx:
            ext = next((h.get_extname() for h in fx if h.get_extname() == "ZCATALOG"), 1)
            data = fx[ext].read(columns=columns)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable redshift catalogue ({exc})") from exc
    return {c: data[c].astype(data[c].dtype.newbyteorder("=")) for c in data.dtype.names}  # FITS is big-endian


def select_targets(zcatalog, out_targets, out_pixels, *, cuts: dict, max_targets=None, source_pin=None,
                   code_files=()):
    """zcatalog -> the selected targets (TARGETID, SURVEY, PROGRAM, HEALPIX, population, Z...) and
    the healpix pixels that hold them (the per-pixel fetch jobs). ``source_pin``: the zcatalog
    source's pin, checked before use (`specfm.fetch.sources.checked_source_file`)."""
    from specfm.fetch.sources import checked_source_file

    from .desi import select

    checked_source_file(zcatalog, source_pin)
    t = read_zcatalog(zcatalog)
    for col in ("TARGETID", "SURVEY", "PROGRAM", "HEALPIX"):
        if col not in t:
            raise ValueError(f"{zcatalog}: column {col} is missing; cannot locate the healpix files")
    label = select(t, cuts, name=str(zcatalog))
    keep = np.flatnonzero(label != "")
    if max_targets and keep.size > max_targets:
        u = G.hash_unit(t["TARGETID"][keep])
        keep = np.sort(keep[np.argsort(u, kind="stable")[:max_targets]])
    df = pd.DataFrame({"TARGETID": t["TARGETID"][keep], "SURVEY": np.char.strip(t["SURVEY"][keep].astype(str)),
                       "PROGRAM": np.char.strip(t["PROGRAM"][keep].astype(str)),
                       "HEALPIX": t["HEALPIX"][keep].astype(np.int64), "population": label[keep],
                       **{c: t[c][keep] for c in ("Z", "ZERR", "ZWARN", "DELTACHI2") if c in t},
                       **({"SPECTYPE": np.char.strip(t["SPECTYPE"][keep].astype(str))} if "SPECTYPE" in t else {})})
    with atomic_path(out_targets) as tmp:
        df.to_parquet(tmp, index=False)
    pix = df[["SURVEY", "PROGRAM", "HEALPIX"]].drop_duplicates().sort_values(["SURVEY", "PROGRAM", "HEALPIX"])
    write_json_atomic(out_pixels, {"pixels": [{"survey": s, "program": p, "healpix": int(h)}
                                              for s, p, h in pix.itertuples(index=False)],
                                   "n_targets": int(len(df)),
                                   "by_population": df["population"].value_counts().to_dict()})
    log.info("%s: %d of %d rows selected (%s) in %d healpix pixels", zcatalog, len(df), len(label),
             df["population"].value_counts().to_dict(), len(pix))
    provenance.write(out_targets, inputs={"zcatalog": zcatalog}, params={"cuts": cuts, "max_targets": max_targets},
                     code=["specfm.redshift.desi", "specfm.redshift.steps"], code_files=code_files,
                     step="redshift_select")


def pixel_url(base_url: str, survey: str, program: str, healpix: int, kind: str) -> str:
    """DESI public tree: {base}/{survey}/{program}/{healpix // 100}/{healpix}/{kind}-{survey}-{program}-{healpix}.fits"""
    hp = int(healpix)
    return f"{base_url.rstrip('/')}/{survey}/{program}/{hp // 100}/{hp}/{kind}-{survey}-{program}-{hp}.fits"


def fetch_pixel(out, *, base_url, survey, program, healpix, kind, lock, fetch: dict):
    """One healpix file through the fetch layer: resumable, retried, sha256 trust-on-first-use in the lock
    (DESI publishes no per-file checksum we can pin here)."""
    from specfm.fetch.sources import fetch_source

    url = pixel_url(base_url, survey, program, healpix, kind)
    name = f"redshift_desi/{survey}/{program}/{healpix}"
    fetch_source(name, {"kind": "http", "urls": [url], "filename": Path(out).name, "sha256": None}, Path(out),
                 lock_path=lock, **fetch)
