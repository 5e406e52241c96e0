import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.refine_report(catalog=i.catalog, truth=i.get("truth"), flux=i.flux, ivar=i.ivar,
                     model_files=list(i.models), calibration=i.calibration, labels=p.labels,
                     survey=p.survey, grid_cfg=p.grid, plot_stars=p.plot_stars,
                     snr_bins=p.snr_bins, targets=p.targets, linelist=p.linelist,
                     metrics=o.metrics, plot=o.fits, config_hash=job.config_hash)
