# redshift: SpecPT (seed 002) with Redrock side by side (issue 8).
#
#   sample (mock | desi_files | desi) -> spectra.h5 (one grid, split) -> autoencoder -> fold models
#   -> SpecPT z (fold mean, spread) + latents;  SSPs -> Redrock PCA templates -> Redrock full scan and
#   hybrid (SpecPT-narrowed) on the test split -> catalogue -> metrics + figures; speed benchmark.
# A sample with `model: OTHER` (e.g. the real DESI fixtures) is predicted by OTHER's models.

include: "helpers/redshift.smk"


rule redshift_spectra:
    """Sample -> arms merged by inverse variance onto redshift.grid, masked, median-normalised, split
    by a stable hash of TARGETID (chunked HDF5)."""
    input:
        unpack(redshift_sample_input),
    output:
        with_prov("results/interim/redshift/{sample}_spectra.h5"),
    log:
        "logs/redshift/{sample}_spectra.log",
    cache: True
    params:
        kind=redshift_kind,
        grid=RZ["grid"],
        mock=RZ["mock"],
        seed=redshift_seed,
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../../scripts/redshift_spectra.py"


rule redshift_rr_templates:
    """Redrock PCA templates from the E-MILES SSPs + emission lines (Redrock's BASIS_VECTORS layout)."""
    input:
        manifest=manifest_path(RZ["redrock"]["source"]),
    output:
        with_prov(RZ_TEMPLATES),
    log:
        "logs/redshift/rr_templates.log",
    cache: True
    params:
        n_basis=RZ["redrock"]["n_basis"],
        n_galaxies=RZ["redrock"]["n_galaxies"],
        blue=RZ["redrock"]["template_blue"],
        seed=derived_seed("redshift_rr_templates"),
    resources:
        mem_mb=3000,
        runtime=20,
    script:
        "../../scripts/redshift_rr_templates.py"


rule redshift_pretrain:
    """SpecPT autoencoder: masked reconstruction on the train split (GPU if granted)."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
    output:
        with_prov("results/models/redshift/{sample}_autoencoder.pt"),
    log:
        "logs/redshift/{sample}_pretrain.log",
    benchmark:
        rule_bench("redshift_pretrain_{sample}"),
    params:
        arch=RZ["model"],
        train=redshift_pretrain_settings(),
        seed=derived_seed("redshift_pretrain"),
    threads: RZ["train"]["threads"]
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=train_resources("redshift", "mem_mb"),
        runtime=train_resources("redshift", "runtime"),
    script:
        "../../scripts/redshift_pretrain.py"


rule redshift_train_fold:
    """One fold: pretrained encoder + residual-MLP / attention / Softplus head, NMAD loss (eq. 3)."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        autoencoder="results/models/redshift/{sample}_autoencoder.pt",
    output:
        with_prov("results/models/redshift/{sample}_fold{fold}.pt"),
    log:
        "logs/redshift/{sample}_fold{fold}.log",
    benchmark:
        rule_bench("redshift_train_fold_{sample}_{fold}"),
    params:
        folds=RZ["folds"],
        head=redshift_head(),
        train=redshift_finetune_settings(),
        seed=redshift_fold_seed,
    threads: RZ["train"]["threads"]
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=train_resources("redshift", "mem_mb"),
        runtime=train_resources("redshift", "runtime"),
    script:
        "../../scripts/redshift_train_fold.py"


rule redshift_ablation:
    """Fold 0 again with another head pooling (the choice the paper leaves open), for the metrics."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        autoencoder="results/models/redshift/{sample}_autoencoder.pt",
    output:
        with_prov("results/models/redshift/{sample}_fold0_{pooling}.pt"),
    log:
        "logs/redshift/{sample}_fold0_{pooling}.log",
    benchmark:
        rule_bench("redshift_ablation_{sample}_{pooling}"),
    wildcard_constraints:
        pooling="flatten|mean",
    params:
        fold=0,
        folds=RZ["folds"],
        head=redshift_ablation_head,
        train=redshift_finetune_settings(),
        seed=derived_seed("redshift_fold", "ablation", 0),
    threads: RZ["train"]["threads"]
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=train_resources("redshift", "mem_mb"),
        runtime=train_resources("redshift", "runtime"),
    script:
        "../../scripts/redshift_train_fold.py"


rule redshift_predict:
    """Every fold model on every spectrum: z = fold mean, z_err = fold spread; autoencoder latents."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        autoencoder=redshift_autoencoder,
        folds=redshift_folds,
    output:
        table=with_prov("results/interim/redshift/{sample}_specpt.parquet"),
        latents=with_prov("results/interim/redshift/{sample}_latents.npy"),
        timing="results/interim/redshift/{sample}_specpt.timing.json",
    log:
        "logs/redshift/{sample}_predict.log",
    benchmark:
        rule_bench("redshift_predict_{sample}"),
    threads: RZ["train"]["threads"]
    resources:
        gpu=train_resources("redshift", "gpu"),
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/redshift_predict.py"


rule redshift_redrock:
    """Redrock, full chi^2 scan over redshift.redrock z range, on the test split (first n_max by hash)."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        templates=redshift_templates(),
    output:
        table=with_prov("results/interim/redshift/{sample}_redrock.parquet"),
        timing="results/interim/redshift/{sample}_redrock.timing.json",
    log:
        "logs/redshift/{sample}_redrock.log",
    cache: True
    params:
        redrock=RZ["redrock"],
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../../scripts/redshift_redrock.py"


rule redshift_hybrid:
    """Redrock scanning only SpecPT's z +- window (redshift.hybrid) on the same spectra."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        templates=redshift_templates(),
        specpt="results/interim/redshift/{sample}_specpt.parquet",
    output:
        table=with_prov("results/interim/redshift/{sample}_hybrid.parquet"),
        timing="results/interim/redshift/{sample}_hybrid.timing.json",
    log:
        "logs/redshift/{sample}_hybrid.log",
    benchmark:
        rule_bench("redshift_hybrid_{sample}"),
    params:
        redrock=RZ["redrock"],
        hybrid=RZ["hybrid"],
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../../scripts/redshift_redrock.py"


rule redshift_catalogue:
    """One row per spectrum: SpecPT, Redrock and hybrid z, truth / catalogue z, flags."""
    input:
        spectra="results/interim/redshift/{sample}_spectra.h5",
        specpt="results/interim/redshift/{sample}_specpt.parquet",
        redrock="results/interim/redshift/{sample}_redrock.parquet",
        hybrid="results/interim/redshift/{sample}_hybrid.parquet",
    output:
        with_prov("results/redshift/{sample}_redshifts.parquet"),
    log:
        "logs/redshift/{sample}_catalogue.log",
    benchmark:
        rule_bench("redshift_catalogue_{sample}"),
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/redshift_catalogue.py"


rule redshift_metrics:
    """NMAD (eq. 4), eta, bias, R^2, per z / S/N bin, speed, ablation, headline + figures (Figs 5-13)."""
    input:
        unpack(redshift_timings),
        catalogue="results/redshift/{sample}_redshifts.parquet",
        spectra="results/interim/redshift/{sample}_spectra.h5",
        autoencoder=redshift_autoencoder,
        latents="results/interim/redshift/{sample}_latents.npy",
        folds=redshift_folds,
        ablation=redshift_ablation_models,
    output:
        metrics=report("results/redshift/{sample}_metrics.json", caption="../report/redshift_metrics.rst",
                       category="redshift"),
        **{
            name: report(f"results/redshift/figures/{{sample}}_{name}.png",
                         caption=f"../report/redshift_{name}.rst", category="redshift")
            for name in RZ_FIGURES
        },
    log:
        "logs/redshift/{sample}_metrics.log",
    benchmark:
        rule_bench("redshift_metrics_{sample}"),
    params:
        trained_on=redshift_trained_sample,
        seed=derived_seed("redshift_metrics"),
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/redshift_metrics.py"


rule redshift_bench:
    """SpecPT, Redrock and the hybrid timed in one process, one thread, on the same test spectra."""
    input:
        unpack(redshift_bench_input),
    output:
        RZ_SPEED,
    log:
        "logs/redshift/bench.log",
    benchmark:
        rule_bench("redshift_bench"),
    params:
        n=RZ["bench"]["n"],
        redrock=RZ["redrock"],
        hybrid=RZ["hybrid"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/redshift_bench.py"


checkpoint redshift_select:
    """zcatalog -> BGS / ELG cuts (redshift.cuts) -> selected targets and the healpix pixels holding them."""
    input:
        zcatalog=redshift_zcatalog,
    output:
        targets=with_prov("results/interim/redshift/{sample}_selection.parquet"),
        pixels="results/interim/redshift/{sample}_pixels.json",
    log:
        "logs/redshift/{sample}_select.log",
    benchmark:
        rule_bench("redshift_select_{sample}"),
    params:
        cuts=redshift_cuts,
        max_targets=redshift_max_targets,
        source_pin=redshift_zcatalog_pin,
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../../scripts/redshift_select.py"


rule redshift_fetch_pixel:
    """One healpix pixel's coadd or redrock file from the DESI public tree (TOFU checksum in the lock)."""
    output:
        "resources/redshift/{sample}/{survey}/{program}/{healpix}/{kind}-{survey}-{program}-{healpix}.fits",
    log:
        "logs/redshift/fetch/{sample}_{survey}_{program}_{healpix}_{kind}.log",
    benchmark:
        rule_bench("redshift_fetch_pixel_{sample}_{survey}_{program}_{healpix}_{kind}"),
    wildcard_constraints:
        kind="coadd|redrock",
        healpix=r"\d+",
    params:
        base_url=RZ["desi_base_url"],
        lock=config["checksum_lock"],
        fetch=config["fetch"],
    resources:
        mem_mb=1000,
        runtime=60,
        desi_downloads=1,
    localrule: True
    script:
        "../../scripts/redshift_fetch_pixel.py"
