import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.clean(
    flux=snakemake.input.flux,
    table=snakemake.input.table,
    labels=snakemake.params.labels,
    cfg=snakemake.params.clean,
    out_table=snakemake.output.table,
    plot=snakemake.output.plot,
    threads=snakemake.threads,
    config_hash=snakemake.params.config_hash,
)
