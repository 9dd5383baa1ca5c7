"""Rule entry point: stars benchmarks (feature build per size, pretraining speed, stream per worker count)."""

from specfm.logs import rule_logging
from specfm.stars.bench import bench_features, bench_stream, bench_train

p = snakemake.params
features = list(snakemake.input.features)
with rule_logging(snakemake.log[0]):
    bench_features(p.bench["rows"], snakemake.output.features)
    bench_train(features, snakemake.input.scaling, snakemake.output.train, arch=p.arch, train=p.train,
                seconds=p.bench["train_seconds"])
    bench_stream(features, snakemake.output.stream, workers=p.bench["stream_workers"],
                 epochs=p.bench["stream_epochs"])
