import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.acquire_synthetic(
    simulate_cfg=snakemake.params.simulate,
    raw_dir=snakemake.output.models.rsplit("/", 1)[0],
    threads=snakemake.threads,
    config_hash=snakemake.params.config_hash,
)
