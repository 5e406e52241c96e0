import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, p = snakemake.input, snakemake.params
stages.ensemble(model_dirs=runtime.folders(i.models), out=snakemake.output[0], method=p.method,
                survey=p.survey, labels=p.labels, keep_quantile=p.keep_quantile,
                options=p.options, catalog_cfg=p.catalog, classes=p.classes,
                ensemble_calibration=i.get("ensemble_calibration"),
                reference_scale=i.get("reference_scale"),
                experiment=snakemake.wildcards.exp, config_hash=job.config_hash)
