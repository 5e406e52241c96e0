import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.train_emulator(flux=i.flux, ivar=i.ivar, table=i.table, trainset_table=i.trainset,
                      labels=p.labels, cfg=p.refine, grid_cfg=p.grid, linelist=p.linelist,
                      model_dir=runtime.folder(o.sidecar), threads=snakemake.threads,
                      config_hash=job.config_hash)
