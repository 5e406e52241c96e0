#!/usr/bin/env python
"""Refine throughput — 36 904 stars through the refine stage, one fresh process per shard.

The target: 36 904 stars refined in ≤ 120 s on 2 CPU cores, streamed by shard with flat
memory. The workload is a finished default run's refine inputs (``--run results/demo_ges``: its
emulator, calibration, normalised flux and inverse variance, star table and prediction shards)
tiled to 36 904 rows — each copy of a star gets its own ``spectrum_id`` — and written as
float32 ``.npy`` matrices (``artifacts.matrix_row_writer``) and prediction shard Parquet files
in a working folder under ``--out``. The rows are split into the shards of the survey-sized
config (``configs/sim_ges_full.yaml``, ``predict.shards``: 16) and each shard runs as the
workflow's refine rule does under ``snakemake --cores 2``: a fresh Python process per shard
(``threads: 1``, Snakemake's thread variables OMP/OPENBLAS/MKL/… = 1) calling
``starlabels.stages.refine``, two at a time.

Measured: wall time from the first job's start to the last one's end (process start-up and
imports included, Snakemake's own per-job overhead not), stars per second, each shard's process
and in-stage seconds, CPU seconds, and each job's peak RSS (its own ``VmHWM``, plus sampled
anonymous / file-backed peaks), beside the size of the matrices it streams, and the share of
stars whose fit converged.

``--quick`` needs no run: it builds a small synthetic one (400 stars, 400 pixels, 3 labels)
with the package's own jobs — ``stages.train_emulator`` (a quadratic emulator) and
``stages.calibrate_refine`` — and refines 1 000 rows in 4 shards.

    python bench/refine_throughput.py --run results/demo_ges     # after `snakemake --cores 2`

Target: ≤ 120 s for 36 904 stars on the 2-core CPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import _common as C

TARGET_SECONDS = 120.0
#: what Snakemake sets for a job of `threads: 1` (snakemake/shell.py); numpy reads them on import
JOB_THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                        "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
WRITE_ROWS = 2048
QUICK_ROWS, QUICK_SHARDS, QUICK_BASE_STARS = 1000, 4, 400
QUICK_SEGMENTS = [{"name": "HR10", "start": 5000.0, "end": 5019.9, "step": 0.1},
                  {"name": "HR21", "start": 8500.0, "end": 8519.9, "step": 0.1}]
QUICK_LABELS = ["teff", "logg", "fe_h"]
QUICK_LOW, QUICK_HIGH = np.array([4000.0, 1.0, -1.5]), np.array([7000.0, 5.0, 0.5])


# ---------------------------------------------------------------- child: one refine shard job

def child(spec_path: str) -> None:
    """One shard, as workflow_scripts/refine.py runs it; prints a RESULT line."""
    from predict_rss import _Sampler      # the /proc sampler of the predict RSS benchmark
    from starlabels import runtime, stages

    spec = json.loads(Path(spec_path).read_text())
    # 50 ms: the peaks of a job lasting seconds, without stealing CPU from the fit
    sampler = _Sampler(interval=0.05)
    sampler.start()
    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)
        print(message, file=fh)

    with open(spec["log"], "w", buffering=1) as fh:
        t0 = time.perf_counter()
        n_fit = stages.refine(**spec["kwargs"], log=log,
                              config_hash=runtime.params_hash(spec["params"]))
        seconds = time.perf_counter() - t0
    # the job's own timing of its batches (after loading the emulator, tables and metadata)
    fit = [float(m.group(1)) for line in lines
           for m in [re.search(r"stars fitted, .* in ([\d.]+) s$", line)] if m]
    sampler.stop.set()
    sampler.join()
    status = C.proc_status()
    print("RESULT " + json.dumps({
        "seconds": seconds, "fit_seconds": fit[-1] if fit else None, "n_fitted": int(n_fit),
        "vm_hwm_bytes": status.get("VmHWM"),
        "peak_rss_anon_sampled_bytes": sampler.peak.get("RssAnon"),
        "peak_rss_file_sampled_bytes": sampler.peak.get("RssFile")}), flush=True)


def run_job(shard: int, spec_path: Path, env: dict[str, str]) -> dict:
    """Run one shard job in a fresh process; its RESULT plus process wall / CPU seconds and
    ``wait4``'s ru_maxrss."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", str(spec_path)]
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        t1 = time.perf_counter()
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0), fe.seek(0)
        out, err = fo.read(), fe.read()
    if proc.returncode != 0:
        raise RuntimeError(f"refine shard {shard} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(next(line for line in out.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    return dict(result, shard=shard, started=t0, ended=t1, process_seconds=t1 - t0,
                cpu_seconds=usage.ru_utime + usage.ru_stime,
                # max(parent's RSS at spawn, child's peak) on Linux: VmHWM is the job's own
                wait4_ru_maxrss_bytes=int(usage.ru_maxrss) * 1024,
                peak_rss_bytes=result["vm_hwm_bytes"])


# ---------------------------------------------------------------- inputs

def run_inputs(folder: Path, config_path: Path) -> dict:
    """The refine inputs of a finished run and the refine settings its config gives."""
    from starlabels import artifacts
    from starlabels.config import load_config

    experiment = folder.name
    exp = load_config(config_path)["experiments"][experiment]
    if not exp["refine"]["enabled"]:
        raise SystemExit(f"{config_path}: experiment {experiment} does not refine")
    shards = sorted((folder / "predictions").glob("shard_*.parquet"),
                    key=lambda p: int(p.stem.split("_")[1]))
    emulator = folder / "models" / "emulator"
    return {"experiment": experiment, "config": str(config_path),
            "labels": list(exp["labels"]),
            "refine": {"device": exp["refine"]["device"], "fit": exp["refine"]["fit"]},
            "emulator_dir": emulator, "calibration": folder / "refine" / "calibration.json",
            "flux": folder / "normalized" / "flux.npy", "ivar": folder / "normalized" / "ivar.npy",
            "table": folder / "normalized" / "stars.parquet", "predictions": shards,
            "emulator_kind": artifacts.load_json(emulator / "model.json")["kind"]}


def quick_run(folder: Path, threads: int) -> dict:
    """A small synthetic finished run: spectra whose line depths are quadratic in three labels,
    a trainset, two prediction shards (truth + noise), then the package's emulator training and
    calibration jobs."""
    import pandas as pd
    from starlabels import artifacts, config, stages
    from starlabels.grid import WavelengthGrid
    from starlabels.members import shard_rows

    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("normalized", "trainset", "predictions", "models", "refine"):
        (folder / sub).mkdir(parents=True)
    grid = WavelengthGrid.from_config(QUICK_SEGMENTS)
    wave = grid.wavelength_air
    rng = np.random.default_rng(14)
    n, labels = QUICK_BASE_STARS, QUICK_LABELS
    x = rng.uniform(-0.9, 0.9, (n, 3))
    truth = QUICK_LOW + (x + 1) / 2 * (QUICK_HIGH - QUICK_LOW)
    centres = np.array([5003.0, 5008.0, 5012.5, 5017.0, 8503.0, 8507.0, 8511.0, 8516.0])
    depth = (0.35 + 0.15 * x[:, [0]] + 0.08 * x[:, [1]] ** 2
             + 0.05 * x[:, [2]] * np.array([[1, 0] * 4]) + 0.04 * x[:, [0]] * x[:, [2]])
    profile = np.exp(-0.5 * ((wave[None] - centres[:, None]) / 0.25) ** 2)
    snr = rng.uniform(40.0, 150.0, n)
    flux = 1 - depth @ profile + rng.normal(0, 1, (n, wave.size)) / snr[:, None]
    ivar = np.repeat(snr[:, None] ** 2, wave.size, axis=1)
    norm = folder / "normalized"
    artifacts.save_matrix(norm / "flux.npy", flux.astype(np.float32))
    artifacts.save_matrix(norm / "ivar.npy", ivar.astype(np.float32))
    ids = [f"Q{i:05d}" for i in range(n)]
    split = np.array(["train"] * 240 + ["valid"] * 80 + ["test"] * (n - 320))
    cat_err = np.array([50.0, 0.1, 0.05])
    catalogue = truth + rng.normal(0, 1, truth.shape) * cat_err
    stars = pd.DataFrame({"spectrum_id": ids, "star_id": ids, "row": np.arange(n), "snr": snr,
                          "split": split})
    for k, label in enumerate(labels):
        stars[label], stars[f"e_{label}"] = catalogue[:, k], cat_err[k]
    artifacts.save_table(norm / "stars.parquet", stars,
                         {"grid_hash": grid.hash(), "n_pixels": grid.n_pixels, "n_rows": n,
                          "labels": labels, "segments": QUICK_SEGMENTS})
    learn = np.flatnonzero(split != "test")
    trainset = stars.iloc[learn][["spectrum_id", "split", *labels,
                                  *[f"e_{k}" for k in labels]]].assign(source="observed",
                                                                       source_row=learn)
    artifacts.save_table(folder / "trainset" / "spectra.parquet", trainset)
    net_err = 1.2 * cat_err
    network = truth + rng.normal(0, 1, truth.shape) * net_err
    shards = []
    for shard in range(2):
        part = shard_rows(n, shard, 2)
        rows = np.arange(part.start, part.stop)
        pred = pd.DataFrame({"spectrum_id": [ids[r] for r in rows], "row": rows})
        for k, label in enumerate(labels):
            pred[label], pred[f"{label}_err"] = network[rows, k], net_err[k]
        shards.append(folder / "predictions" / f"shard_{shard}.parquet")
        artifacts.save_table(shards[-1], pred, {"shard": shard, "n_shards": 2})
    refine = config.section("refine", {"enabled": True, "threads": threads,
                                       "emulator": {"kind": "quadratic", "censor": False}})
    emulator = folder / "models" / "emulator"
    quiet = lambda m: None  # noqa: E731
    stages.train_emulator(flux=str(norm / "flux.npy"), ivar=str(norm / "ivar.npy"),
                          table=str(norm / "stars.parquet"),
                          trainset_table=str(folder / "trainset" / "spectra.parquet"),
                          labels=labels, cfg=refine, grid_cfg={"segments": QUICK_SEGMENTS},
                          linelist=None, model_dir=str(emulator), threads=threads, log=quiet)
    stages.calibrate_refine(emulator_dir=str(emulator), flux=str(norm / "flux.npy"),
                            ivar=str(norm / "ivar.npy"),
                            trainset_table=str(folder / "trainset" / "spectra.parquet"),
                            predictions=[str(p) for p in shards], labels=labels, cfg=refine,
                            out=str(folder / "refine" / "calibration.json"), threads=threads,
                            log=quiet)
    return {"experiment": "synthetic_quick", "config": "synthetic (quick mode)",
            "labels": labels, "refine": {"device": refine["device"], "fit": refine["fit"]},
            "emulator_dir": emulator, "calibration": folder / "refine" / "calibration.json",
            "flux": norm / "flux.npy", "ivar": norm / "ivar.npy",
            "table": norm / "stars.parquet", "predictions": shards, "emulator_kind": "quadratic"}


def build_workload(src: dict, work: Path, n_rows: int, n_shards: int) -> dict:
    """``n_rows`` rows tiled from the run's rows (copy k ≥ 1 of a star: ``<id>#k``): flux, ivar,
    star table and the prediction shards of ``n_shards`` shards, as the workflow lays them out."""
    from starlabels import artifacts
    from starlabels.catalog import merge_shards
    from starlabels.members import shard_rows

    base_flux, base_ivar = artifacts.load_matrix(src["flux"]), artifacts.load_matrix(src["ivar"])
    stars = artifacts.load_table(src["table"])
    stars_meta = artifacts.table_metadata(src["table"])
    n_base, n_pixels = base_flux.shape
    pred = merge_shards(src["predictions"], n_rows=n_base)
    pred_meta = artifacts.table_metadata(src["predictions"][0])
    src_row = np.arange(n_rows) % n_base
    copy = np.arange(n_rows) // n_base
    norm = work / "normalized"
    for name, base in (("flux", base_flux), ("ivar", base_ivar)):
        # straight file writes, block by block: the parent keeps no mapped pages of the output
        with artifacts.matrix_row_writer(norm / f"{name}.npy", n_rows, n_pixels) as write:
            for start in range(0, n_rows, WRITE_ROWS):
                write(np.asarray(base[src_row[start:start + WRITE_ROWS]]))

    def tiled(frame):
        out = frame.iloc[src_row].reset_index(drop=True)
        for column in ("spectrum_id", "star_id"):
            if column in out:
                out[column] = [s if k == 0 else f"{s}#{k}"
                               for s, k in zip(out[column].astype(str), copy)]
        out["row"] = np.arange(n_rows, dtype=np.int64)
        return out

    artifacts.save_table(norm / "stars.parquet", tiled(stars), dict(stars_meta, n_rows=n_rows))
    predictions = tiled(pred)
    shard_paths = []
    for shard in range(n_shards):
        rows = shard_rows(n_rows, shard, n_shards)
        shard_paths.append(work / "predictions" / f"shard_{shard}.parquet")
        artifacts.save_table(shard_paths[-1], predictions.iloc[rows.start:rows.stop],
                             dict(pred_meta, shard=shard, n_shards=n_shards))
    return {"flux": norm / "flux.npy", "ivar": norm / "ivar.npy",
            "table": norm / "stars.parquet", "predictions": shard_paths,
            "n_base": int(n_base), "n_pixels": int(n_pixels),
            "copies": int(np.ceil(n_rows / n_base))}


# ---------------------------------------------------------------- parent

def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None,
                   help="a finished default run's experiment folder with refine enabled, e.g. "
                        "results/demo_ges (required unless --quick)")
    p.add_argument("--config", type=Path, default=C.REPO / "config.yaml",
                   help="the run's configuration (its refine and labels sections)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"stars refined (default {C.FULL_N_STARS}; quick {QUICK_ROWS})")
    p.add_argument("--shards", type=int, default=None,
                   help="refine shards (default: predict.shards of configs/sim_ges_full.yaml; "
                        f"quick {QUICK_SHARDS})")
    p.add_argument("--jobs", type=int, default=2,
                   help="shard jobs at a time, one thread each (snakemake --cores 2: 2)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="default: the config's refine.device")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the working folder (tiled matrices, shard outputs, logs)")
    p.add_argument("--job", help=argparse.SUPPRESS)       # internal: one shard job
    args = p.parse_args()
    if args.job:
        child(args.job)
        return
    if not args.quick and args.run is None:
        p.error("--run is required unless --quick")
    C.resolve_paths(args)
    n_rows = args.rows or (QUICK_ROWS if args.quick else C.FULL_N_STARS)
    survey_shards = int(C.ges_experiment()["predict"]["shards"])
    n_shards = args.shards or (QUICK_SHARDS if args.quick else survey_shards)
    run = C.Run("refine_throughput", args)

    from starlabels import artifacts
    from starlabels.members import resolve_device, shard_rows
    from starlabels.refine.jobs import fit_batch_size

    work = args.out / "refine_throughput_work"
    if work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    if args.quick:
        src = quick_run(args.cache / "refine_quick_run", args.threads)
    else:
        src = run_inputs(args.run, args.config)
    cfg = dict(src["refine"], device=args.device or src["refine"]["device"])
    device = resolve_device(cfg["device"])
    data = build_workload(src, work, n_rows, n_shards)
    build_seconds = time.perf_counter() - t0
    matrix_bytes = data["flux"].stat().st_size + data["ivar"].stat().st_size
    C.say(f"refine_throughput: {n_rows} rows ({data['n_base']} base rows × up to "
          f"{data['copies']}), {data['n_pixels']} px, {matrix_bytes / 2**30:.2f} GiB flux+ivar, "
          f"built in {build_seconds:.0f} s (not timed); {n_shards} shards, {args.jobs} at a time")

    env = dict(os.environ, **{k: "1" for k in JOB_THREAD_VARIABLES})
    params = {"n_shards": n_shards, "labels": src["labels"], "refine": cfg}
    specs = []
    (work / "logs").mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        spec = work / "jobs" / f"shard_{shard}.json"
        artifacts.save_json(spec, {"log": str(work / "logs" / f"refine_shard_{shard}.log"),
                                   "params": params, "kwargs": {
            "emulator_dir": str(src["emulator_dir"]), "calibration": str(src["calibration"]),
            "flux": str(data["flux"]), "ivar": str(data["ivar"]), "table": str(data["table"]),
            "prediction": str(data["predictions"][shard]), "shard": shard,
            "n_shards": n_shards, "labels": src["labels"], "cfg": cfg,
            "out_table": str(work / "refine" / f"shard_{shard}.parquet"),
            "out_models": str(work / "refine" / f"models_{shard}.npy"), "threads": 1}})
        specs.append(spec)
    (work / "refine").mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(shard: int) -> dict:
        res = run_job(shard, specs[shard], env)
        with lock:
            C.say(f"refine_throughput: shard {shard}: {res['n_fitted']} stars in "
                  f"{res['seconds']:.1f} s ({res['process_seconds']:.1f} s process), peak RSS "
                  f"{res['peak_rss_bytes'] / 2**20:.0f} MiB")
        return res

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, range(n_shards)))
    seconds = time.perf_counter() - start

    out = [artifacts.load_table(work / "refine" / f"shard_{s}.parquet",
                                columns=["row", "refine_converged", "refine_unlike_training",
                                         "refine_note"]) for s in range(n_shards)]
    n_fitted = sum(r["n_fitted"] for r in results)
    converged = np.concatenate([o["refine_converged"].to_numpy(bool) for o in out])
    flagged = np.concatenate([o["refine_unlike_training"].to_numpy(bool) for o in out])
    assert sum(len(o) for o in out) == n_rows
    per_shard = []
    for shard, res in enumerate(results):
        rows = shard_rows(n_rows, shard, n_shards)
        per_shard.append({
            "shard": shard, "rows": len(rows), "n_fitted": res["n_fitted"],
            "seconds": res["seconds"], "fit_seconds": res["fit_seconds"],
            "process_seconds": res["process_seconds"],
            "start_offset_seconds": res["started"] - start, "cpu_seconds": res["cpu_seconds"],
            "peak_rss_bytes": res["peak_rss_bytes"],
            "peak_rss_anon_sampled_bytes": res["peak_rss_anon_sampled_bytes"],
            "peak_rss_file_sampled_bytes": res["peak_rss_file_sampled_bytes"],
            "wait4_ru_maxrss_bytes": res["wait4_ru_maxrss_bytes"],
            "shard_matrix_bytes": 2 * 4 * len(rows) * data["n_pixels"]})
    peaks = np.array([s["peak_rss_bytes"] for s in per_shard], dtype=float)
    stage_s = np.array([s["seconds"] for s in per_shard])
    fit_s = np.array([s["fit_seconds"] for s in per_shard], dtype=float)
    process_s = np.array([s["process_seconds"] for s in per_shard])
    # a job's start-up and set-up stay as the shard count is fixed; only its batches scale
    projected = (float((process_s - fit_s).sum())
                 + float(fit_s.sum()) * C.FULL_N_STARS / n_rows) / args.jobs
    full = (not args.quick and n_rows == C.FULL_N_STARS and n_shards == survey_shards
            and args.jobs == 2)
    run.parameters = {
        "n_rows": n_rows, "full_size": full, "full_size_n_rows": C.FULL_N_STARS,
        "n_shards": n_shards, "survey_config_shards": survey_shards, "jobs": args.jobs,
        "threads_per_job": 1, "job_environment": {k: "1" for k in JOB_THREAD_VARIABLES},
        "device": str(device), "fit_batch_size": fit_batch_size(cfg["fit"], device),
        "refine_config": cfg, "labels": src["labels"], "n_pixels": data["n_pixels"],
        "run": None if args.quick else str(args.run), "experiment": src["experiment"],
        "config": src["config"], "emulator": str(src["emulator_dir"]),
        "emulator_kind": src["emulator_kind"], "base_rows": data["n_base"],
        "copies_of_base_rows": data["copies"], "matrix_bytes_flux_plus_ivar": matrix_bytes,
        "code_path": "starlabels.stages.refine -> refine.jobs.refine_job, one fresh process per "
                     "shard (as workflow_scripts/refine.py), --jobs at a time",
        "peak_rss_source": "VmHWM of each job process (/proc/self/status at its end); wait4 "
                           "ru_maxrss recorded too but includes the parent's RSS at spawn",
    }
    run.figures = {
        "seconds": seconds, "stars_per_s": n_rows / seconds, "n_fitted": n_fitted,
        "n_rows": n_rows, "converged_fraction": float(converged.mean()),
        "flagged_poor_fit_fraction": float(flagged.mean()),
        "shard_seconds": stage_s.tolist(), "shard_fit_seconds": fit_s.tolist(),
        "shard_process_seconds": process_s.tolist(),
        "job_overhead_seconds_mean": float((process_s - fit_s).mean()),
        "cpu_seconds": float(sum(s["cpu_seconds"] for s in per_shard)),
        "peak_rss_max_bytes": float(peaks.max()), "peak_rss_min_bytes": float(peaks.min()),
        "shard_matrix_bytes_max": max(s["shard_matrix_bytes"] for s in per_shard),
        "matrix_bytes_flux_plus_ivar": matrix_bytes,
        "peak_rss_max_over_matrix_bytes": float(peaks.max()) / matrix_bytes,
        "per_shard": per_shard,
        # a synthetic quick run says nothing about the survey's per-star cost
        "projected_seconds_at_full_size": None if full or args.quick else projected,
        "workload_build_seconds_not_timed": build_seconds,
    }
    run.targets = {"seconds_at_36904": C.target(
        seconds if full and device.type == "cpu" else None, TARGET_SECONDS, "s",
        f"refine 36 904 stars in {survey_shards} shards, 2 jobs × 1 thread, CPU")}
    run.notes = [
        "Timed: first shard job's start to last job's end. Each job is a fresh Python process "
        "(imports, emulator and calibration loading included) calling starlabels.stages.refine "
        "with threads=1, as Snakemake runs the refine rule; Snakemake's own per-job overhead "
        "and the workload's construction are not timed.",
        f"Rows are the run's {data['n_base']} refine inputs tiled (identical spectra, network "
        "labels and errors; a fresh spectrum_id per copy), so each copy's fit costs what the "
        f"original's does; the grid is the run's ({data['n_pixels']} px).",
        "Flat memory: a job streams its shard in batches (MatrixRowReader, matrix_row_writer, "
        "Parquet row groups); compare peak_rss_max_bytes with shard_matrix_bytes_max and with "
        "runs at other --rows.",
        "Per shard: process_seconds = start to exit; seconds = the stages.refine call; "
        "fit_seconds = the job's own time for its batches (its last log line). "
        "job_overhead_seconds_mean = process − fit (interpreter, imports, emulator, tables, "
        "provenance).",
        "projected_seconds_at_full_size (scaled runs only): each job's overhead kept (the shard "
        "count is fixed), fit seconds scaled linearly to 36 904 rows, divided by --jobs.",
    ]
    if not args.quick and data["n_pixels"] != 15702:
        run.notes.append(
            f"The run's grid has {data['n_pixels']} px; the survey config (sim_ges_full) is on "
            "0.05 Å (15 702 px), where each fit costs more: the target is checked as stated, "
            "on this run's grid.")
    run.write()
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
