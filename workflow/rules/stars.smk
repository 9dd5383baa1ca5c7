# stars: Masked Stellar Autoencoder (seed 004). Gaia XP + photometry -> masked pretraining ->
# quantile fine-tuning (deep ensemble: one job per member) -> catalogues. Lands with issue #4.

STARS = config["stars"]


def stars_targets():
    return [
        f"results/stars/{sample}_{product}"
        for sample in STARS["build"]
        for product in ("predictions.parquet", "metrics.json")
    ]


def stars_sample_input(wildcards):
    sample = STARS["samples"][wildcards.sample]
    return manifest_path(sample["source"]) if "source" in sample else []


def stars_members(wildcards):
    return [
        f"results/models/stars/{wildcards.sample}_member{m}.pt"
        for m in range(STARS["ensemble_size"])
    ]


rule stars_features:
    input:
        stars_sample_input,
    output:
        with_prov("results/interim/stars/{sample}_features.parquet"),
    log:
        "logs/stars/{sample}_features.log",
    cache: True
    params:
        **pending(4),
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../../scripts/pending.py"


rule stars_pretrain:
    input:
        "results/interim/stars/{sample}_features.parquet",
    output:
        with_prov("results/models/stars/{sample}_pretrain.pt"),
    log:
        "logs/stars/{sample}_pretrain.log",
    params:
        **pending(4),
    threads: 2
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/pending.py"


rule stars_finetune:
    input:
        features="results/interim/stars/{sample}_features.parquet",
        pretrained="results/models/stars/{sample}_pretrain.pt",
    output:
        with_prov("results/models/stars/{sample}_member{member}.pt"),
    log:
        "logs/stars/{sample}_member{member}.log",
    params:
        **pending(4),
    threads: 2
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/pending.py"


rule stars_predict:
    input:
        features="results/interim/stars/{sample}_features.parquet",
        members=stars_members,
    output:
        with_prov("results/stars/{sample}_predictions.parquet"),
    log:
        "logs/stars/{sample}_predict.log",
    params:
        **pending(4),
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=8000,
        runtime=30,
    script:
        "../../scripts/pending.py"


rule stars_metrics:
    input:
        "results/stars/{sample}_predictions.parquet",
    output:
        "results/stars/{sample}_metrics.json",
    log:
        "logs/stars/{sample}_metrics.log",
    params:
        **pending(4),
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../../scripts/pending.py"
