"""Rule entry point: one emulator from scratch, pretrained or fine-tuned (resumes after a kill)."""

from specfm.emulator.steps import train
from specfm.logs import rule_logging
from specfm.train import cleanup, init_distributed, maybe_relaunch_with_torchrun

maybe_relaunch_with_torchrun(snakemake.resources.gpu)  # DDP when more than one GPU is granted
init_distributed()
p = snakemake.params
with rule_logging(snakemake.log[0]):
    train(snakemake.input.grid, snakemake.output.model[0], model=snakemake.wildcards.model,
          arch=p.arch, train=p.optim, mode=p.mode, size=snakemake.wildcards.get("size", "all"),
          seed=p.seed, subset_seed=p.subset_seed, log_labels=p.log_labels, domain=p.domain,
          init=snakemake.input.get("pretrained"), gpu=snakemake.resources.gpu,
          threads=snakemake.threads, code_files=[__file__])
cleanup()
