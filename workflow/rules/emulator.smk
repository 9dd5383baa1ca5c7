# emulator: TransformerPayne and baselines (seed 001). Labelled spectra grid -> four emulators ->
# accuracy vs training-set size and gradient-based parameter inference.
# No issue is open for it yet; the rules fix the layout of its products.

EMU = config["emulator"]


def emulator_targets():
    return ["results/emulator/metrics.json"]


rule emulator_grid:
    output:
        with_prov("results/interim/emulator/grid.h5"),
    log:
        "logs/emulator/grid.log",
    cache: True
    params:
        **pending("emulator (not yet filed)"),
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/pending.py"


rule emulator_train:
    input:
        "results/interim/emulator/grid.h5",
    output:
        with_prov("results/models/emulator/{model}.pt"),
    log:
        "logs/emulator/{model}.log",
    params:
        **pending("emulator (not yet filed)"),
    threads: 2
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=train_resources("emulator", "mem_mb"),
        runtime=train_resources("emulator", "runtime"),
    script:
        "../../scripts/pending.py"


rule emulator_metrics:
    input:
        grid="results/interim/emulator/grid.h5",
        models=expand("results/models/emulator/{model}.pt", model=EMU["models"]),
    output:
        "results/emulator/metrics.json",
    log:
        "logs/emulator/metrics.log",
    params:
        **pending("emulator (not yet filed)"),
    resources:
        gpu=train_resources("emulator", "gpu"),
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/pending.py"
