# starlabels: raw stellar spectra → CNN-ensemble label catalogues.
# Stages: acquire → normalize → clean (t-SNE) → synthesize (PHOENIX) → trainset → train (ensemble)
#         → predict (shards) → [refine: emulator, calibration, per-shard fits] → catalog
#         → validate. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "resources/report/workflow.rst"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/download.smk"
include: "rules/normalize.smk"
include: "rules/clean.smk"
include: "rules/synthesize.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/refine.smk"
include: "rules/catalog.smk"
include: "rules/validate.smk"
include: "rules/remap.smk"


onstart:
    take_results_folders()


rule all:
    input:
        final_targets(),
    default_target: True


rule ablation:
    """deep-REMAP's ablation study for every experiment that lists ablation variants: not part
    of the default run (its members are as many trainings again as the ensemble)."""
    input:
        ablation_targets(),
