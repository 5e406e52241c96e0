import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.assemble_synthetic(
    remote=snakemake.input.remote,
    shards=list(snakemake.input.shards),
    raw_dir=snakemake.output.models.rsplit("/", 1)[0],
    config_hash=snakemake.params.config_hash,
)
