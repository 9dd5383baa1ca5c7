# galaxies: GalProTE (seed 000). E-MILES templates -> training set -> model -> IFU maps, with pPXF.

include: "helpers/galaxies.smk"


rule galaxies_templates:
    """E-MILES SSPs -> MUSE LSF -> 4749-7100 A at 2.48 A, median-normalised, as one HDF5 grid."""
    input:
        manifest=template_manifest,
    output:
        with_prov("results/interim/galaxies/templates_{tset}.h5"),
    log:
        "logs/galaxies/templates_{tset}.log",
    cache: True
    resources:
        mem_mb=3000,
        runtime=20,
    script:
        "../../scripts/galaxies_templates.py"


rule galaxies_templates_figure:
    input:
        templates="results/interim/galaxies/templates_{tset}.h5",
    output:
        report(
            "results/galaxies/figures/templates_{tset}.png",
            caption="../report/galaxies_templates.rst",
            category="galaxies",
        ),
        "results/galaxies/figures/templates_{tset}.png.prov.json",
    log:
        "logs/galaxies/templates_{tset}_figure.log",
    benchmark:
        rule_bench("galaxies_templates_figure_{tset}"),
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../../scripts/galaxies_templates_figure.py"


rule galaxies_training_set:
    """Table 1 singles, replicas and 2..5-population mixtures (+ extended populations and SFHs if configured)
    x 16 A_V levels, noise phases; splits
    train / validation / test (other noise) / test_unseen (combinations never seen in training)."""
    input:
        templates=TRAINING_TEMPLATES,
    output:
        with_prov(TRAINING_SET),
    log:
        "logs/galaxies/trainset.log",
    cache: True
    params:
        size_factor=GAL["trainset"]["size_factor"],
        augment=GAL["trainset"]["augment"],
        extended=GAL["trainset"]["extended"],
        sfh=GAL["trainset"]["sfh"],
        seed=derived_seed("galaxies_trainset"),
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/galaxies_training_set.py"


rule galaxies_train:
    """GalProTE on GPU if granted (gpu from config; 0 = CPU), checkpointed and resumable."""
    input:
        training_set=TRAINING_SET,
    output:
        model=with_prov(GALPROTE_MODEL),
        metrics=with_prov("results/galaxies/synthetic_metrics.json"),
        predictions=with_prov("results/galaxies/synthetic_predictions.h5"),
    log:
        "logs/galaxies/train.log",
    benchmark:
        rule_bench("galaxies_train"),
    params:
        # only what changes the model: a new runtime or memory request must not retrain it
        train={k: GAL["train"][k] for k in ("epochs", "patience", "batch_size")},
        arch=galaxies_arch(),
        seed=derived_seed("galaxies_train"),
        see_also={"ablation": ABLATION_JSON} if GAL["ablation"]["attention"] else {},
    threads: GAL["train"]["threads"]
    priority: LONG_CHAIN_PRIORITY["galaxies"]
    resources:
        gpu=train_resources("galaxies", "gpu"),
        mem_mb=train_resources("galaxies", "mem_mb"),
        runtime=train_resources("galaxies", "runtime"),
    script:
        "../../scripts/galaxies_train.py"


rule galaxies_synthetic_figures:
    """The paper's Figures 8-12 on one synthetic test split, from the predictions training kept."""
    input:
        predictions="results/galaxies/synthetic_predictions.h5",
    output:
        logage=synthetic_figure("logage"),
        mh=synthetic_figure("mh"),
        av=synthetic_figure("av"),
        mse=synthetic_figure("mse"),
        residuals=synthetic_figure("residuals"),
        records=[f"results/galaxies/figures/synthetic_{{split}}_{kind}.png.prov.json" for kind in SYNTHETIC_KINDS],
    log:
        "logs/galaxies/synthetic_figures_{split}.log",
    benchmark:
        rule_bench("galaxies_synthetic_figures_{split}"),
    wildcard_constraints:
        split="|".join(SYNTHETIC_SPLITS),
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/galaxies_synthetic_figures.py"


rule galaxies_ablation_train:
    """One attention variant of GalProTE: the main model's training set, seed and settings but the
    block's attention context (the wildcard) and the ablation's epoch budget."""
    input:
        training_set=TRAINING_SET,
    output:
        model=with_prov(f"results/models/galaxies/ablation/galprote_{GAL['template_set']}_{{attention}}.pt"),
        metrics=with_prov("results/galaxies/ablation/{attention}_metrics.json"),
    log:
        "logs/galaxies/ablation_{attention}.log",
    benchmark:
        rule_bench("galaxies_ablation_train_{attention}"),
    wildcard_constraints:
        attention="patch|global|none",
    params:
        train=ablation_train,
        arch=ablation_arch,
        seed=derived_seed("galaxies_train"),  # the main model's seed: only the attention differs
    threads: GAL["train"]["threads"]
    priority: LONG_CHAIN_PRIORITY["galaxies"]
    resources:
        gpu=train_resources("galaxies", "gpu"),
        mem_mb=train_resources("galaxies", "mem_mb"),
        runtime=train_resources("galaxies", "runtime"),
    script:
        "../../scripts/galaxies_train.py"


rule galaxies_ablation:
    """The attention variants side by side (synthetic test metrics, same data, seed and budget)."""
    input:
        metrics=expand("results/galaxies/ablation/{attention}_metrics.json", attention=GAL["ablation"]["attention"]),
    output:
        report(ABLATION_JSON, caption="../report/galaxies_ablation.rst", category="galaxies"),
        f"{ABLATION_JSON}.prov.json",
    log:
        "logs/galaxies/ablation.log",
    benchmark:
        rule_bench("galaxies_ablation"),
    params:
        variants=GAL["ablation"]["attention"],
        chosen=GAL["model"]["attention"],
        budget=ablation_train,
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../../scripts/galaxies_ablation.py"


rule galaxies_mock_cube:
    """A mock MUSE cube (PHANGS-MUSE file layout) with continuous SFHs, A_V, velocity field, LSF,
    noise, emission lines and sky residuals, built from the raw SSPs; its truth maps beside it."""
    input:
        manifest=manifest_path(GAL["template_sets"][GAL["template_set"]]["source"]),
    output:
        cube="results/interim/galaxies/{galaxy}_cube.fits",
        cube_prov="results/interim/galaxies/{galaxy}_cube.fits.prov.json",
        truth="results/{galaxy}_truth.fits",
        truth_prov="results/{galaxy}_truth.fits.prov.json",
    log:
        "logs/galaxies/{galaxy}_mock.log",
    benchmark:
        rule_bench("galaxies_mock_cube_{galaxy}"),
    params:
        settings=mock_params,
    priority: LONG_CHAIN_PRIORITY["galaxies"]
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/galaxies_mock_cube.py"


rule galaxies_bin:
    """Redshift correction, bright-line handling, Table 2 mask, Voronoi binning to a target S/N."""
    input:
        cube=galaxy_cube,
    output:
        with_prov("results/interim/galaxies/{galaxy}_bins.h5"),
    log:
        "logs/galaxies/{galaxy}_bin.log",
    benchmark:
        rule_bench("galaxies_bin_{galaxy}"),
    params:
        settings=bin_params,
    priority: LONG_CHAIN_PRIORITY["galaxies"]
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../../scripts/galaxies_bin.py"


rule galaxies_predict:
    input:
        bins="results/interim/galaxies/{galaxy}_bins.h5",
        model=GALPROTE_MODEL,
        templates=TRAINING_TEMPLATES,
    output:
        with_prov("results/{galaxy}_maps.fits"),
    log:
        "logs/galaxies/{galaxy}_predict.log",
    benchmark:
        rule_bench("galaxies_predict_{galaxy}"),
    params:
        clip_frac=GAL["clip_frac"],
        inference=galaxies_inference(),
        estimate=maps_estimate(),
    threads: 2
    resources:
        gpu=train_resources("galaxies", "gpu"),
        mem_mb=8000,
        runtime=30,
    script:
        "../../scripts/galaxies_predict.py"


rule galaxies_ppxf:
    """pPXF on the same bins with the same templates: attenuation fit, then fixed A_V + polynomial."""
    input:
        bins="results/interim/galaxies/{galaxy}_bins.h5",
        templates=TRAINING_TEMPLATES,
    output:
        with_prov("results/{galaxy}_ppxf_maps.fits"),
    log:
        "logs/galaxies/{galaxy}_ppxf.log",
    benchmark:
        rule_bench("galaxies_ppxf_{galaxy}"),
    params:
        degree=GAL["ppxf"]["degree"],
    threads: GAL["ppxf"]["threads"]
    priority: LONG_CHAIN_PRIORITY["galaxies"]
    resources:
        mem_mb=8000,
        runtime=GAL["ppxf"]["runtime"],
    script:
        "../../scripts/galaxies_ppxf.py"


rule galaxies_spectra:
    """A user's single spectra (1-D FITS, tables, MaNGA-format rows) through the cube bins'
    preprocessing to GalProTE, with pPXF on the same spectra: one table row per spectrum."""
    input:
        spectra=spectra_files,
        model=GALPROTE_MODEL,
        templates=TRAINING_TEMPLATES,
    output:
        table=with_prov("results/galaxies/{galaxy}_spectra.parquet"),
        metrics=with_prov("results/galaxies/{galaxy}_spectra_metrics.json"),
    log:
        "logs/galaxies/{galaxy}_spectra.log",
    benchmark:
        rule_bench("galaxies_spectra_{galaxy}"),
    wildcard_constraints:
        galaxy=one_of(SPECTRA_TARGETS),
    params:
        settings=spectra_params,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/galaxies_spectra.py"


rule galaxies_compare:
    """Model vs pPXF (vs truth for mocks, vs the published PHANGS maps for real galaxies): metrics
    and the paper's Figures 13-18 style plots."""
    input:
        unpack(galaxy_reference),
        model="results/{galaxy}_maps.fits",
        ppxf="results/{galaxy}_ppxf_maps.fits",
        bench="results/bench/galaxies_speed.json",
    output:
        metrics=report("results/galaxies/{galaxy}_metrics.json", caption="../report/galaxies_metrics.rst",
                       category="galaxies"),
        panels=report("results/galaxies/figures/{galaxy}_panels.png", caption="../report/galaxies_panels.rst",
                      category="galaxies"),
        running=report("results/galaxies/figures/{galaxy}_running.png", caption="../report/galaxies_running.rst",
                       category="galaxies"),
        residuals=report("results/galaxies/figures/{galaxy}_residuals.png",
                         caption="../report/galaxies_residuals.rst", category="galaxies"),
        records=compare_records(),
    log:
        "logs/galaxies/{galaxy}_compare.log",
    benchmark:
        rule_bench("galaxies_compare_{galaxy}"),
    params:
        maps_units=maps_units,
        published_pin=published_pin,
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../../scripts/galaxies_compare.py"


rule galaxies_bench:
    """Seconds per spectrum of GalProTE (batched, after warm-up) and pPXF on the same bins, one run."""
    input:
        model=GALPROTE_MODEL,
        templates=TRAINING_TEMPLATES,
        bins=f"results/interim/galaxies/{GAL['bench']['target']}_bins.h5",
    output:
        "results/bench/galaxies_speed.json",
    log:
        "logs/galaxies/bench.log",
    benchmark:
        rule_bench("galaxies_bench"),
    params:
        n_ppxf=GAL["bench"]["n_ppxf"],
        degree=GAL["ppxf"]["degree"],
        inference=galaxies_inference(),
        variants=GAL["bench"]["variants"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/galaxies_bench.py"
