import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.train(
    flux=snakemake.input.flux,
    table=snakemake.input.table,
    labels=snakemake.params.labels,
    member=int(snakemake.wildcards.get("member", 0)),  # ablation variants reuse member 0's seed
    cfg=dict(snakemake.params.train, method=snakemake.params.method),
    model_dir=snakemake.output.sidecar.rsplit("/", 1)[0],
    threads=snakemake.threads,
    remap_cfg=snakemake.params.remap,
    variant=snakemake.wildcards.get("variant", "full"),
)
