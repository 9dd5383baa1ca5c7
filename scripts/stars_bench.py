"""Rule entry point: stars benchmarks (feature build at two sizes, pretraining speed)."""

from specfm.logs import rule_logging
from specfm.stars.bench import bench_features, bench_train

p = snakemake.params
with rule_logging(snakemake.log[0]):
    bench_features(p.rows, snakemake.output.features)
    bench_train(list(snakemake.input.features), snakemake.input.scaling, snakemake.output.train,
                arch=p.arch, train=p.train)
