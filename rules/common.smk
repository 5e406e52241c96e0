# Config validation and the path/params helpers every rule uses. No rules here.
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, workflow.basedir)  # the workflow's own starlabels/ wins over an installed one

from snakemake.exceptions import WorkflowError
from starlabels import methods, runlock, surveys
from starlabels.config import ConfigError, canonical, check_config_files, validate_config

try:
    # Snakemake read the config files keeping the last of two equal keys: read them as written
    check_config_files(workflow.configfiles)
    _validated = validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))
config.clear()
config.update(canonical(_validated))  # key order must not decide what reruns

R = config["results"]
EXPERIMENTS = config["experiments"]


# ---- one run per results folder (starlabels.runlock): Snakemake's own lock covers only this
# checkout's working directory, not a results folder another checkout also writes


def take_results_folders():
    """onstart: lock results/<exp>/ for every experiment with jobs to run, after the DAG is
    built and before Snakemake deletes any output; the jobs join with STARLABELS_RUN_ID."""
    jobs = workflow.dag.needrun_jobs()
    experiments = sorted({job.wildcards_dict.get("exp") for job in jobs} - {None})
    try:
        runlock.hold_for_run([f"{R}/{exp}" for exp in experiments])
    except runlock.RunLockError as err:
        raise WorkflowError(str(err))


def job_experiments():
    """The experiments of the jobs a job-side Snakemake (a Slurm job) runs, from its
    --target-jobs: Snakemake hands the targets over on that command line and sets
    workflow.dag_settings only after it has read the Snakefile."""
    from snakemake.target_jobs import parse_target_jobs_cli_args

    argv = sys.argv[1:]
    values = []
    if "--target-jobs" in argv:
        for arg in argv[argv.index("--target-jobs") + 1 :]:
            if arg.startswith("--"):
                break
            values.append(arg)
    specs = parse_target_jobs_cli_args(values) or []
    return sorted({t.wildcards_dict["exp"] for t in specs if "exp" in t.wildcards_dict})


if workflow.is_main_process:
    os.environ[runlock.RUN_ENV] = ""  # an id inherited from elsewhere is not this run's
else:
    # a job run by Snakemake on another machine (Slurm): its Snakemake deletes the job's
    # outputs before running it, so the folder must still be its run's first
    try:
        runlock.join_run([f"{R}/{exp}/logs" for exp in job_experiments()])
    except runlock.RunLockError as err:
        raise WorkflowError(str(err))


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


def survey(exp):
    """The survey record of an experiment (starlabels.surveys)."""
    return surveys.get(EXPERIMENTS[exp]["survey"])


def method(exp):
    """The method record of an experiment (starlabels.methods)."""
    return methods.get(EXPERIMENTS[exp]["method"])


def manifest_download_settings(wildcards):
    """The download settings the manifest job uses (the survey's record says which: the TAP
    wait, or all fetch options where the catalogue is a file), so tuning concurrency later
    does not re-run the archive queries."""
    d = EXPERIMENTS[wildcards.exp]["download"]
    keys = survey(wildcards.exp).manifest_download
    return d if keys is None else {k: d[k] for k in keys}


def required_reference_stars(wildcards):
    """The reference_stars section when the experiment requires it (checked before anything is
    downloaded), else None, so editing an optional table does not re-run the archive queries."""
    ref = EXPERIMENTS[wildcards.exp]["reference_stars"]
    return ref if ref["required"] else None


def archive_login(wildcards):
    """The login block of the archive the survey's record names (ESO for Gaia-ESO spectra: its
    token endpoint and the names, never the values, of the environment variables with the user
    and password); None for public data (SDSS, PHOENIX)."""
    block = survey(wildcards.exp).credentials if wildcards.dataset == "observed" else None
    if block is None:
        return None
    archive = EXPERIMENTS[wildcards.exp]["archive"][block]
    return {k: archive[k] for k in ("token_url", "user_env", "password_env")}


def truth_input(wildcards):
    """validate's truth table: only simulated surveys have one (real data have none)."""
    if _observed_source(wildcards.exp) == "simulate":
        return {"truth": f"{R}/{wildcards.exp}/truth/truth.parquet"}
    return {}


def section(name):
    """params function giving one experiment's config section (so edits rerun only its stage)."""
    return lambda wildcards: EXPERIMENTS[wildcards.exp][name]


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
        "observed_ivar": f"{R}/{wildcards.exp}/normalized/ivar.npy",
        "observed_table": f"{R}/{wildcards.exp}/normalized/stars.parquet",
        "clean_table": f"{R}/{wildcards.exp}/clean/clean.parquet",
    }
    if "synthetic" in e["trainset"]["sources"]:
        inputs["synthetic_flux"] = f"{R}/{wildcards.exp}/synthetic/flux.npy"
        inputs["synthetic_ivar"] = f"{R}/{wildcards.exp}/synthetic/ivar.npy"
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
    "coverage",
]


def method_section(wildcards):
    """params: the method's own config section (deep_remap: `remap`), None for a method without
    one (so remap edits do not rerun regression-CNN members)."""
    return method(wildcards.exp).settings(EXPERIMENTS[wildcards.exp])


def predict_options(wildcards):
    """params: the settings of the method's own section that prediction uses."""
    return method(wildcards.exp).predict_options(EXPERIMENTS[wildcards.exp])


ABLATION_VARIANTS = "|".join(v for m in methods.METHODS for v in methods.get(m).variants)


def ablation_files(wildcards):
    return expand(
        f"{R}/{wildcards.exp}/ablation/{{variant}}/model.json",
        variant=EXPERIMENTS[wildcards.exp]["remap"]["ablation"],
    )


def ablation_targets():
    """The ablation study's outputs for every experiment run whose method has ablation variants
    and whose config lists some."""
    return [f"{R}/{exp}/{out}" for exp in config["run"]
            if method(exp).variants and EXPERIMENTS[exp][method(exp).section]["ablation"]
            for out in ("ablation.md", "ablation.json")]


def method_report_input(wildcards):
    """validate's extra input where the method writes a report (deep_remap: calibration and
    classes)."""
    path = method(wildcards.exp).report
    return {"method_report": f"{R}/{wildcards.exp}/{path}"} if path else {}


def calibration_section(wildcards):
    """params: the section the method's ensemble calibration reads."""
    return method(wildcards.exp).calibration_settings(EXPERIMENTS[wildcards.exp])


def ensemble_calibration_input(wildcards):
    """The fitted ensemble calibration where the method calibrates the whole ensemble
    (deep_remap with calibration.level ensemble; the regression CNN with
    calibration.enabled)."""
    if method(wildcards.exp).calibrates_ensemble(EXPERIMENTS[wildcards.exp]):
        return {"ensemble_calibration": f"{R}/{wildcards.exp}/models/ensemble_calibration.json"}
    return {}


def evolutionary_classes(wildcards):
    """params: the log g limits of the giant / sub-giant / dwarf classes where the survey has
    giant candidates to classify (MARVELS), None otherwise."""
    if not survey(wildcards.exp).classes:
        return None
    v = EXPERIMENTS[wildcards.exp]["validate"]
    return {k: v[k] for k in ("giant_logg_max", "dwarf_logg_min")}


# ---- refine (rules/refine.smk): experiments with refine.enabled

REFINED = experiments_pattern([e for e in EXPERIMENTS if EXPERIMENTS[e]["refine"]["enabled"]])


def refined(exp):
    return EXPERIMENTS[exp]["refine"]["enabled"]


def refine_settings(*keys):
    """params: the refine section's keys a rule uses (so editing the others reruns nothing)."""
    return lambda wildcards: {k: EXPERIMENTS[wildcards.exp]["refine"][k] for k in keys}


def refine_model_files(wildcards):
    return expand(
        f"{R}/{wildcards.exp}/refine/models_{{shard}}.npy", shard=shards(wildcards.exp)
    )


def refine_catalog_input(wildcards):
    """catalog's refined shards where the experiment refines its labels."""
    if not refined(wildcards.exp):
        return {}
    return {
        "refined": expand(
            f"{R}/{wildcards.exp}/refine/shard_{{shard}}.parquet",
            shard=shards(wildcards.exp),
        )
    }


def reference_scaled(exp):
    return EXPERIMENTS[exp]["reference_scale"]["enabled"]


def reference_scale_input(wildcards):
    """catalog's and validate's reference-star scale where the experiment fits one."""
    if not reference_scaled(wildcards.exp):
        return {}
    return {"reference_scale": f"{R}/{wildcards.exp}/catalog/reference_scale.json"}


def refine_report_input(wildcards):
    """validate's refine report (merged into metrics.json) where the experiment refines."""
    if not refined(wildcards.exp):
        return {}
    return {"refine_report": f"{R}/{wildcards.exp}/refine_report.json"}


def stage_outputs(exp):
    """Every file the experiment's jobs write before the catalogue, as `rule all` asks for them.

    Snakemake deletes a job's outputs when the job starts and, on the next run, rebuilds a
    missing file only when something it must run needs it: after a killed `--forcerun
    normalize` the later stages' outputs still exist, so without these targets the normalized
    matrices would stay missing and the plain rerun would say "Nothing to be done". As
    targets, a missing one is rebuilt and everything downstream of it reruns."""
    w = SimpleNamespace(exp=exp)
    e = EXPERIMENTS[exp]
    raw = f"{R}/{exp}/raw"
    files = [f"{raw}/observed/{n}" for n in
             ("manifest.parquet", "catalog.fits", "calibration_stars.parquet", "spectra")]
    if _observed_source(exp) == "simulate":
        files.append(f"{R}/{exp}/truth/truth.parquet")
    else:
        files += [f"{raw}/observed/download/remote.parquet",
                  f"{raw}/observed/download/catalog.fits", *download_shard_files("observed")(w)]
    inputs = trainset_inputs(w)
    if "synthetic_flux" in inputs:
        files += [f"{raw}/phoenix/manifest.parquet", f"{raw}/phoenix/HiResFITS",
                  *[f"{R}/{exp}/synthetic/{n}" for n in
                    ("flux.npy", "ivar.npy", "spectra.parquet", "rejects.parquet")]]
        if _synthetic_source(exp) == "phoenix":
            files += [f"{raw}/phoenix/download/remote.parquet",
                      *download_shard_files("phoenix")(w)]
    files += [f"{R}/{exp}/normalized/{n}" for n in
              ("flux.npy", "ivar.npy", "stars.parquet", "rejects.parquet")]
    files += [f"{R}/{exp}/clean/clean.parquet", f"{R}/{exp}/clean/tsne_clean.png"]
    files += [f"{R}/{exp}/trainset/{n}" for n in ("flux.npy", "ivar.npy", "spectra.parquet")]
    for folder in parent_folders(model_files(w)):  # ablation members: the `ablation` target
        files += [f"{folder}/{n}" for n in ("model.pt", "model.json", "history.csv")]
    files += list(ensemble_calibration_input(w).values())
    files += list(method_report_input(w).values())
    files += shard_files(w)
    files += list(reference_scale_input(w).values())
    if refined(exp):
        files += [f"{R}/{exp}/models/emulator/{n}" for n in ("model.pt", "model.json",
                                                             "history.csv")]
        files += [f"{R}/{exp}/refine/calibration.json", f"{R}/{exp}/refine_report.json",
                  *refine_catalog_input(w)["refined"], *refine_model_files(w)]
    return files


def parent_folders(paths):
    return [str(Path(p).parent) for p in paths]


def final_targets():
    targets = []
    for exp in config["run"]:
        targets += [f"{R}/{exp}/{out}" for out in method(exp).report_outputs]
        targets += [
            f"{R}/{exp}/catalog/starlabels_{exp}.fits",
            f"{R}/{exp}/catalog/starlabels_{exp}.parquet",
            f"{R}/{exp}/metrics.json",
            f"{R}/{exp}/models/ensemble.json",
            f"{R}/{exp}/tables/metrics.html",
            f"{R}/{exp}/tables/catalog_summary.html",
        ]
        targets += [f"{R}/{exp}/plots/{p}.png" for p in PLOTS]
        targets += stage_outputs(exp)
        if refined(exp):
            targets += [f"{R}/{exp}/plots/refine_fits.png"]
    return targets
