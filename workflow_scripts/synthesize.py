import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.synthesize(manifest=i.manifest, grid_cfg=p.grid, cfg=p.synthesize, continuum=p.continuum,
                  flux=o.flux, ivar=o.ivar, table=o.table, rejects=o.rejects,
                  threads=snakemake.threads, config_hash=job.config_hash)
