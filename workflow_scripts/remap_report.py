import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.remap_report(
    flux=i.flux, table=i.table, catalog=i.catalog, truth=i.get("truth"),
    model_dirs=runtime.folders(i.models), classes=p.classes, targets=p.targets,
    metrics=o.metrics, reliability_plot=o.reliability, embedding_plot=o.embedding_map,
    config_hash=job.config_hash, ensemble_calibration=i.get("ensemble_calibration"))
