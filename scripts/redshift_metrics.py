"""Rule entry point: redshift metrics (SpecPT, Redrock, hybrid), headline, ablation and figures."""

from specfm.logs import rule_logging
from specfm.redshift.products import FIGURES
from specfm.redshift.steps import metrics

i, o = snakemake.input, snakemake.output
with rule_logging(snakemake.log[0]):
    metrics(i.catalogue, i.spectra, i.autoencoder, i.latents, list(i.folds),
            {"specpt": i.specpt, "redrock": i.redrock, "hybrid": i.hybrid}, o.metrics,
            {name: o[name] for name in FIGURES}, ablation=list(i.ablation), seed=snakemake.params.seed,
            trained_on=snakemake.params.trained_on, code_files=[__file__])
