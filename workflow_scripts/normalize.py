import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.normalize(survey=p.survey, manifest=i.manifest, catalog=i.catalog,
                 calibration=i.calibration, labels=p.labels, grid_cfg=p.grid,
                 selection=p.selection, solar=p.solar, cfg=p.normalize, flux=o.flux,
                 ivar=o.ivar, table=o.table, rejects=o.rejects, threads=snakemake.threads,
                 config_hash=job.config_hash)
