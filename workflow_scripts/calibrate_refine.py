import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.calibrate_refine(emulator_dir=runtime.folder(i.emulator), flux=i.flux, ivar=i.ivar,
                        trainset_table=i.trainset, predictions=list(i.predictions),
                        labels=p.labels, cfg=p.refine, out=o[0], threads=snakemake.threads,
                        config_hash=job.config_hash)
