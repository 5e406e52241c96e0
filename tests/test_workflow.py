"""End-to-end: the whole DAG on the tiny config through `snakemake --cores 2`, then what a
Snakemake user relies on: lint, dry-run rerun recipes, config errors before any job."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from starlabels.artifacts import load_table
from starlabels.catalog import read_catalog
from tiny import snakemake

pytestmark = pytest.mark.slow


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table that Snakemake prints."""
    counts = {}
    block = output.split("Job stats:")[-1]
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_all_outputs_exist(tiny_run):
    results = tiny_run["results"]
    for exp in ("tiny_ges", "tiny_marvels"):
        for rel in (f"catalog/starlabels_{exp}.fits", f"catalog/starlabels_{exp}.parquet",
                    "metrics.json", "clean/tsne_clean.png",
                    *[f"plots/{p}.png" for p in ("one_to_one_true", "one_to_one_reference",
                                                  "kiel", "abundances", "tsne", "gradients",
                                                  "precision_vs_snr", "coverage")]):
            path = results / exp / rel
            assert path.exists() and path.stat().st_size > 0, path
        for rule in ("normalize", "clean", "catalog", "validate"):
            assert (results / exp / "logs" / f"{rule}.log").exists()
            assert (results / exp / "benchmarks" / f"{rule}.tsv").exists()


def test_catalogs_pass_fitsverify(tiny_run, fitsverify):
    for exp in ("tiny_ges", "tiny_marvels"):
        fitsverify(tiny_run["results"] / exp / "catalog" / f"starlabels_{exp}.fits")


def test_catalog_content_and_metrics(tiny_run):
    results = tiny_run["results"]
    cat = load_table(results / "tiny_ges" / "catalog" / "starlabels_tiny_ges.parquet")
    stars = load_table(results / "tiny_ges" / "normalized" / "stars.parquet")
    rejects = load_table(results / "tiny_ges" / "normalized" / "rejects.parquet")
    truth = load_table(results / "tiny_ges" / "truth" / "truth.parquet")
    # every simulated star is catalogued or named in the rejects table: nothing silently lost,
    # and the stars missing from the catalogue are exactly those with broken archive files
    assert len(cat) == len(stars)
    missing = set(truth["star_id"]) - set(cat["star_id"])
    named = " ".join(rejects["spectrum_id"].astype(str) + " " + rejects["path"].astype(str))
    assert all(star in named for star in missing)
    broken, once = truth["broken"] != "", truth["n_visits"] == 1
    assert missing == set(truth.loc[broken & once, "star_id"]) and missing
    # a star whose first visit's files are broken is catalogued from its other visits
    assert set(truth.loc[broken & ~once, "star_id"]) <= set(cat["star_id"])
    assert (rejects["reason"].str.len() > 0).all() and set(rejects["stage"]) == {"normalize"}
    for label in ("teff", "logg", "fe_h", "mg_fe", "al_fe"):
        assert cat[label].notna().all() and (cat[f"{label}_err"] > 0).all()
        # the deep ensemble's total error holds the members' scatter
        assert (cat[f"{label}_err_raw"] >= cat[f"{label}_err_members"]).all()
    calibration = json.loads((results / "tiny_ges" / "models" / "ensemble_calibration.json")
                             .read_text())
    assert calibration["method"] == "cnn_regression" and len(calibration["members"]) == 2
    for label in ("teff", "logg", "fe_h", "mg_fe", "al_fe"):
        factors = np.asarray(calibration["scale"][label])[
            np.searchsorted(calibration["snr_edges"], cat["snr"].to_numpy(), side="right")]
        np.testing.assert_allclose(cat[f"{label}_err"], factors * cat[f"{label}_err_raw"],
                                   rtol=1e-9)
    metrics = json.loads((results / "tiny_ges" / "metrics.json").read_text())
    assert set(metrics["uncertainty"]) == {"teff", "logg", "fe_h", "mg_fe", "al_fe"}
    assert len(metrics["uncertainty"]["teff"]["snr_terciles"]) == 3
    assert "mg_fe" in metrics["alpha_sequence"]
    assert metrics["paper_comparison"]["labels"]["teff"]["training_precision"]["n"] > 0
    assert metrics["evaluation_split"] == "test"
    assert set(metrics["precision"]["vs_true"]) == {"teff", "logg", "fe_h", "mg_fe", "al_fe"}
    assert metrics["clean"]["n_cleaned"] > 0
    report = metrics["precision_report"]
    assert {r["label"] for r in report} == {"teff", "logg", "fe_h", "mg_fe", "al_fe"}
    assert all(r["crlb"] > 0 for r in report if r["n"] > 0 and r["crlb"] == r["crlb"])
    # the Gaia FGK benchmark stars: observed, kept out of training, reported beside the table
    benchmarks = truth.loc[truth["population"] == "benchmark", "star_id"]
    bench = metrics["reference_stars"]
    assert bench["n"] == len(benchmarks) > 0 and not bench["not_predicted"]
    assert {s["split"] for s in bench["stars"]} == {"calibration"}
    assert {"Sun", "Arcturus (HD 124897)"} <= {s["name"] for s in bench["stars"]}
    assert "reference stars, predicted vs literature" in \
        (results / "tiny_ges" / "logs" / "validate.log").read_text()
    # the reference-star scale rule ran, but tiny's 3-epoch ensemble predicts nearly one Teff
    # and log g for every benchmark star: no trend is fitted on that, the labels stay as
    # predicted and the record and the metrics say why (tests/test_reference_scale.py covers
    # the fitted path through the same stages)
    scale = json.loads((results / "tiny_ges" / "catalog" / "reference_scale.json").read_text())
    for label in ("teff", "logg", "fe_h", "mg_fe", "al_fe"):
        # the abundance ratios' trend is refused too: the same flat terms, or (as here) no
        # predicted [Fe/H] inside the window it is fitted in
        fit = scale["labels"][label]
        method = "abundance_trend" if label in ("mg_fe", "al_fe") else "reference_stars"
        assert not fit["applied"] and (
            "span too little" in fit["reason"]
            or (method == "abundance_trend" and "needed" in fit["reason"])), fit["reason"]
        assert metrics["reference_scale"][label] == {"applied": False, "method": method,
                                                     "reason": fit["reason"]}
        assert f"{label}_raw" not in cat and f"{label}_err_scale" not in cat
    mm = json.loads((results / "tiny_marvels" / "metrics.json").read_text())
    assert mm["evaluation_split"] == "calibration"
    # the 10 calibration stars, each spectrum (repeat visits included) evaluated
    cal = load_table(results / "tiny_marvels" / "catalog" / "starlabels_tiny_marvels.parquet")
    cal = cal[cal["split"] == "calibration"]
    assert cal["star_id"].nunique() == 10 and mm["precision"]["n_stars"] == len(cal)
    assert set(mm["giant_candidates"]["true"]) >= {"giant", "subgiant", "dwarf"}


def test_deep_remap_outputs(tiny_run):
    """tiny_marvels runs deep_remap: distributions, neighbours, classes, ablation, calibration."""
    results = tiny_run["results"] / "tiny_marvels"
    for rel in ("ablation.md", "ablation.json", "remap_report.json", "plots/reliability.png",
                "plots/embedding_map.png", "ablation/no_pretrain/model.json",
                "models/ensemble_calibration.json"):
        assert (results / rel).stat().st_size > 0, rel
    cat = load_table(results / "catalog" / "starlabels_tiny_marvels.parquet")
    for label in ("teff", "logg", "fe_h"):
        assert (cat[f"{label}_q16"] <= cat[f"{label}_q84"]).all()
        # the probability-weighted mean lies inside the 68 % interval unless the distribution is
        # skewed or two-peaked (a minor peak far off pulls the mean out): most stars, not all
        inside = (cat[f"{label}_q16"] <= cat[label] + 1e-9) & (cat[label] <= cat[f"{label}_q84"]
                                                               + 1e-9)
        assert inside.mean() >= 0.9
        probs = np.stack(cat[f"{label}_prob"].to_numpy())
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert cat["knn_star_id"].str.split(";").map(len).eq(3).all()
    assert (np.diff(np.stack(cat["knn_distance"].to_numpy()), axis=1) >= 0).all()
    assert set(cat["evolutionary_class"]) <= {"giant", "subgiant", "dwarf"}
    metrics = json.loads((results / "metrics.json").read_text())
    remap = metrics["deep_remap"]
    assert set(remap["calibration_stars"]) == {"full", "ensemble"}
    for label, target in remap["calibration_star_targets"].items():
        assert target["sigma"] == remap["calibration_stars"]["ensemble"][label]["sigma"]
    # the ablation study (its own target): the ablation member beside member 0 and the ensemble,
    # the same figures for those two as the report's
    ablation = json.loads((results / "ablation.json").read_text())
    assert set(ablation["variants"]) == {"full", "ensemble", "no_pretrain"}
    for name in ("full", "ensemble"):
        assert ablation["variants"][name]["teff"] == remap["calibration_stars"][name]["teff"]
    assert ablation["provenance"]["stage"] == "ablation_report"
    assert set(remap["heldout"]["labels"]) == {"teff", "logg", "fe_h"}
    assert remap["heldout"]["splits"].keys() >= {"calibration"}
    for member in remap["members"]:
        assert all(t > 0 for t in member["temperatures"])
    assert "| no_pretrain |" in (results / "ablation.md").read_text()
    fits_cat = read_catalog(results / "catalog" / "starlabels_tiny_marvels.fits")
    # probabilities and embeddings are in the FITS catalogue too (fixed-width array columns)
    assert list(fits_cat.columns) == list(cat.columns)
    for name in ("teff_prob", "embedding", "knn_distance"):
        np.testing.assert_array_equal(np.stack(fits_cat[name]), np.stack(cat[name]))


def test_lint_reports_nothing(repo):
    proc = snakemake(repo, "--lint")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Lints for" not in text, text


def test_forcerun_predict_reruns_only_downstream(repo, tiny_run):
    proc = snakemake(repo, "-n", *tiny_run["args"], "--forcerun", "predict")
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    # remap_report: deep_remap's report reads the catalogue; tiny_ges refines its predictions
    # (calibrate_refine fits the valid stars from them, refine each shard) and fits its
    # reference-star scale on them, which its ensemble manifest carries
    assert set(counts) == {"predict", "catalog", "validate", "remap_report", "summary_tables",
                           "calibrate_refine", "refine", "refine_report", "reference_scale",
                           "ensemble", "all"}, counts
    assert counts["ensemble"] == 1         # tiny_ges's; tiny_marvels fits no reference scale
    assert counts["refine"] == 2           # tiny_ges's 2 shards
    assert counts["predict"] == 4          # 2 shards × 2 experiments


def test_changed_normalize_parameter_reruns_normalize_and_downstream(repo, tiny_run, tmp_path,
                                                                       tiny_config_path):
    cfg = yaml.safe_load(tiny_config_path.read_text())
    cfg["experiments"]["tiny_ges"]["normalize"] = {"continuum": {"order": 4}}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    args = ["--cores", "2", "--configfile", str(changed), "--config",
            f"results={tiny_run['results']}"]
    proc = snakemake(repo, "-n", *args)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    assert counts.get("normalize") == 1 and "acquire_observed" not in counts, counts
    for rule in ("clean", "trainset", "catalog", "validate"):
        assert counts.get(rule) == 1, (rule, counts)
    assert counts.get("train") == 2 and counts.get("predict") == 2
    assert counts.get("calibrate_ensemble") == 1


def test_up_to_date_run_does_nothing(repo, tiny_run):
    proc = snakemake(repo, "-n", *tiny_run["args"])
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_config_error_stops_before_any_job(repo, tmp_path, tiny_config_path):
    cfg = yaml.safe_load(tiny_config_path.read_text())
    cfg["experiments"]["tiny_ges"]["train"]["device"] = "gpu"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(repo, "-n", "--configfile", str(bad), "--config",
                     f"results={tmp_path / 'r'}")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "experiments.tiny_ges.train.device" in text and "'cuda'" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, words", [
    # Snakemake's own loader keeps the last of two equal keys: 40 members would run
    ("run: [e]\nexperiments:\n  e:\n    train: {members: 4}\n    train: {members: 40}\n",
     ["found the key 'train' twice (first on line 4)"]),
    ("run: [x]\nexperiments:\n  ../../x: {}\n", ["experiments.../../x", "not a safe folder name"]),
])
def test_config_files_snakemake_reads_are_checked_as_written(repo, tmp_path, text, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = snakemake(repo, "-n", "--configfile", str(bad), "--config",
                     f"results={tmp_path / 'r'}")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    for word in words:
        assert word in output, output
    assert not (tmp_path / "r").exists() and not (tmp_path.parent / "x").exists()


def _all_inputs(repo: Path, *args: str) -> set[str]:
    """The input files of `rule all` as a forced dry run prints them."""
    proc = snakemake(repo, "-n", "-f", "all", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    block = proc.stdout.split("rule all:", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("input:"))
    return set(line.split("input:", 1)[1].strip().split(", "))


def _written(repo: Path, *args: str) -> set[str]:
    """Every file a job of the workflow writes (Snakemake's --summary)."""
    proc = snakemake(repo, "--summary", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("output_file"))
    return {ln.split("\t")[0] for ln in lines[start + 1:] if "\t" in ln}


@pytest.mark.parametrize("config", ["tests/configs/tiny.yaml", "configs/gaia_eso.yaml"])
def test_rule_all_names_every_file_the_workflow_writes(repo, tmp_path, config):
    args = ["--configfile", str(repo / config), "--config", f"results={tmp_path / 'r'}"]
    written = _written(repo, *args)
    assert written and _all_inputs(repo, *args) == written


def test_plain_rerun_after_killing_a_forcerun_rebuilds_what_it_deleted(repo, tiny_run, tmp_path):
    """Snakemake deletes a job's outputs when it starts it; killed then, the deleted files are
    missing while every later stage's outputs still exist. The plain rerun must rebuild them
    (and what depends on them), not report 'Nothing to be done'."""
    import signal

    results = tmp_path / "results"
    shutil.copytree(tiny_run["results"], results, copy_function=shutil.copy2)
    args = [a if not a.startswith("results=") else f"results={results}" for a in tiny_run["args"]]
    shard = results / "tiny_ges" / "predictions" / "shard_0.parquet"
    output = tmp_path / "killed_run.txt"
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args, "--forcerun",
                                 "predict"], cwd=repo, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while shard.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)   # Snakemake and its jobs, as kill -9 or a lost node
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, output.read_text()[-4000:]
    assert not shard.exists(), "the forced predict job never started"
    snakemake(repo, "--unlock", *args)     # what the README says to do after killing Snakemake
    plan = snakemake(repo, "-n", *args)
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = job_counts(plan.stdout)
    assert counts.get("predict", 0) >= 1, plan.stdout[-3000:]
    assert counts.get("catalog", 0) >= 1 and counts.get("validate", 0) >= 1, counts
    assert "Nothing to be done" not in plan.stdout + plan.stderr


def test_a_second_checkout_cannot_write_a_results_folder_in_use(repo, tmp_path,
                                                                tiny_config_path):
    """Snakemake's lock covers one working directory: a run from another checkout (here
    another working directory) would delete the raw spectra the first run is reading."""
    from test_runlock import Actor

    results = tmp_path / "results"
    spectra = results / "tiny_ges" / "raw" / "observed" / "spectra"
    spectra.mkdir(parents=True)
    (spectra / "being_read.fits").write_bytes(b"a file the first run is reading")
    first = Actor("run", results / "tiny_ges", tmp_path)     # the first run holds the folder
    assert first.first.startswith("RUN ")
    other = tmp_path / "other_checkout"
    other.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
             "--directory", str(other), "--cores", "1", "--configfile", str(tiny_config_path),
             "--config", f"results={results}", "run=[tiny_ges]",
             "--forcerun", "acquire_observed", "--until", "acquire_observed"],
            capture_output=True, text=True, timeout=600)
    finally:
        assert first.stop() == 0
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "is in use by run" in output and f"pid {first.proc.pid}" in output, output
    assert (spectra / "being_read.fits").exists()
    assert not (results / "tiny_ges" / "logs" / "acquire_observed.log").exists()


def test_a_cluster_job_of_another_run_deletes_nothing(repo, tmp_path, tiny_config_path):
    """A Slurm job runs its own Snakemake (``--mode remote --target-jobs ...``), which deletes
    the job's outputs before running it: a job whose run no longer owns the folder (it was
    pending when its run was killed, and another run has taken the folder since) must stop
    first. Run here as Slurm would start it, without Slurm."""
    from starlabels import runlock
    from test_runlock import Actor

    results = tmp_path / "results"
    spectra = results / "tiny_ges" / "raw" / "observed" / "spectra"
    spectra.mkdir(parents=True)
    (spectra / "of_the_new_run.fits").write_bytes(b"written by the run that owns the folder")
    owner = Actor("run", results / "tiny_ges", tmp_path)
    assert owner.first.startswith("RUN ")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
             "--target-jobs", "acquire_observed:exp=tiny_ges", "--mode", "remote", "--force",
             "--nolock", "--cores", "1", "--configfiles", str(tiny_config_path), "--config",
             f"results={results}", "run=[tiny_ges]"],
            cwd=repo, capture_output=True, text=True, timeout=600,
            env={**os.environ, runlock.RUN_ENV: "a-killed-run"})
    finally:
        assert owner.stop() == 0
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "this job of run a-killed-run stops without touching it" in output, output
    assert (spectra / "of_the_new_run.fits").exists()


def test_report_includes_plots_with_captions(repo, tiny_run, tmp_path):
    report = tmp_path / "report.html"
    proc = snakemake(repo, *tiny_run["args"], "--report", str(report))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "ERROR" not in text, text          # caption reST problems are printed, not raised
    html = report.read_text(errors="replace")
    for plot in ("gradients.png", "one_to_one_true.png", "kiel.png", "tsne_clean.png",
                 "metrics.html", "catalog_summary.html"):
        assert plot in html
    assert "Network gradients" in html and "Kiel diagram" in html
    assert "Each experiment runs" in html                  # the workflow description
    assert "Validation metrics per label" in html          # the tables' captions


# ------------------------------------------------------------------ a real Slurm

def _slurm_responds() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = out.stdout.split()
    return out.returncode == 0 and any(st.startswith(("idle", "mix", "alloc")) for st in states)


@pytest.fixture(scope="session")
def slurm_cluster(repo):
    """A one-node Slurm with accounting on loopback (tests/slurm/single_node_slurm.sh)."""
    if not _slurm_responds():
        if os.geteuid() != 0:
            pytest.skip("no Slurm here and not root, so tests/slurm/single_node_slurm.sh cannot "
                        "install and start one")
        # below the test's own timeout, so a machine where Slurm cannot start skips with the
        # script's last steps instead of failing the suite
        try:
            proc = subprocess.run(["bash", str(repo / "tests" / "slurm" / "single_node_slurm.sh"),
                                   "up"], capture_output=True, text=True, timeout=720)
        except subprocess.TimeoutExpired as exc:
            said = (exc.stderr or b"")
            said = said.decode(errors="replace") if isinstance(said, bytes) else said
            pytest.skip(f"could not start a test Slurm within {exc.timeout} s; it got to: "
                        f"{said[-1500:]}")
        if proc.returncode != 0 or not _slurm_responds():
            pytest.skip(f"could not start a test Slurm: {(proc.stdout + proc.stderr)[-2000:]}")
    return True


@pytest.mark.timeout(2400)      # up to 720 s to start Slurm, then the workflow's own 1500 s
def test_slurm_profile_runs_train_and_predict_as_slurm_jobs(repo, tiny_run, slurm_cluster,
                                                            tiny_config_path, tmp_path):
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = tmp_path / "results"
    # the prediction shards as the targets: every job that makes them (simulate to calibrate and
    # predict) runs on the cluster; what comes after them (reference scale, refine, catalogue,
    # validate: CPU jobs like the ones before predict) is left to the local run's tests, each a
    # cluster job polled every few seconds
    shards = [f"tiny_ges/predictions/shard_{k}.parquet" for k in range(2)]
    # (the targets first: after --configfile they would be read as more config files)
    proc = snakemake(
        repo, *(str(results / shard) for shard in shards),
        "--profile", "profiles/slurm", "--configfile", str(tiny_config_path),
        "--config", f"results={results}", 'run=["tiny_ges"]',
        # the test cluster's account/partition; it has no GPU, so members ask for none
        "--default-resources", "slurm_account=demo", "slurm_partition=main",
        "--set-resources", "train:gpu=0",
        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
        timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-S", start,
                            "--format=JobID,Comment,State"], capture_output=True, text=True,
                           check=True).stdout
    jobs = [line.split("|") for line in sacct.strip().splitlines()]
    completed = [comment for _, comment, state in jobs if state == "COMPLETED"]
    assert sum(c.startswith("rule_train_wildcards") for c in completed) == 2, sacct
    # (the profile groups the shards of an experiment into one predict job)
    assert any(c.startswith("rule_predict") for c in completed), sacct
    assert any(c.startswith("rule_calibrate_ensemble") for c in completed), sacct
    # the cluster run gives the same predictions as the local run of the same config
    for shard in shards:
        pd.testing.assert_frame_equal(load_table(results / shard),
                                      load_table(tiny_run["results"] / shard))


@pytest.mark.parametrize("recipe, expected", [
    # retrain one ensemble member only
    (["--forcerun", "train", "--until", "{results}/tiny_ges/models/member_1/model.json"],
     {"train": 1}),
    # rebuild one prediction shard only
    (["--forcerun", "predict", "--until", "{results}/tiny_ges/predictions/shard_1.parquet"],
     {"predict": 1}),
    # rerun a stage and everything downstream (both experiments calibrate their ensemble;
    # tiny_marvels is deep_remap: + its report; tiny_ges refines and fits its reference-star
    # scale; the ablation study is not part of the default run)
    (["-R", "clean"], {"clean": 2, "trainset": 2, "train": 4,
                       "calibrate_ensemble": 2, "predict": 4, "catalog": 2, "validate": 2,
                       "remap_report": 1, "ensemble": 2, "summary_tables": 2, "all": 1,
                       "train_emulator": 1, "calibrate_refine": 1, "refine": 2,
                       "refine_report": 1, "reference_scale": 1}),
    # the ablation study after retraining: its member and its table, nothing of the catalogue
    (["ablation", "--forcerun", "train_ablation"],
     {"train_ablation": 1, "ablation_report": 1, "ablation": 1}),
    # stop after a stage: nothing to do when it is up to date
    (["--until", "clean"], {}),
])
def test_readme_rerun_recipes_rerun_exactly_what_they_say(repo, tiny_run, recipe, expected):
    args = [a.format(results=tiny_run["results"]) for a in recipe]
    # the recipe first: a target after `--config key=value` would be read as another pair
    proc = snakemake(repo, "-n", *args, *tiny_run["args"])
    assert proc.returncode == 0, proc.stderr
    assert job_counts(proc.stdout) == expected, proc.stdout[-3000:]


def test_full_size_config_builds_a_small_dag_quickly(repo, tmp_path):
    # 36 904 stars × 30 members: the DAG size depends on shards and members, not on stars
    start = time.perf_counter()
    proc = snakemake(repo, "-n", "--configfile", str(repo / "configs" / "sim_ges_full.yaml"),
                     "--config", f"results={tmp_path / 'r'}")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    assert counts["train"] == 30 and counts["predict"] == 16
    # + ensemble (the models folder's manifest) and summary_tables (the report's tables)
    assert counts["calibrate_ensemble"] == 1 and sum(counts.values()) == 56
    assert elapsed < 20, f"dry run took {elapsed:.1f} s"
