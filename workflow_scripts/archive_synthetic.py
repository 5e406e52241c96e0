import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.archive_synthetic(remote=i.remote, shards=list(i.shards),
                         raw_dir=runtime.folder(o.models), config_hash=job.config_hash)
