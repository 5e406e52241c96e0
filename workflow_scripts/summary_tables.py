import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything
from starlabels import stages  # noqa: E402

i, o = snakemake.input, snakemake.output
stages.summary_tables(metrics=i.metrics, catalog=i.catalog, labels=snakemake.params.labels,
                      metrics_html=o.metrics, catalog_html=o.catalog)
