# stars: Masked Stellar Autoencoder (seed 004). Gaia XP + photometry -> feature table (Parquet,
# streamed) -> masked pretraining -> quantile fine-tuning (deep ensemble: one job per member, the
# member number is the seed) -> ensemble catalogue -> metrics and figures.

include: "helpers/stars.smk"


rule stars_features:
    """One partition's raw rows -> features, validity mask, labels, split (Parquet) + the
    training-split reservoir its scaling statistics are merged from."""
    input:
        unpack(stars_part_input),
    output:
        table=with_prov("results/interim/stars/{sample}/features/{part}.parquet"),
        reservoir="results/interim/stars/{sample}/features/{part}.reservoir.npz",
    log:
        "logs/stars/{sample}/features_{part}.log",
    wildcard_constraints:
        part=r"[A-Za-z0-9_]+",
    cache: True
    params:
        kind=stars_sample_kind,
        max_rows=stars_sample_max_rows,
        healpix_level=STARS["healpix_level"],
        features=STARS["features"],
        seed=derived_seed("stars_features"),
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../../scripts/stars_features.py"


rule stars_dust_sfd:
    """The SFD E(B-V) maps (two 64 MB FITS files), downloaded once by dustmaps (network)."""
    output:
        [f"{SFD_DIR}/{name}" for name in SFD_FILES],
    log:
        "logs/stars/dust_sfd.log",
    benchmark:
        rule_bench("stars_dust_sfd"),
    params:
        lock=config["checksum_lock"],
    resources:
        mem_mb=1000,
        runtime=60,
    localrule: True
    script:
        "../../scripts/stars_dust_sfd.py"


rule stars_scaling:
    """Median/IQR of every feature and label over the sample's training split (all partitions)."""
    input:
        reservoirs=stars_reservoirs,
    output:
        with_prov("results/interim/stars/{sample}_scaling.json"),
    log:
        "logs/stars/{sample}_scaling.log",
    benchmark:
        rule_bench("stars_scaling_{sample}"),
    params:
        reservoir=STARS["features"]["reservoir"],
        seed=derived_seed("stars_scaling"),
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/stars_scaling.py"


rule stars_pretrain:
    """Masked pretraining (reconstruction only), streamed from the training split; GPU if granted."""
    input:
        features=stars_feature_files,
        scaling="results/interim/stars/{sample}_scaling.json",
    output:
        with_prov("results/models/stars/{sample}_pretrain.pt"),
    log:
        "logs/stars/{sample}_pretrain.log",
    benchmark:
        rule_bench("stars_pretrain_{sample}"),
    params:
        stage="pretrain",
        settings=stars_stage_settings("pretrain"),
        seed=derived_seed("stars_pretrain"),
    threads: STARS["train"]["threads"]
    priority: LONG_CHAIN_PRIORITY["stars"]
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/stars_train.py"


rule stars_finetune:
    """One ensemble member: quantile head + reconstruction, encoder unfrozen, masking kept on."""
    input:
        features=stars_feature_files,
        scaling="results/interim/stars/{sample}_scaling.json",
        pretrained="results/models/stars/{sample}_pretrain.pt",
    output:
        with_prov("results/models/stars/{sample}_member{member}.pt"),
    log:
        "logs/stars/{sample}_member{member}.log",
    benchmark:
        rule_bench("stars_finetune_{sample}_{member}"),
    params:
        stage="finetune",
        settings=stars_stage_settings("finetune"),
        seed=stars_member_seed,
    threads: STARS["train"]["threads"]
    priority: LONG_CHAIN_PRIORITY["stars"]
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=train_resources("stars", "mem_mb"),
        runtime=train_resources("stars", "runtime"),
    script:
        "../../scripts/stars_train.py"


rule stars_calibration:
    """The ensemble's 16/84 widths scaled per label, XP visible / hidden, so that the z-scores of
    the validation split have std 1 (fitted on validation only; specfm.stars.calibration)."""
    input:
        features=stars_feature_files,
        members=stars_members,
    output:
        with_prov("results/models/stars/{sample}_calibration.json"),
    log:
        "logs/stars/{sample}_calibration.log",
    benchmark:
        rule_bench("stars_calibration_{sample}"),
    params:
        settings=STARS["calibration"],
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/stars_calibration.py"


rule stars_predict:
    """Every member on every star, with and without XP -> one catalogue with 16/50/84 per label
    (widths calibrated on the trained sample's validation split)."""
    input:
        features=stars_feature_files,
        members=stars_members,
        calibration=stars_calibration_file,
    output:
        with_prov("results/stars/{sample}_predictions.parquet"),
    log:
        "logs/stars/{sample}_predict.log",
    benchmark:
        rule_bench("stars_predict_{sample}"),
    resources:
        gpu=train_resources("stars", "gpu"),
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/stars_predict.py"


rule stars_baseline:
    """The classical baseline: LightGBM per label on the same features and training split, with
    all features and with the XP columns left out -> its catalogue (compared in stars_metrics)."""
    input:
        features=stars_feature_files,
    output:
        with_prov("results/stars/{sample}_baseline.parquet"),
    log:
        "logs/stars/{sample}_baseline.log",
    benchmark:
        rule_bench("stars_baseline_{sample}"),
    params:
        settings=stars_baseline_settings,
        seed=derived_seed("stars_baseline"),
    threads: STARS["baseline"]["threads"]
    resources:
        mem_mb=STARS["baseline"]["mem_mb"],
        runtime=STARS["baseline"]["runtime"],
    script:
        "../../scripts/stars_baseline.py"


rule stars_bench:
    """Benchmarks: feature-build memory and throughput at stars.bench.rows replicated rows,
    pretraining rows/s and the stream's rows/s per worker count (also: python -m specfm.stars.bench)."""
    input:
        features=stars_feature_files,
        scaling="results/interim/stars/{sample}_scaling.json",
    output:
        features="results/bench/stars_features_{sample}.json",
        train="results/bench/stars_train_{sample}.json",
        stream="results/bench/stars_stream_{sample}.json",
    log:
        "logs/stars/{sample}_bench.log",
    benchmark:
        rule_bench("stars_bench_{sample}"),
    params:
        bench=STARS["bench"],
        arch=STARS["model"],
        train=STARS["pretrain"],
    threads: STARS["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/stars_bench.py"


rule stars_metrics:
    """Held-out scores with and without XP (Table 4.1 layout), beside the trees' and on the FGK
    stars, the targets against the trees, and the figures (Figs 4.1-4.7 + MSA vs trees)."""
    input:
        predictions="results/stars/{sample}_predictions.parquet",
        baseline="results/stars/{sample}_baseline.parquet",
        features=stars_feature_files,
        members=stars_members,
        calibration=stars_calibration_file,
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
    benchmark:
        rule_bench("stars_metrics_{sample}"),
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/stars_metrics.py"


rule stars_archive_partition:
    """One HEALPix partition of an archive sample: every source query by source_id range."""
    input:
        unpack(stars_archive_inputs),
    output:
        "resources/stars/{sample}/raw/hpx{hpx}.parquet",
    log:
        "logs/stars/{sample}/archive_hpx{hpx}.log",
    benchmark:
        rule_bench("stars_archive_partition_{sample}_{hpx}"),
    wildcard_constraints:
        hpx=r"\d+",
    params:
        kind=stars_sample_kind,
        cuts=stars_archive_cuts,
        level=STARS["healpix_level"],
        archive=STARS_ARCHIVE,
        xp_dir="resources/stars/xp_bulk",
    resources:
        mem_mb=STARS_ARCHIVE["mem_mb"],
        runtime=STARS_ARCHIVE["runtime"],
        archive_tap=1,
    script:
        "../../scripts/stars_archive_fetch.py"


rule stars_archive_cone:
    """A targets sample (cluster, dwarf galaxy): one Gaia cone + DataLink XP."""
    input:
        unpack(stars_archive_inputs),
    output:
        "resources/stars/{sample}/raw/cone.parquet",
    log:
        "logs/stars/{sample}/archive_cone.log",
    benchmark:
        rule_bench("stars_archive_cone_{sample}"),
    params:
        kind="targets",
        cuts=stars_archive_cuts,
        ra=stars_cone_ra,
        dec=stars_cone_dec,
        radius=stars_cone_radius,
        level=STARS["healpix_level"],
        archive=STARS_ARCHIVE,
    resources:
        mem_mb=STARS_ARCHIVE["mem_mb"],
        runtime=STARS_ARCHIVE["runtime"],
        archive_tap=1,
    script:
        "../../scripts/stars_archive_fetch.py"


rule stars_archive_labels:
    """APOGEE DR17 (+ astroNN, Leung et al. 2023 ages), GALAH DR4, RAVE DR6 -> one label table."""
    input:
        **stars_archive_label_sources(),
    output:
        "resources/stars/labels.parquet",
    log:
        "logs/stars/archive_labels.log",
    benchmark:
        rule_bench("stars_archive_labels"),
    params:
        priority=STARS_ARCHIVE["labels"]["priority"],
        pins=stars_archive_label_pins(),
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../../scripts/stars_archive_labels.py"


rule stars_archive_xp_index:
    """The ESA XP bulk directory's file list with md5s; partitions fetch the files they overlap."""
    output:
        "resources/stars/xp_bulk/_MD5SUM.txt",
    log:
        "logs/stars/archive_xp_index.log",
    benchmark:
        rule_bench("stars_archive_xp_index"),
    params:
        url=STARS_ARCHIVE["xp_bulk"]["url"],
    resources:
        mem_mb=500,
        runtime=10,
    localrule: True
    script:
        "../../scripts/stars_archive_xp_index.py"
