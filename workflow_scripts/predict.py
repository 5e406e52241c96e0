import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.predict(flux=i.flux, ivar=i.ivar, table=i.table, model_dirs=runtime.folders(i.models),
               shard=int(snakemake.wildcards.shard), n_shards=p.n_shards, cfg=p.predict,
               out=o[0], threads=snakemake.threads, config_hash=job.config_hash,
               options=p.options, ensemble_calibration=i.get("ensemble_calibration"))
