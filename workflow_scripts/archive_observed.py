import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

sys.excepthook = stages.concise_excepthook  # e.g. an empty calibration table: one clear message

stages.assemble_observed(
    survey=snakemake.params.survey,
    remote=snakemake.input.remote,
    shards=list(snakemake.input.shards),
    catalog=snakemake.input.catalog,
    raw_dir=snakemake.output.spectra.rsplit("/", 1)[0],
    reference_stars=snakemake.params.reference_stars,
    config_hash=snakemake.params.config_hash,
)
