import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.archive_observed(survey=p.survey, remote=i.remote, shards=list(i.shards),
                        catalog=i.catalog, raw_dir=runtime.folder(o.spectra),
                        reference_stars=p.reference_stars, config_hash=job.config_hash)
