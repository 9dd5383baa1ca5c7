# Constants and helper functions of the rules in workflow/rules/emulator.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

from specfm.emulator.products import FIGURES as EMU_FIGURES  # one list for rules, script and tests

EMU = config["emulator"]


def emulator_largest_size():
    """The largest configured training-set size ("all" = the whole training split)."""
    sizes = EMU["sizes"]
    return "all" if "all" in sizes else str(max(int(s) for s in sizes))


def emulator_scratch_models():
    return [f"results/models/emulator/{m}/scratch_n{n}_s{s}.pt"
            for m in EMU["models"] for n in EMU["sizes"] for s in EMU["seeds"]]


def emulator_finetuned_models():
    return [f"results/models/emulator/{m}/finetune_n{n}_s{s}.pt"
            for m in EMU["finetune"]["models"] for n in EMU["finetune"]["sizes"] for s in EMU["seeds"]]


def emulator_inference_tables():
    n, s = emulator_largest_size(), EMU["seeds"][0]
    return [f"results/emulator/inference/{m}_n{n}_s{s}.parquet" for m in EMU["inference"]["models"]]


def emulator_metrics_files():
    return ["results/emulator/metrics.json"]


def emulator_report_figures():
    return [f"results/emulator/figures/{name}.png" for name in EMU_FIGURES]


def emulator_demo_targets():
    return [*emulator_metrics_files(), *emulator_report_figures(),
            "results/emulator/inference_summary.csv", "results/bench/emulator_speed.json"]


def emulator_targets():
    return emulator_demo_targets()


def emulator_grid_input(wildcards):
    """The unpacked MILES wheel (kind miles), the user's grid file (kind hdf5 / fits) or every file
    of the http_grid source, the wavelength file first (kind phoenix)."""
    g = EMU["grid"]
    if g["kind"] == "miles":
        return [manifest_path(g["source"])]
    if g["kind"] == "phoenix":
        return grid_source_paths(g["source"])
    return [g["path"]]


def emulator_grid_pin():
    """Kind phoenix: the lock and source each fetched file is checked against before it is read."""
    g = EMU["grid"]
    return {"lock_path": config["checksum_lock"], "source": g["source"]} if g["kind"] == "phoenix" else None


def emulator_grid_params():
    g = EMU["grid"]
    return {**{k: g[k] for k in ("window", "margin", "continuum", "max_bad_fraction", "split",
                                 "max_spectra", "normalised", "n_pixels", "medium")},
            "pin": emulator_grid_pin()}


def emulator_run_seed(wildcards):
    """Weights and data order of one run: derived from the model, mode, size and seed wildcard."""
    return derived_seed("emulator_train", wildcards.model, wildcards.get("size", "pretrain"),
                        wildcards.seed)


def emulator_subset_seed(wildcards):
    """The training subset depends on the seed wildcard only: every model sees the same spectra."""
    return derived_seed("emulator_subset", wildcards.seed)


def emulator_arch(wildcards):
    return EMU["arch"][wildcards.model]


def emulator_pretrained(wildcards):
    return f"results/models/emulator/{wildcards.model}/pretrain_s{wildcards.seed}.pt"


def emulator_infer_model(wildcards):
    return f"results/models/emulator/{wildcards.model}/scratch_n{wildcards.size}_s{wildcards.seed}.pt"


def emulator_infer_seed(wildcards):
    return derived_seed("emulator_infer", wildcards.model, wildcards.seed)


def emulator_bench_models(wildcards):
    n, s = emulator_largest_size(), EMU["seeds"][0]
    return [f"results/models/emulator/{m}/scratch_n{n}_s{s}.pt" for m in EMU["models"]]
