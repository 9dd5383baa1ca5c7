"""Rule entry point: one SpecPT redshift fold model (or the fold-0 ablation variant); resumes after a kill."""

from specfm.logs import rule_logging
from specfm.redshift.steps import train_fold
from specfm.train import cleanup, init_distributed, maybe_relaunch_with_torchrun

maybe_relaunch_with_torchrun(snakemake.resources.gpu)  # DDP when more than one GPU is granted
init_distributed()
p = snakemake.params
with rule_logging(snakemake.log[0]):
    train_fold(snakemake.input.spectra, snakemake.input.autoencoder, snakemake.output[0],
               fold=snakemake.wildcards.get("fold", p.get("fold")), folds=p.folds, zarch=p.head, tcfg=p.train,
               seed=p.seed, gpu=snakemake.resources.gpu, threads=snakemake.threads, code_files=[__file__])
cleanup()
