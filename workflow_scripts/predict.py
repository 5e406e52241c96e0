import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.predict(
    flux=snakemake.input.flux,
    table=snakemake.input.table,
    model_dirs=[path.rsplit("/", 1)[0] for path in snakemake.input.models],
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
    cfg=snakemake.params.predict,
    out=snakemake.output[0],
    threads=snakemake.threads,
    config_hash=snakemake.params.config_hash,
    knn=snakemake.params.knn or 5,  # nearest labelled stars (deep_remap only)
    ensemble_calibration=snakemake.input.get("ensemble_calibration"),
)
