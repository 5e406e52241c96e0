import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.download_shard(remote=i.remote, shard=int(snakemake.wildcards.shard),
                      dest_dir=p.dest_dir, journal_dir=p.journal_dir, out=o[0],
                      dataset=snakemake.wildcards.dataset, download_cfg=p.download,
                      login=p.login)
