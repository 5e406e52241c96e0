import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.ablation_report(
    flux=i.flux, table=i.table, truth=i.get("truth"), model_dirs=runtime.folders(i.models),
    ablation_dirs=dict(zip(p.variants, runtime.folders(i.ablation))), ablation_md=o.markdown,
    ablation_json=o.figures, config_hash=job.config_hash,
    ensemble_calibration=i.get("ensemble_calibration"))
