# redshift: SpecPT (seed 002). DESI spectra -> autoencoder -> redshift head, k-fold.
# No issue is open for it yet; the rules fix the layout of its products.

RZ = config["redshift"]


def redshift_targets():
    return [f"results/redshift/{sample}_metrics.json" for sample in RZ["build"]]


def redshift_sample_input(wildcards):
    sample = RZ["samples"][wildcards.sample]
    return manifest_path(sample["source"]) if "source" in sample else []


def redshift_folds(wildcards):
    return [f"results/models/redshift/{wildcards.sample}_fold{k}.pt" for k in range(RZ["folds"])]


rule redshift_spectra:
    input:
        redshift_sample_input,
    output:
        with_prov("results/interim/redshift/{sample}_spectra.h5"),
    log:
        "logs/redshift/{sample}_spectra.log",
    cache: True
    params:
        **pending("redshift (not yet filed)"),
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/pending.py"


rule redshift_pretrain:
    input:
        "results/interim/redshift/{sample}_spectra.h5",
    output:
        with_prov("results/models/redshift/{sample}_autoencoder.pt"),
    log:
        "logs/redshift/{sample}_pretrain.log",
    params:
        **pending("redshift (not yet filed)"),
    threads: 2
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=train_resources("redshift", "mem_mb"),
        runtime=train_resources("redshift", "runtime"),
    script:
        "../../scripts/pending.py"


rule redshift_train_fold:
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        autoencoder="results/models/redshift/{sample}_autoencoder.pt",
    output:
        with_prov("results/models/redshift/{sample}_fold{fold}.pt"),
    log:
        "logs/redshift/{sample}_fold{fold}.log",
    params:
        **pending("redshift (not yet filed)"),
    threads: 2
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=train_resources("redshift", "mem_mb"),
        runtime=train_resources("redshift", "runtime"),
    script:
        "../../scripts/pending.py"


rule redshift_metrics:
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        folds=redshift_folds,
    output:
        "results/redshift/{sample}_metrics.json",
    log:
        "logs/redshift/{sample}_metrics.log",
    params:
        **pending("redshift (not yet filed)"),
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/pending.py"
