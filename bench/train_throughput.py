#!/usr/bin/env python
"""Figure 4 — training throughput of the Gaia-ESO-sized network (15 702 px, batch 64).

Runs the workflow's train rule function (``starlabels.stages.train`` → ``train_member``) with the
paper's settings from configs/sim_ges_full.yaml (Adam 1e-4, L2 0.005 on the convolutions,
batch 64) for a few epochs, and reads the throughput from the trainer's own per-epoch history
(``history.csv``: ``spectra_per_s`` = training spectra / seconds of the training pass). The
spectra are rows of the normalize stage's output on the simulated survey (``_common.ges_matrix``).

CPU by default (once per thread count: the workflow's default is 1 thread per member, members
side by side); ``--device cuda`` on a GPU machine (same script; ``--compile`` and
``--resident`` pass the train options through).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

import _common as C

PAPER_TRAIN_SPECTRA = 9200     # ≈ training spectra of sim_ges_full
PAPER_MAX_EPOCHS = 500


def main() -> None:
    p = C.parser(__doc__.splitlines()[1])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--n-train", type=int, default=None,
                   help="training spectra (default 2048 on CPU, 9216 on CUDA; quick 128)")
    p.add_argument("--n-valid", type=int, default=None, help="validation spectra (default 256)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 3 CPU, 6 CUDA)")
    p.add_argument("--thread-counts", default=None,
                   help="comma-separated CPU thread counts to measure (default '1,<cores>')")
    p.add_argument("--compile", action="store_true", help="train option compile: true")
    p.add_argument("--resident", default="auto", choices=["auto", "always", "never"])
    args = p.parse_args()
    C.resolve_paths(args)

    from starlabels import artifacts, stages
    from starlabels.members import resolve_device

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    n_train = args.n_train or (128 if args.quick else 9216 if gpu else 2048)
    n_valid = args.n_valid or (32 if args.quick else 256)
    epochs = args.epochs or (2 if args.quick else 6 if gpu else 3)
    if args.thread_counts:
        counts = [int(t) for t in args.thread_counts.split(",")]
    else:
        counts = [1] if args.quick or gpu else sorted({1, args.threads})
    run = C.Run("train_throughput" + ("_gpu" if gpu else ""), args)

    n_rows = n_train + n_valid
    flux_path, base_table, source = C.ges_matrix(args.cache, n_rows, args.threads)
    exp = C.ges_experiment()
    labels = list(exp["labels"])
    table = artifacts.load_table(base_table).assign(
        split=np.where(np.arange(n_rows) < n_train, "train", "valid"))
    table_path = args.cache / "train_throughput_work" / "spectra.parquet"
    artifacts.save_table(table_path, table, artifacts.table_metadata(base_table))
    cfg = dict(exp["train"], method=exp["method"], epochs=epochs, patience=10 * epochs,
               checkpoint_every=0,
               device=args.device, resident=args.resident, compile=bool(args.compile))

    per_threads = {}
    for threads in counts:
        model_dir = args.cache / "train_throughput_work" / f"member_t{threads}"
        lines: list[str] = []
        C.say(f"train: {n_train} train / {n_valid} valid spectra x {source['n_pixels']} px, "
              f"batch {cfg['batch_size']}, {epochs} epochs, device {device}, {threads} thread(s)")
        t0 = time.perf_counter()
        meta = stages.train(flux=str(flux_path), table=str(table_path), labels=labels, member=0,
                            cfg=cfg, model_dir=str(model_dir), threads=threads, log=lines.append)
        wall = time.perf_counter() - t0
        hist = pd.read_csv(model_dir / "history.csv")
        rate = hist["spectra_per_s"].to_numpy(dtype=float)
        steady = rate[1:] if rate.size > 1 else rate           # epoch 1 includes warm-up
        epoch_wall = np.diff(np.concatenate([[0.0], hist["elapsed_s"].to_numpy(dtype=float)]))
        median = float(np.median(steady))
        per_threads[str(threads)] = {
            "spectra_per_s_per_epoch": rate.tolist(),
            "spectra_per_s_median_after_epoch1": median,
            "train_pass_seconds_per_epoch": hist["train_seconds"].tolist(),
            "epoch_wall_seconds_incl_validation": epoch_wall.tolist(),
            "wall_seconds_incl_setup": wall,
            "projected_epoch_seconds_at_9200_train": PAPER_TRAIN_SPECTRA / median,
            "projected_hours_per_member_500_epochs":
                PAPER_TRAIN_SPECTRA / median * PAPER_MAX_EPOCHS / 3600,
            "device_in_model_json": meta["device"], "threads_in_model_json": meta["threads"],
            "placement_log": [line for line in lines if "GiB" in line or "compile" in line],
        }
        C.say(f"train: {median:.0f} spectra/s ({threads} thread(s))")

    run.parameters = {
        "device": str(device), "n_train": n_train, "n_valid": n_valid, "epochs": epochs,
        "n_pixels": int(source["n_pixels"]), "batch_size": int(cfg["batch_size"]),
        "train_config": {k: v for k, v in cfg.items()}, "thread_counts": counts,
        "matrix": source, "gpu": C.gpu_name(),
        "code_path": "starlabels.stages.train -> train.train_member; figures from its "
                     "history.csv (spectra_per_s per epoch)",
    }
    run.figures = {"per_thread_count": per_threads,
                   "best_spectra_per_s": max(v["spectra_per_s_median_after_epoch1"]
                                             for v in per_threads.values())}
    run.notes = [
        "spectra_per_s is the trainer's own figure: training spectra / seconds of the training "
        "pass of that epoch (validation excluded); the median leaves out epoch 1 (warm-up).",
        "Projections assume the sim_ges_full training set (~9 200 spectra) and the paper's "
        "500-epoch cap; early stopping (patience 25) usually ends sooner.",
    ]
    if not gpu:
        run.notes.append("GPU: not measured on this machine (no GPU); run "
                         "`python bench/train_throughput.py --device cuda` on one.")
    run.write()


if __name__ == "__main__":
    main()
