"""The default run as a user runs it, timed: ``snakemake --cores 2`` from an empty results folder.

    python bench/default_run.py --train-seed 1234 --results /tmp/run_1234

runs the workflow's default target with every experiment's ``train.seed`` set to the given base
seed (the networks' initialisation and shuffles; the simulated surveys stay the same), and writes
``<out>/default_run_seed<S>.json``: wall time, the machine, each job's time from the rules'
benchmark files, and each experiment's metrics.json (copied whole). In full mode a copy goes to
``bench/results/``; ``bench/readme_tables.py`` writes the README's figures from these files.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True,
                   help="an empty (or new) folder for the run's results")
    p.add_argument("--train-seed", type=int, required=True,
                   help="base seed of every experiment's ensemble members")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    C.resolve_paths(args)
    run = C.Run(f"default_run_seed{args.train_seed}", args)
    if args.results.exists() and any(args.results.iterdir()):
        raise SystemExit(f"{args.results} is not empty: the default run starts from nothing")

    config = yaml.safe_load((C.REPO / "config.yaml").read_text())
    override = {"results": str(args.results),
                "experiments": {name: {"train": {"seed": args.train_seed}}
                                for name in config["run"]}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(override, tmp)
    # the Snakefile reads config.yaml; --configfile merges these keys into it
    command = ["snakemake", "--cores", str(args.cores), "--configfile", tmp.name]
    C.say(f"default_run: {' '.join(command)}")
    start = time.perf_counter()
    log_path = args.out / f"default_run_seed{args.train_seed}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=C.REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    Path(tmp.name).unlink()
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed ({proc.returncode}); see {log_path}")

    jobs = {}
    for experiment in config["run"]:
        for tsv in sorted((args.results / experiment / "benchmarks").glob("*.tsv")):
            seconds = float(np.loadtxt(tsv, skiprows=1, usecols=0, ndmin=1)[0])
            jobs[f"{experiment}/{tsv.stem}"] = round(seconds, 2)
    metrics = {experiment: json.loads((args.results / experiment / "metrics.json").read_text())
               for experiment in config["run"]}
    run.parameters = {"command": " ".join(command), "train_seed": args.train_seed,
                      "experiments": config["run"], "cores": args.cores,
                      "results": str(args.results)}
    run.figures = {"wall_seconds": round(wall, 1), "job_seconds": jobs, "metrics": metrics}
    run.targets = {"wall_seconds": C.target(wall, 600.0, "s",
                                           "default run from an empty results folder")}
    run.notes = [f"snakemake output in {log_path}",
                 "Job seconds are the rules' benchmark files (wall time of each job; jobs run "
                 f"{args.cores} at a time)."]
    run.write()


if __name__ == "__main__":
    main()
