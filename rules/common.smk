# Config validation and the path/params helpers every rule uses. No rules here.
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the workflow's own starlabels/ wins over an installed one

from snakemake.exceptions import WorkflowError
from starlabels.artifacts import config_hash
from starlabels.config import ConfigError, canonical, validate_config

try:
    _validated = validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))
config.clear()
config.update(canonical(_validated))  # key order must not decide what reruns

R = config["results"]
EXPERIMENTS = config["experiments"]


wildcard_constraints:
    exp="|".join(EXPERIMENTS) or "NO_EXPERIMENT",
    member=r"\d+",
    shard=r"\d+",


def exp_cfg(wildcards):
    return EXPERIMENTS[wildcards.exp]


def section(name):
    """params function giving one experiment's config section (so edits rerun only its stage)."""
    return lambda wildcards: EXPERIMENTS[wildcards.exp][name]


def section_hash(*names):
    return lambda wildcards: config_hash(
        {n: EXPERIMENTS[wildcards.exp][n] for n in names}
    )


def members(exp):
    return range(EXPERIMENTS[exp]["train"]["members"])


def shards(exp):
    return range(EXPERIMENTS[exp]["predict"]["shards"])


def model_files(wildcards):
    return expand(
        f"{R}/{wildcards.exp}/models/member_{{member}}/model.json",
        member=members(wildcards.exp),
    )


def shard_files(wildcards):
    return expand(
        f"{R}/{wildcards.exp}/predictions/shard_{{shard}}.parquet",
        shard=shards(wildcards.exp),
    )


def trainset_inputs(wildcards):
    e = EXPERIMENTS[wildcards.exp]
    inputs = {
        "observed_flux": f"{R}/{wildcards.exp}/normalized/flux.npy",
        "observed_table": f"{R}/{wildcards.exp}/normalized/stars.parquet",
        "clean_table": f"{R}/{wildcards.exp}/clean/clean.parquet",
    }
    if "synthetic" in e["trainset"]["sources"]:
        inputs["synthetic_flux"] = f"{R}/{wildcards.exp}/synthetic/flux.npy"
        inputs["synthetic_table"] = f"{R}/{wildcards.exp}/synthetic/spectra.parquet"
    return inputs


PLOTS = [
    "one_to_one_true",
    "one_to_one_reference",
    "kiel",
    "abundances",
    "tsne",
    "gradients",
    "precision_vs_snr",
]


def final_targets():
    targets = []
    for exp in config["run"]:
        targets += [
            f"{R}/{exp}/catalog/starlabels_{exp}.fits",
            f"{R}/{exp}/catalog/starlabels_{exp}.parquet",
            f"{R}/{exp}/metrics.json",
        ]
        targets += [f"{R}/{exp}/plots/{p}.png" for p in PLOTS]
    return targets
