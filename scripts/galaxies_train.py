"""Rule entry point: train GalProTE (resumes from its checkpoint after a kill or requeue).

Serves galaxies_train (outputs: model, metrics, predictions, each with its record) and
galaxies_ablation_train (model and metrics only)."""

from specfm.galaxies.steps import train_model
from specfm.logs import rule_logging
from specfm.train import cleanup, init_distributed, maybe_relaunch_with_torchrun

maybe_relaunch_with_torchrun(snakemake.resources.gpu)  # DDP when more than one GPU is granted
init_distributed()
with rule_logging(snakemake.log[0]):
    # each named output is (product, its .prov.json); the ablation variants have no predictions
    predictions = snakemake.output.get("predictions")
    train_model(snakemake.input.training_set, snakemake.output.model[0], snakemake.output.metrics[0],
                train=snakemake.params.train, arch=snakemake.params.arch, seed=snakemake.params.seed,
                threads=snakemake.threads, gpu=snakemake.resources.gpu,
                predictions_out=predictions[0] if predictions else None,
                see_also=getattr(snakemake.params, "see_also", None),
                code_files=[__file__])
cleanup()
