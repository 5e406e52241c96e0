import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels.validate import validate  # noqa: E402

validate(
    catalog=snakemake.input.catalog,
    table=snakemake.input.table,
    flux=snakemake.input.flux,
    clean_table=snakemake.input.clean,
    rejects=snakemake.input.rejects,
    truth=snakemake.input.get("truth"),  # None for real data (no truth table)
    model_dirs=[path.rsplit("/", 1)[0] for path in snakemake.input.models],
    labels=snakemake.params.labels,
    survey=snakemake.params.survey,
    grid_cfg=snakemake.params.grid,
    cfg=snakemake.params.validate,
    metrics=snakemake.output.metrics,
    plots={
        name: getattr(snakemake.output, name)
        for name in ("one_to_one_true", "one_to_one_reference", "kiel", "abundances", "tsne",
                     "gradients", "precision_vs_snr")
    },
    experiment=snakemake.wildcards.exp,
    linelist=snakemake.params.linelist,
    simulate_cfg=snakemake.params.simulate,
    config_hash=snakemake.params.config_hash,
    remap_report=snakemake.input.get("remap"),  # deep_remap experiments only
)
