import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.train(flux=i.flux, ivar=i.ivar, table=i.table, labels=p.labels,
             member=int(snakemake.wildcards.member), cfg=dict(p.train, method=p.method),
             model_dir=runtime.folder(o.sidecar), threads=snakemake.threads,
             method_cfg=p.method_cfg)
