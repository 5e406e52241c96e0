import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.synthesize(
    manifest=snakemake.input.manifest,
    grid_cfg=snakemake.params.grid,
    cfg=snakemake.params.synthesize,
    continuum=snakemake.params.continuum,
    flux=snakemake.output.flux,
    ivar=snakemake.output.ivar,
    table=snakemake.output.table,
    rejects=snakemake.output.rejects,
    threads=snakemake.threads,
    config_hash=snakemake.params.config_hash,
)
