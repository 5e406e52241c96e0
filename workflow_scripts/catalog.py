import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.catalog(shards=list(i.shards), table=i.table, clean_table=i.clean,
               model_dirs=runtime.folders(i.models), labels=p.labels, cfg=p.catalog,
               experiment=snakemake.wildcards.exp, method=p.method, fits_path=o.fits,
               parquet_path=o.parquet, config_hash=job.config_hash, classes=p.classes,
               survey=p.survey, refined=i.get("refined"),
               reference_scale=i.get("reference_scale"))
