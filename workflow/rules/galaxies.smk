# galaxies: GalProTE (seed 000). E-MILES templates -> training set -> model -> IFU maps, with pPXF.

GAL = config["galaxies"]


def galaxies_targets():
    out = []
    for galaxy in GAL["build"]:
        out += [
            f"results/{galaxy}_maps.fits",
            f"results/{galaxy}_ppxf_maps.fits",
            f"results/galaxies/{galaxy}_metrics.json",
        ]
    return out + ["results/bench/galaxies_speed.json"]


def template_manifest(wildcards):
    return manifest_path(GAL["template_sets"][wildcards.tset]["source"])


def galaxy_cube(wildcards):
    """A mock galaxy's cube is built by the workflow; a PHANGS cube is fetched."""
    target = GAL["targets"][wildcards.galaxy]
    if target["kind"] == "mock":
        return f"results/interim/galaxies/{wildcards.galaxy}_cube.fits"
    return archive_path(target["cube"])


TRAINING_TEMPLATES = f"results/interim/galaxies/templates_{GAL['template_set']}.h5"
GALPROTE_MODEL = f"results/models/galaxies/galprote_{GAL['template_set']}.pt"
TRAINING_SET = f"results/interim/galaxies/trainset_{GAL['template_set']}.h5"


rule galaxies_templates:
    """E-MILES SSPs -> MUSE LSF -> 4749-7100 A at 2.48 A, median-normalised, as one HDF5 grid."""
    input:
        template_manifest,
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
        "results/interim/galaxies/templates_{tset}.h5",
    output:
        report(
            "results/galaxies/figures/templates_{tset}.png",
            caption="../report/galaxies_templates.rst",
            category="galaxies",
        ),
        "results/galaxies/figures/templates_{tset}.png.prov.json",
    log:
        "logs/galaxies/templates_{tset}_figure.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../../scripts/galaxies_templates_figure.py"


rule galaxies_training_set:
    """Table 1 singles, replicas and 2..5-population mixtures x 16 A_V levels, noise phases; splits
    train / validation / test (other noise) / test_unseen (combinations never seen in training)."""
    input:
        TRAINING_TEMPLATES,
    output:
        with_prov(TRAINING_SET),
    log:
        "logs/galaxies/trainset.log",
    cache: True
    params:
        size_factor=GAL["trainset"]["size_factor"],
        seed=derived_seed("galaxies_trainset"),
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/galaxies_training_set.py"


rule galaxies_train:
    """GalProTE on GPU if granted (gpu from config; 0 = CPU), checkpointed and resumable."""
    input:
        TRAINING_SET,
    output:
        with_prov(GALPROTE_MODEL),
        with_prov("results/galaxies/synthetic_metrics.json"),
    log:
        "logs/galaxies/train.log",
    benchmark:
        "benchmarks/galaxies/train.tsv"
    params:
        # only what changes the model: a new runtime or memory request must not retrain it
        train={k: GAL["train"][k] for k in ("epochs", "patience", "batch_size")},
        arch=GAL["model"],
        seed=derived_seed("galaxies_train"),
    threads: GAL["train"]["threads"]
    resources:
        gpu=train_resources("galaxies", "gpu"),
        mem_mb=train_resources("galaxies", "mem_mb"),
        runtime=train_resources("galaxies", "runtime"),
    script:
        "../../scripts/galaxies_train.py"


def mock_params(wildcards):
    return {
        "shape": GAL["mock"]["shape"],
        "snr_center": GAL["mock"]["snr_center"],
        "redshift": GAL["targets"][wildcards.galaxy]["redshift"],
        "seed": derived_seed("galaxies_mock", wildcards.galaxy),
    }


def bin_params(wildcards):
    return {
        "redshift": GAL["targets"][wildcards.galaxy]["redshift"],
        "target_snr": GAL["binning"]["target_snr"],
        "min_snr": GAL["binning"]["min_snr"],
    }


rule galaxies_mock_cube:
    """A mock MUSE cube (PHANGS-MUSE file layout) with continuous SFHs, A_V, velocity field, LSF,
    noise, emission lines and sky residuals, built from the raw SSPs; its truth maps beside it."""
    input:
        manifest_path(GAL["template_sets"][GAL["template_set"]]["source"]),
    output:
        cube="results/interim/galaxies/{galaxy}_cube.fits",
        cube_prov="results/interim/galaxies/{galaxy}_cube.fits.prov.json",
        truth="results/{galaxy}_truth.fits",
        truth_prov="results/{galaxy}_truth.fits.prov.json",
    log:
        "logs/galaxies/{galaxy}_mock.log",
    params:
        settings=mock_params,
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
    params:
        settings=bin_params,
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
    params:
        clip_frac=GAL["clip_frac"],
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
        "benchmarks/galaxies/{galaxy}_ppxf.tsv"
    params:
        degree=GAL["ppxf"]["degree"],
    threads: GAL["ppxf"]["threads"]
    resources:
        mem_mb=8000,
        runtime=GAL["ppxf"]["runtime"],
    script:
        "../../scripts/galaxies_ppxf.py"


def galaxy_truth(wildcards):
    """Truth maps exist for mock galaxies only; real ones are compared model vs pPXF."""
    if GAL["targets"][wildcards.galaxy]["kind"] == "mock":
        return {"truth": f"results/{wildcards.galaxy}_truth.fits"}
    return {}


def compare_records():
    """The provenance records of the compare products (suffixes under results/galaxies/)."""
    names = ["{galaxy}_metrics.json"] + [f"figures/{{galaxy}}_{n}.png" for n in ("panels", "running", "residuals")]
    return [f"results/galaxies/{n}.prov.json" for n in names]


rule galaxies_compare:
    """Model vs pPXF (vs truth for mocks): metrics and the paper's Figures 13-18 style plots."""
    input:
        unpack(galaxy_truth),
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
    params:
        n_ppxf=GAL["bench"]["n_ppxf"],
        degree=GAL["ppxf"]["degree"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../../scripts/galaxies_bench.py"
