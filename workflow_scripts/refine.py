import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.refine(emulator_dir=runtime.folder(i.emulator), calibration=i.calibration, flux=i.flux,
              ivar=i.ivar, table=i.table, prediction=i.prediction,
              shard=int(snakemake.wildcards.shard), n_shards=p.n_shards, labels=p.labels,
              cfg=p.refine, out_table=o.table, out_models=o.models, threads=snakemake.threads,
              config_hash=job.config_hash)
