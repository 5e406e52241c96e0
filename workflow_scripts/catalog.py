import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.catalog(
    shards=list(snakemake.input.shards),
    table=snakemake.input.table,
    clean_table=snakemake.input.clean,
    model_dirs=[path.rsplit("/", 1)[0] for path in snakemake.input.models],
    labels=snakemake.params.labels,
    cfg=snakemake.params.catalog,
    experiment=snakemake.wildcards.exp,
    method=snakemake.params.method,
    fits_path=snakemake.output.fits,
    parquet_path=snakemake.output.parquet,
    config_hash=snakemake.params.config_hash,
    classes=snakemake.params.classes,
)
