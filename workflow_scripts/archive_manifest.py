import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.archive_manifest(survey=p.survey, source=p.source, mirror=p.mirror, archive_cfg=p.archive,
                        download_cfg=p.download, grid_cfg=p.grid, labels=p.labels,
                        remote=o.remote, catalog=o.catalog, download_dir=p.download_dir,
                        reference_stars=p.reference_stars, config_hash=job.config_hash)
