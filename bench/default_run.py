"""The default run as a user runs it, timed: ``snakemake --cores 2`` from an empty results folder.

    python bench/default_run.py --train-seed 1234 --results /tmp/run_1234

runs the workflow's default target with every experiment's ``train.seed`` set to the given base
seed (the networks' initialisation and shuffles; the simulated surveys stay the same), then, timed
apart, the ``ablation`` target (deep-REMAP's ablation study, not part of the default run; skip it
with ``--no-ablation``), and writes ``<out>/default_run_seed<S>.json``: wall times, the machine,
each job's time from the rules' benchmark files, each experiment's metrics.json (copied whole) and
ablation.json. In full mode a copy goes to ``bench/results/``; ``bench/readme_tables.py`` writes
the README's figures from these files.
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
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the ablation target after the default run")
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
    wall, jobs = _timed(command, args, config["run"], "", {})
    metrics = {experiment: json.loads((args.results / experiment / "metrics.json").read_text())
               for experiment in config["run"]}
    ablation: dict = {}
    if not args.no_ablation:
        # the target before --configfile, which would read it as another file
        ablation_command = [*command[:3], "ablation", *command[3:]]
        ablation_wall, ablation_jobs = _timed(ablation_command, args, config["run"],
                                              "_ablation", jobs)
        ablation = {"wall_seconds": round(ablation_wall, 1), "job_seconds": ablation_jobs,
                    "figures": {e: json.loads((args.results / e / "ablation.json").read_text())
                                for e in config["run"]
                                if (args.results / e / "ablation.json").exists()}}
    Path(tmp.name).unlink()
    run.parameters = {"command": " ".join(command), "train_seed": args.train_seed,
                      "experiments": config["run"], "cores": args.cores,
                      "results": str(args.results)}
    run.figures = {"wall_seconds": round(wall, 1), "job_seconds": jobs, "metrics": metrics,
                   "ablation": ablation}
    run.targets = {"wall_seconds": C.target(wall, 600.0, "s",
                                           "default run from an empty results folder")}
    run.notes = [f"snakemake output in {args.out}/default_run_seed{args.train_seed}*.log",
                 "Job seconds are the rules' benchmark files (wall time of each job; jobs run "
                 f"{args.cores} at a time). The ablation target ran after the default run, "
                 "its wall time and jobs apart from it."]
    run.write()


def _timed(command: list[str], args, experiments: list[str], suffix: str,
           earlier: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Run ``command``; its wall time and the seconds of each job it ran (benchmark files not
    in ``earlier``)."""
    C.say(f"default_run: {' '.join(command)}")
    log_path = args.out / f"default_run_seed{args.train_seed}{suffix}.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=C.REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed ({proc.returncode}); see {log_path}")
    jobs = {}
    for experiment in experiments:
        for tsv in sorted((args.results / experiment / "benchmarks").glob("*.tsv")):
            name = f"{experiment}/{tsv.stem}"
            if name not in earlier:
                jobs[name] = round(float(np.loadtxt(tsv, skiprows=1, usecols=0, ndmin=1)[0]), 2)
    return wall, jobs


if __name__ == "__main__":
    main()
