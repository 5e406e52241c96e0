import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.trainset(
    sources=snakemake.params.sources,
    labels=snakemake.params.labels,
    observed_flux=snakemake.input.observed_flux,
    observed_table=snakemake.input.observed_table,
    clean_table=snakemake.input.clean_table,
    synthetic_flux=snakemake.input.get("synthetic_flux"),
    synthetic_table=snakemake.input.get("synthetic_table"),
    flux=snakemake.output.flux,
    table=snakemake.output.table,
    config_hash=snakemake.params.config_hash,
)
