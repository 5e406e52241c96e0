import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.clean(flux=i.flux, table=i.table, labels=p.labels, cfg=p.clean, out_table=o.table,
             plot=o.plot, threads=snakemake.threads, config_hash=job.config_hash)
