# Constants and helper functions of the rules in workflow/rules/redshift.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

from specfm.redshift.products import FIGURES as RZ_FIGURES

RZ = config["redshift"]
RZ_TEMPLATES = "results/interim/redshift/rr_templates.fits"


def redshift_templates():
    """The Redrock templates the scans use: a configured template file (official redrock-templates,
    $VARS expanded), or the PCA templates rule redshift_rr_templates builds from the SSPs."""
    given = RZ["redrock"]["template_file"]
    return os.path.expandvars(given) if given else RZ_TEMPLATES
RZ_SPEED = "results/bench/redshift_speed.json"


def redshift_trained(sample):
    """The sample whose models predict `sample`: its `model`, or itself."""
    return RZ["samples"][sample].get("model") or sample


def redshift_targets():
    out = [f"results/redshift/{s}_{kind}" for s in RZ["build"] for kind in ("redshifts.parquet", "metrics.json")]
    out += [f"results/redshift/figures/{s}_{name}.png" for s in RZ["build"] for name in RZ_FIGURES]
    if RZ["bench"]["sample"]:
        out.append(RZ_SPEED)
    return out


def redshift_demo_targets():
    return redshift_targets()


def redshift_metrics_files():
    return [f"results/redshift/{s}_metrics.json" for s in RZ["build"]]


def redshift_report_figures():
    """(figure, caption) pairs for the HTML report."""
    return [(f"results/redshift/figures/{s}_{name}.png", f"workflow/report/redshift_{name}.rst")
            for s in RZ["build"] for name in RZ_FIGURES]


def redshift_trained_sample(wildcards):
    return redshift_trained(wildcards.sample)


def redshift_sample_input(wildcards):
    """What a sample's spectra are built from (named: files, and for desi its selection): the SSP
    manifest (mock), a source's manifest of coadd + redrock files (desi_files), or the fetched healpix
    files plus the selection table that says which of their targets to keep and how to label them (desi)."""
    sample = RZ["samples"][wildcards.sample]
    if sample["kind"] == "desi":
        return {"files": desi_pixel_files(wildcards.sample),
                "selection": f"results/interim/redshift/{wildcards.sample}_selection.parquet"}
    return {"files": [manifest_path(sample["source"])]}


def redshift_kind(wildcards):
    return RZ["samples"][wildcards.sample]["kind"]


def redshift_seed(wildcards):
    return derived_seed("redshift_spectra", wildcards.sample)


def redshift_fold_seed(wildcards):
    return derived_seed("redshift_fold", wildcards.sample, wildcards.fold)


def redshift_folds(wildcards):
    trained = redshift_trained(wildcards.sample)
    return [f"results/models/redshift/{trained}_fold{k}.pt" for k in range(RZ["folds"])]


def redshift_autoencoder(wildcards):
    return f"results/models/redshift/{redshift_trained(wildcards.sample)}_autoencoder.pt"


def redshift_ablation_models(wildcards):
    if redshift_trained(wildcards.sample) != wildcards.sample:
        return []
    return [f"results/models/redshift/{wildcards.sample}_fold0_{p}.pt" for p in RZ["ablation"]["pooling"]]


def redshift_pretrain_settings():
    """Autoencoder pretraining: redshift.pretrain, and how the split is held (redshift.data)."""
    return {**RZ["pretrain"], "data": RZ["data"]}


def redshift_finetune_settings():
    """Fold training: epochs / patience / batch size from redshift.train, the rest from finetune."""
    t = RZ["train"]
    return {"epochs": t["epochs"], "patience": t["patience"], "batch_size": t["batch_size"], **RZ["finetune"],
            "data": RZ["data"]}


def redshift_head(pooling=None):
    return {**RZ["head"], **({"pooling": pooling} if pooling else {})}


def redshift_ablation_head(wildcards):
    return redshift_head(wildcards.pooling)


def redshift_timings(wildcards):
    s = wildcards.sample
    return {"specpt": f"results/interim/redshift/{s}_specpt.timing.json",
            "redrock": f"results/interim/redshift/{s}_redrock.timing.json",
            "hybrid": f"results/interim/redshift/{s}_hybrid.timing.json"}


def redshift_bench_input(wildcards):
    s = RZ["bench"]["sample"]
    return {"spectra": f"results/interim/redshift/{s}_spectra.h5", "templates": redshift_templates(),
            "folds": [f"results/models/redshift/{redshift_trained(s)}_fold{k}.pt" for k in range(RZ["folds"])]}


# --- desi kind (full scale, network): zcatalog -> cuts -> one fetch job per healpix pixel ---
def desi_pixel_files(sample):
    """The coadd + redrock files of the pixels that hold selected targets (after the selection checkpoint)."""
    table = checkpoints.redshift_select.get(sample=sample).output.pixels
    import json as _json

    pixels = _json.loads(open(table).read())["pixels"]
    return [f"resources/redshift/{sample}/{p['survey']}/{p['program']}/{p['healpix']}/{kind}-{p['survey']}-"
            f"{p['program']}-{p['healpix']}.fits" for p in pixels for kind in ("coadd", "redrock")]


def redshift_zcatalog(wildcards):
    return archive_path(RZ["samples"][wildcards.sample]["zcatalog"])


def redshift_zcatalog_pin(wildcards):
    """The zcatalog source's pin, checked before use (a file placed by hand skips the fetch rule)."""
    return unpack_pin(RZ["samples"][wildcards.sample]["zcatalog"])


def redshift_cuts(wildcards):
    return RZ["samples"][wildcards.sample].get("cuts", RZ["cuts"])


def redshift_max_targets(wildcards):
    return RZ["samples"][wildcards.sample].get("max_targets")
