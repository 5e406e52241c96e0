import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.remap_report(
    flux=snakemake.input.flux,
    table=snakemake.input.table,
    catalog=snakemake.input.catalog,
    truth=snakemake.input.get("truth"),
    model_dirs=[path.rsplit("/", 1)[0] for path in snakemake.input.models],
    ablation_dirs={
        variant: path.rsplit("/", 1)[0]
        for variant, path in zip(snakemake.params.variants, snakemake.input.ablation)
    },
    classes=snakemake.params.classes,
    metrics=snakemake.output.metrics,
    ablation_md=snakemake.output.ablation,
    reliability_plot=snakemake.output.reliability,
    embedding_plot=snakemake.output.embedding_map,
    config_hash=snakemake.params.config_hash,
    ensemble_calibration=snakemake.input.get("ensemble_calibration"),
)
