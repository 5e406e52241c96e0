# Config validation and the path/params helpers every rule uses. No rules here.
import re
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


# ---- where raw data come from (rules/acquire.smk simulates, rules/download.smk fetches)


def experiments_pattern(names):
    """Wildcard regex matching exactly these experiments (and nothing when there are none), so
    the simulating and the downloading rules never both claim a raw/ file."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def _observed_source(exp):
    return EXPERIMENTS[exp]["source"]


def _synthetic_source(exp):
    return EXPERIMENTS[exp]["synthetic"]["source"]


SIMULATED_OBSERVED = experiments_pattern(
    [e for e in EXPERIMENTS if _observed_source(e) == "simulate"]
)
ARCHIVE_OBSERVED = experiments_pattern(
    [e for e in EXPERIMENTS if _observed_source(e) != "simulate"]
)
SIMULATED_SYNTHETIC = experiments_pattern(
    [e for e in EXPERIMENTS if _synthetic_source(e) == "simulate"]
)
PHOENIX_SYNTHETIC = experiments_pattern(
    [e for e in EXPERIMENTS if _synthetic_source(e) == "phoenix"]
)


def download_shard_files(dataset):
    """input function: the per-shard fetch tables of one dataset (observed | phoenix)."""
    return lambda wildcards: expand(
        f"{R}/{wildcards.exp}/raw/{dataset}/download/shard_{{shard}}.parquet",
        shard=range(EXPERIMENTS[wildcards.exp]["download"]["shards"]),
    )


def manifest_download_settings(wildcards):
    """The download settings the manifest job uses: shards and the TAP wait, plus the fetch
    options for MARVELS (whose catalogue is a file); so tuning concurrency later does not
    re-run the archive queries."""
    d = EXPERIMENTS[wildcards.exp]["download"]
    if _observed_source(wildcards.exp) == "sdss_marvels":
        return d
    return {"shards": d["shards"], "tap_timeout_s": d["tap_timeout_s"]}


def required_reference_stars(wildcards):
    """The reference_stars section when the experiment requires it (checked before anything is
    downloaded), else None, so editing an optional table does not re-run the archive queries."""
    ref = EXPERIMENTS[wildcards.exp]["reference_stars"]
    return ref if ref["required"] else None


def credentials_env_names(wildcards):
    """Names (never values) of the environment variables with archive credentials: the ESO
    user/password for Gaia-ESO spectra; none for SDSS and PHOENIX (public)."""
    if wildcards.dataset == "observed" and _observed_source(wildcards.exp) == "eso_ges":
        eso = EXPERIMENTS[wildcards.exp]["archive"]["eso"]
        return [eso["user_env"], eso["password_env"]]
    return [None, None]


def truth_input(wildcards):
    """validate's truth table: only simulated surveys have one (real data have none)."""
    if _observed_source(wildcards.exp) == "simulate":
        return {"truth": f"{R}/{wildcards.exp}/truth/truth.parquet"}
    return {}


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


def remap_section(wildcards):
    """params: the `remap` section for deep_remap experiments, None otherwise (so remap edits do
    not rerun regression-CNN members)."""
    e = EXPERIMENTS[wildcards.exp]
    return e["remap"] if e["method"] == "deep_remap" else None


def ablation_files(wildcards):
    return expand(
        f"{R}/{wildcards.exp}/ablation/{{variant}}/model.json",
        variant=EXPERIMENTS[wildcards.exp]["remap"]["ablation"],
    )


def remap_metrics_input(wildcards):
    """validate's extra input for deep_remap experiments: the calibration/ablation report."""
    if EXPERIMENTS[wildcards.exp]["method"] == "deep_remap":
        return {"remap": f"{R}/{wildcards.exp}/remap_report.json"}
    return {}


def ensemble_calibration_input(wildcards):
    """deep_remap with ensemble-level temperature scaling: the fitted temperatures."""
    e = EXPERIMENTS[wildcards.exp]
    if e["method"] == "deep_remap" and e["remap"]["calibration"]["level"] == "ensemble":
        return {"ensemble_calibration": f"{R}/{wildcards.exp}/models/ensemble_calibration.json"}
    return {}


REMAP_PLOTS = ["reliability", "embedding_map"]


def final_targets():
    targets = []
    for exp in config["run"]:
        if EXPERIMENTS[exp]["method"] == "deep_remap":
            targets += [f"{R}/{exp}/ablation.md"]
            targets += [f"{R}/{exp}/plots/{p}.png" for p in REMAP_PLOTS]
        targets += [
            f"{R}/{exp}/catalog/starlabels_{exp}.fits",
            f"{R}/{exp}/catalog/starlabels_{exp}.parquet",
            f"{R}/{exp}/metrics.json",
        ]
        targets += [f"{R}/{exp}/plots/{p}.png" for p in PLOTS]
    return targets
