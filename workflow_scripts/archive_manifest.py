import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

sys.excepthook = stages.concise_excepthook  # an unreachable archive is one clear message

stages.archive_manifest(
    survey=snakemake.params.survey,
    source=snakemake.params.source,
    mirror=snakemake.params.mirror,
    archive_cfg=snakemake.params.archive,
    download_cfg=snakemake.params.download,
    grid_cfg=snakemake.params.grid,
    labels=snakemake.params.labels,
    remote=snakemake.output.remote,
    catalog=snakemake.output.catalog,
    download_dir=snakemake.params.download_dir,
    reference_stars=snakemake.params.reference_stars,
    config_hash=snakemake.params.config_hash,
)
