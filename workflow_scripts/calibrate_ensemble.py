import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # the rule log gets everything

from starlabels import stages  # noqa: E402

stages.calibrate_ensemble(
    flux=snakemake.input.flux,
    table=snakemake.input.table,
    model_dirs=[path.rsplit("/", 1)[0] for path in snakemake.input.models],
    cfg=snakemake.params.calibration,
    out=snakemake.output[0],
)
