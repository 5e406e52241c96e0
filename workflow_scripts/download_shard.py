import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

sys.excepthook = stages.concise_excepthook  # an unreachable archive is one clear message

stages.download_shard(
    remote=snakemake.input.remote,
    shard=int(snakemake.wildcards.shard),
    dest_dir=snakemake.params.dest_dir,
    journal_dir=snakemake.params.journal_dir,
    out=snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    download_cfg=snakemake.params.download,
    credentials_env=snakemake.params.credentials_env,
)
