import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

sys.excepthook = stages.concise_excepthook  # a config gap is one clear message

stages.phoenix_manifest(
    phoenix_cfg=snakemake.params.phoenix,
    mirror=snakemake.params.mirror,
    download_cfg={"shards": snakemake.params.shards},
    remote=snakemake.output.remote,
    config_hash=snakemake.params.config_hash,
)
