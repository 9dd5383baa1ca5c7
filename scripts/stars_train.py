"""Rule entry point: MSA pretraining or one fine-tuned ensemble member (resumes after a kill)."""

from specfm.logs import rule_logging
from specfm.stars.steps import train
from specfm.train import cleanup, init_distributed, maybe_relaunch_with_torchrun

maybe_relaunch_with_torchrun(snakemake.resources.gpu)  # DDP when more than one GPU is granted
init_distributed()
p = snakemake.params
with rule_logging(snakemake.log[0]):
    train(p.stage, list(snakemake.input.features), snakemake.input.scaling, snakemake.output[0],
          arch=p.settings["arch"], train=p.settings["train"], seed=p.seed,
          init=snakemake.input.get("pretrained"), gpu=snakemake.resources.gpu,
          threads=snakemake.threads, code_files=[__file__])
cleanup()
