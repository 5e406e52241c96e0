import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
PLOTS = ("one_to_one_true", "one_to_one_reference", "kiel", "abundances", "tsne", "gradients",
         "precision_vs_snr", "coverage")
stages.validate(catalog=i.catalog, table=i.table, flux=i.flux, ivar=i.ivar, clean_table=i.clean,
                rejects=i.rejects, truth=i.get("truth"), model_dirs=runtime.folders(i.models),
                labels=p.labels, survey=p.survey, grid_cfg=p.grid, cfg=p.validate,
                metrics=o.metrics, plots={name: o[name] for name in PLOTS},
                experiment=snakemake.wildcards.exp, linelist=p.linelist,
                simulate_cfg=p.simulate, config_hash=job.config_hash, method=p.method,
                method_report=i.get("method_report"), calibration=i.calibration,
                continuum=p.continuum, refine_report=i.get("refine_report"),
                reference_scale=i.get("reference_scale"))
