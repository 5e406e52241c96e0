import _workflow_package  # noqa: F401  (the workflow's own starlabels first)
from starlabels import runtime

job = runtime.job(snakemake)  # the rule log gets everything; config hash of all params
from starlabels import stages  # noqa: E402

i, o, p = snakemake.input, snakemake.output, snakemake.params
stages.calibrate_ensemble(flux=i.flux, ivar=i.ivar, table=i.table,
                          model_dirs=runtime.folders(i.models), cfg=p.calibration,
                          keep_quantile=p.keep_quantile, out=o[0])
