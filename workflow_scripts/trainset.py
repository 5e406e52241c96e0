import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.trainset(sources=p.sources, labels=p.labels, observed_flux=i.observed_flux,
                observed_ivar=i.observed_ivar, observed_table=i.observed_table,
                clean_table=i.clean_table, flux=o.flux, ivar=o.ivar, table=o.table,
                synthetic_flux=i.get("synthetic_flux"), synthetic_ivar=i.get("synthetic_ivar"),
                synthetic_table=i.get("synthetic_table"), config_hash=job.config_hash)
