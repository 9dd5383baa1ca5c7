# emulator: TransformerPayne and its three baselines (seed 001). A grid of (labels -> normalised
# flux) spectra (MILES stars from the sdss-mangadap wheel, a user's HDF5 or FITS grid, or PHOENIX-ACES
# files of an http_grid source) -> The Payne, BigPayne, convolutional emulator, TransformerPayne,
# trained per (model, training-set size, seed)
# -> pretraining on a restricted domain + fine-tuning -> held-out scores, figures, parameter
# inference of held-out stars, throughput.

include: "helpers/emulator.smk"


wildcard_constraints:
    size=r"\d+|all",
    seed=r"\d+",


rule emulator_grid:
    """Raw spectra -> the HDF5 grid: window, bad pixels, continuum normalisation, errors, split."""
    input:
        raw=emulator_grid_input,
    output:
        grid=with_prov("results/interim/emulator/grid.h5"),
    log:
        "logs/emulator/grid.log",
    cache: True  # no benchmark: Snakemake refuses one on a cached rule; the script writes its own
    params:
        kind=EMU["grid"]["kind"],
        settings=emulator_grid_params(),
        bench=rule_bench("emulator_grid"),
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/emulator_grid.py"


rule emulator_train:
    """One emulator from scratch on the first {size} training spectra (seed {seed})."""
    input:
        grid="results/interim/emulator/grid.h5",
    output:
        model=with_prov("results/models/emulator/{model}/scratch_n{size}_s{seed}.pt"),
    log:
        "logs/emulator/{model}/scratch_n{size}_s{seed}.log",
    benchmark:
        rule_bench("emulator_train_{model}_n{size}_s{seed}")
    params:
        mode="scratch",
        arch=emulator_arch,
        optim=EMU["optim"],
        log_labels=EMU["log_labels"],
        domain=None,
        seed=emulator_run_seed,
        subset_seed=emulator_subset_seed,
    threads: EMU["train"]["threads"]
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=train_resources("emulator", "mem_mb"),
        runtime=train_resources("emulator", "runtime"),
    script:
        "../../scripts/emulator_train.py"


rule emulator_pretrain:
    """Pretraining on every training spectrum inside the restricted domain (emulator.pretraining)."""
    input:
        grid="results/interim/emulator/grid.h5",
    output:
        model=with_prov("results/models/emulator/{model}/pretrain_s{seed}.pt"),
    log:
        "logs/emulator/{model}/pretrain_s{seed}.log",
    benchmark:
        rule_bench("emulator_pretrain_{model}_s{seed}")
    params:
        mode="pretrain",
        arch=emulator_arch,
        optim=EMU["optim"],
        log_labels=EMU["log_labels"],
        domain=EMU["pretraining"]["domain"],
        seed=emulator_run_seed,
        subset_seed=emulator_subset_seed,
    threads: EMU["train"]["threads"]
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=train_resources("emulator", "mem_mb"),
        runtime=train_resources("emulator", "runtime"),
    script:
        "../../scripts/emulator_train.py"


rule emulator_finetune:
    """The pretrained emulator trained on, all weights free, on the same {size} spectra as scratch."""
    input:
        grid="results/interim/emulator/grid.h5",
        pretrained=emulator_pretrained,
    output:
        model=with_prov("results/models/emulator/{model}/finetune_n{size}_s{seed}.pt"),
    log:
        "logs/emulator/{model}/finetune_n{size}_s{seed}.log",
    benchmark:
        rule_bench("emulator_finetune_{model}_n{size}_s{seed}")
    params:
        mode="finetune",
        arch=emulator_arch,
        optim=EMU["optim"],
        log_labels=EMU["log_labels"],
        domain=None,
        seed=emulator_run_seed,
        subset_seed=emulator_subset_seed,
    threads: EMU["train"]["threads"]
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=train_resources("emulator", "mem_mb"),
        runtime=train_resources("emulator", "runtime"),
    script:
        "../../scripts/emulator_train.py"


rule emulator_infer:
    """Labels of held-out stars fitted through one emulator (Adam, clipping, cosine, restarts)."""
    input:
        grid="results/interim/emulator/grid.h5",
        model=emulator_infer_model,
    output:
        table=with_prov("results/emulator/inference/{model}_n{size}_s{seed}.parquet"),
    log:
        "logs/emulator/infer_{model}_n{size}_s{seed}.log",
    benchmark:
        rule_bench("emulator_infer_{model}_n{size}_s{seed}")
    params:
        settings=EMU["inference"],
        seed=emulator_infer_seed,
    threads: EMU["train"]["threads"]
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=4000,
        runtime=train_resources("emulator", "runtime"),
    script:
        "../../scripts/emulator_infer.py"


rule emulator_metrics:
    """Held-out scores of every run, figures (Figs 1, 4-8 analogues) and metrics.json."""
    input:
        grid="results/interim/emulator/grid.h5",
        models=[*emulator_scratch_models(), *emulator_finetuned_models()],
        inference=emulator_inference_tables(),
    output:
        metrics=report("results/emulator/metrics.json", caption="../report/emulator_metrics.rst",
                       category="emulator"),
        summary="results/emulator/inference_summary.csv",
        **{
            name: report(f"results/emulator/figures/{name}.png",
                         caption=f"../report/emulator_{name}.rst", category="emulator")
            for name in EMU_FIGURES
        },
    log:
        "logs/emulator/metrics.log",
    benchmark:
        rule_bench("emulator_metrics")
    params:
        headline_model=EMU["headline_model"],
        sizes=EMU["sizes"],
        finetune_sizes=EMU["finetune"]["sizes"],
        targets=EMU["targets"],
    threads: EMU["train"]["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/emulator_metrics.py"


rule emulator_bench:
    """Spectra per second of each emulator at the largest size: one run, batched, full grid."""
    input:
        models=emulator_bench_models,
    output:
        speed="results/bench/emulator_speed.json",
    log:
        "logs/emulator/bench.log",
    benchmark:
        rule_bench("emulator_bench")
    params:
        settings=EMU["bench"],
    threads: EMU["train"]["threads"]
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=4000,
        runtime=20,
    script:
        "../../scripts/emulator_bench.py"
