import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.normalize(
    survey=snakemake.params.survey,
    manifest=snakemake.input.manifest,
    catalog=snakemake.input.catalog,
    calibration=snakemake.input.calibration,
    labels=snakemake.params.labels,
    grid_cfg=snakemake.params.grid,
    selection=snakemake.params.selection,
    solar=snakemake.params.solar,
    cfg=snakemake.params.normalize,
    flux=snakemake.output.flux,
    ivar=snakemake.output.ivar,
    table=snakemake.output.table,
    rejects=snakemake.output.rejects,
    threads=snakemake.threads,
    config_hash=snakemake.params.config_hash,
)
