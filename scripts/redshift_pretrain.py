"""Rule entry point: SpecPT autoencoder pretraining (resumes from its checkpoint after a kill)."""

from specfm.logs import rule_logging
from specfm.redshift.steps import pretrain
from specfm.train import cleanup, init_distributed, maybe_relaunch_with_torchrun

maybe_relaunch_with_torchrun(snakemake.resources.gpu)  # DDP when more than one GPU is granted
init_distributed()
p = snakemake.params
with rule_logging(snakemake.log[0]):
    pretrain(snakemake.input.spectra, snakemake.output[0], arch=p.arch, tcfg=p.train, seed=p.seed,
             gpu=snakemake.resources.gpu, threads=snakemake.threads, code_files=[__file__])
cleanup()
