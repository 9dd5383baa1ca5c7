# Constants and helper functions of the rules in workflow/rules/galaxies.smk, kept apart from the rules
# as Snakemake's linter asks; params come from these named functions, never from lambdas.

from specfm.galaxies.figures import KINDS as SYNTHETIC_KINDS  # one list for rules, script and tests

GAL = config["galaxies"]


def target_kind(galaxy):
    return GAL["targets"][galaxy]["kind"]


def cube_galaxies():
    """The built targets that are IFU cubes (maps, pPXF, metrics); `spectra` targets give a table."""
    return [g for g in GAL["build"] if target_kind(g) != "spectra"]


SPECTRA_TARGETS = [g for g, t in GAL["targets"].items() if t["kind"] == "spectra"]


def galaxies_targets():
    out = [f"results/galaxies/{g}_spectra{suffix}" for g in GAL["build"] if target_kind(g) == "spectra"
           for suffix in (".parquet", "_metrics.json")]
    for galaxy in cube_galaxies():
        out += [
            f"results/{galaxy}_maps.fits",
            f"results/{galaxy}_ppxf_maps.fits",
            f"results/galaxies/{galaxy}_metrics.json",
        ]
    out += [f"results/galaxies/figures/synthetic_{split}_{kind}.png" for split in SYNTHETIC_SPLITS
            for kind in SYNTHETIC_KINDS]
    if GAL["ablation"]["attention"]:
        out.append(ABLATION_JSON)
    return out + ["results/bench/galaxies_speed.json"]


def galaxies_demo_targets():
    """The demo builds the whole galaxies chain of the configured targets."""
    return galaxies_targets()


def galaxies_metrics_files():
    """Each built cube's metrics, then each built spectra target's GalProTE - pPXF agreement."""
    spectra = [g for g in GAL["build"] if target_kind(g) == "spectra"]
    return ([f"results/galaxies/{galaxy}_metrics.json" for galaxy in cube_galaxies()]
            + [f"results/galaxies/{g}_spectra_metrics.json" for g in spectra])


def galaxies_report_figures():
    """(figure, caption) pairs for the HTML report."""
    figs = [(f"results/galaxies/figures/{galaxy}_{kind}.png", f"workflow/report/galaxies_{kind}.rst")
            for galaxy in cube_galaxies() for kind in ("panels", "running", "residuals")]
    figs += [(f"results/galaxies/figures/synthetic_{split}_{kind}.png", f"workflow/report/galaxies_synthetic_{kind}.rst")
             for split in SYNTHETIC_SPLITS for kind in SYNTHETIC_KINDS]
    return figs


def template_manifest(wildcards):
    return manifest_path(GAL["template_sets"][wildcards.tset]["source"])


def galaxy_cube(wildcards):
    """A mock galaxy's cube is built by the workflow; a PHANGS or MaNGA cube is fetched."""
    target = GAL["targets"][wildcards.galaxy]
    if target["kind"] == "mock":
        return f"results/interim/galaxies/{wildcards.galaxy}_cube.fits"
    if target["kind"] == "spectra":
        raise ValueError(f"galaxies.targets.{wildcards.galaxy} is of kind spectra: it has no cube and no maps "
                         f"(its product is results/galaxies/{wildcards.galaxy}_spectra.parquet)")
    return archive_path(target["cube"])


TRAINING_TEMPLATES = f"results/interim/galaxies/templates_{GAL['template_set']}.h5"
GALPROTE_MODEL = f"results/models/galaxies/galprote_{GAL['template_set']}.pt"
TRAINING_SET = f"results/interim/galaxies/trainset_{GAL['template_set']}.h5"
SYNTHETIC_SPLITS = ("test", "test_unseen")
ABLATION_JSON = "results/galaxies/ablation.json"


def synthetic_figure(kind):
    return report(f"results/galaxies/figures/synthetic_{{split}}_{kind}.png",
                  caption=f"../report/galaxies_synthetic_{kind}.rst", category="galaxies",
                  subcategory="synthetic evaluation")


def ablation_train(wildcards):
    """The main model's training settings with the ablation's epoch budget."""
    return {**{k: GAL["train"][k] for k in ("patience", "batch_size")}, "epochs": GAL["ablation"]["epochs"]}


# specfm.galaxies.model.OFF_BY_DEFAULT, written out: importing the model would load torch at parse time
ARCH_OFF = {"mean_head": False}


def galaxies_arch():
    """galaxies.model without the options beyond the paper that are off: the paper's training job keeps
    the params it had before they existed (no retraining, the same provenance)."""
    return {k: v for k, v in GAL["model"].items() if not (k in ARCH_OFF and v == ARCH_OFF[k])}


def ablation_arch(wildcards):
    return {**galaxies_arch(), "attention": wildcards.attention}


def maps_estimate():
    """galaxies.estimate: what the maps show, the grid or the mean head (`specfm.galaxies.fast_inference.estimates`)."""
    return GAL["estimate"]


def mock_params(wildcards):
    return {
        "shape": GAL["mock"]["shape"],
        "snr_center": GAL["mock"]["snr_center"],
        "redshift": GAL["targets"][wildcards.galaxy]["redshift"],
        "seed": derived_seed("galaxies_mock", wildcards.galaxy),
    }


def bin_params(wildcards):
    """Binning settings; a MaNGA cube also names its layout (mock and PHANGS share the default one);
    a fetched cube, its pin (checked before use: a file placed by hand skips the fetch rule)."""
    layout = {"kind": "manga"} if target_kind(wildcards.galaxy) == "manga" else {}
    target = GAL["targets"][wildcards.galaxy]
    pin = {"source_pin": unpack_pin(target["cube"])} if target["kind"] in ("phangs", "manga") else {}
    return {
        "redshift": target["redshift"],
        "target_snr": GAL["binning"]["target_snr"],
        "min_snr": GAL["binning"]["min_snr"],
        **layout,
        **pin,
    }


def spectra_files(wildcards):
    """A `spectra` target's files: paths (relative to the repository root) as given in config, or
    the manifest of its `source` (its files are then members that source unpacks)."""
    target = GAL["targets"][wildcards.galaxy]
    if target.get("source"):
        return [manifest_path(target["source"])]
    return list(target["files"])


def spectra_params(wildcards):
    target = GAL["targets"][wildcards.galaxy]
    return {
        "members": list(target["files"]) if target.get("source") else None,
        "redshifts": target.get("redshifts") or [target["redshift"]],
        "frame": target.get("frame"),
        "clip_frac": GAL["clip_frac"],
        "ppxf_degree": GAL["ppxf"]["degree"] if target.get("ppxf", True) else None,
        "inference": galaxies_inference(),
        **({} if GAL["estimate"] == "grid" else {"estimate": GAL["estimate"]}),
    }


def galaxies_inference():
    """`fast_inference.predict` keywords from galaxies.inference (backend, batch_size, threads)."""
    return dict(GAL["inference"])


def galaxy_reference(wildcards):
    """The reference maps: the truth of a mock; the published PHANGS maps of a real galaxy (when
    its config names a `maps` source); nothing else (model vs pPXF only)."""
    target = GAL["targets"][wildcards.galaxy]
    if target["kind"] == "mock":
        return {"truth": f"results/{wildcards.galaxy}_truth.fits"}
    if target.get("maps"):
        return {"published": archive_path(target["maps"])}
    return {}


def published_pin(wildcards):
    """The pin of a real galaxy's published maps (checked before use), None without such maps."""
    maps = GAL["targets"][wildcards.galaxy].get("maps")
    return unpack_pin(maps) if maps and GAL["targets"][wildcards.galaxy]["kind"] in ("phangs", "manga") else None


def maps_units(wildcards):
    """BUNIT overrides for a published MAPS file whose extensions lack them ({EXTNAME: unit})."""
    return dict(GAL["targets"][wildcards.galaxy].get("maps_units", {}))


def compare_records():
    """The provenance records of the compare products (suffixes under results/galaxies/)."""
    names = ["{galaxy}_metrics.json"] + [f"figures/{{galaxy}}_{n}.png" for n in ("panels", "running", "residuals")]
    return [f"results/galaxies/{n}.prov.json" for n in names]
