import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.reference_scale(shards=list(i.shards), table=i.table, calibration=i.calibration,
                       labels=p.labels, cfg=p.reference_scale, out=o[0],
                       config_hash=job.config_hash)
