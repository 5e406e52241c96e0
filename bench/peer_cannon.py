"""The published The Cannon beside our network, on the same rows of one finished run.

Trains The Cannon (Ness et al. 2015; PyPI package ``annieslasso``, module ``thecannon``, a
quadratic model per pixel with intrinsic scatter) on exactly the spectra the run's regression-CNN
members train on — the training set's observed ``train`` rows, their catalogue labels, the
normalize stage's flux and inverse variance — and tests it on the run's evaluation stars without
injected defects. Both are scored against the simulator's true labels on the same stars: σ with
bootstrap 95 % intervals, σ per S/N tercile, the α-rich share, and the time each took.

The package fails on numpy 2 (scalar conversion in ``train``), so it runs in a virtual
environment of its own (``--venv``, created on first use with ``numpy<2`` and
``annieslasso==0.2.96``) through ``bench/_cannon_runner.py``; data cross over as ``.npz`` files.

    python bench/peer_cannon.py --run results/demo_ges      # after `snakemake --cores 2`

writes ``<out>/peer_cannon.json`` (and ``bench/results/peer_cannon.json``).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C

CANNON_REQUIREMENTS = ("numpy<2", "annieslasso==0.2.96")
RUNNER = Path(__file__).resolve().parent / "_cannon_runner.py"


def cannon_python(venv: Path) -> Path:
    """The venv's python, created with the Cannon's requirements when missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        C.say(f"peer_cannon: creating {venv} with {' '.join(CANNON_REQUIREMENTS)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CANNON_REQUIREMENTS],
                       check=True)
    return python


def run_cannon(python: Path, train_flux, train_ivar, train_labels, test_flux, test_ivar,
               labels, threads: int, log_path: Path) -> dict:
    """Train and test in the venv; returns labels, errors and timings."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, train_flux=train_flux, train_ivar=train_ivar, train_labels=train_labels,
                 test_flux=test_flux, test_ivar=test_ivar, label_names=np.array(labels),
                 threads=threads)
        with open(log_path, "w") as log:   # the package draws progress bars: keep them out
            subprocess.run([str(python), str(RUNNER), str(inp), str(out)], check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        result = np.load(out, allow_pickle=False)
        return {key: result[key] for key in result.files}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True,
                   help="a finished run's experiment folder, e.g. results/demo_ges")
    p.add_argument("--venv", type=Path, default=None,
                   help="the Cannon's virtual environment (default <cache>/cannon-venv)")
    p.add_argument("--cannon-threads", type=int, default=1,
                   help="processes The Cannon trains and tests with")
    args = p.parse_args()
    C.resolve_paths(args)
    run = C.Run("peer_cannon", args)

    from starlabels import artifacts, scoring

    folder = args.run
    experiment = folder.name
    stars = artifacts.load_table(folder / "normalized" / "stars.parquet")
    trainset = artifacts.load_table(folder / "trainset" / "spectra.parquet")
    truth = artifacts.load_table(folder / "truth" / "truth.parquet")
    catalog = artifacts.load_table(folder / "catalog" / f"starlabels_{experiment}.parquet")
    members = sorted((folder / "models").glob("member_*/model.json"))
    metas = [artifacts.load_json(m) for m in members]
    labels = list(metas[0]["labels"])
    flux = artifacts.load_matrix(folder / "normalized" / "flux.npy")
    ivar = artifacts.load_matrix(folder / "normalized" / "ivar.npy")

    # the rows the network members train on: the training set's observed train split
    values = trainset[labels].to_numpy(dtype=float)
    use = (trainset["source"].eq("observed") & trainset["split"].eq("train")).to_numpy() \
        & np.isfinite(values).all(axis=1)
    train_rows = trainset.loc[use, "source_row"].to_numpy()
    n_holdout = sorted({int(m.get("n_holdout", 0)) for m in metas})
    # the evaluation stars without injected defects
    # (only the truth's labels and defects: its other columns, e.g. snr, are the catalogue's too)
    ev = catalog.merge(truth[["star_id", "defect", *labels]].rename(
        columns={k: f"{k}_true" for k in labels}), on="star_id", how="left")
    test = np.flatnonzero(ev["split"].eq("test").to_numpy()
                          & ev["defect"].fillna("").eq("").to_numpy())
    if args.quick:
        train_rows, test = train_rows[:150], test[:40]
    # where the run put its labels onto the reference stars' scale, The Cannon is put onto it
    # the same way (its labels of the same reference stars, the same fit), so both are compared
    # on one scale; both are also compared as they come (the network's <label>_raw)
    scale_path = folder / "catalog" / "reference_scale.json"
    scale = artifacts.load_json(scale_path) if scale_path.exists() else None
    reference = np.zeros(0, dtype=int)
    if scale is not None:
        from starlabels.reference_scale import reference_rows

        calibration = artifacts.load_table(folder / "raw" / "observed" /
                                           "calibration_stars.parquet")
        frame = ev.assign(row=np.arange(len(ev)))
        reference = reference_rows(frame, calibration)["row"].to_numpy(dtype=int)
    C.say(f"peer_cannon: {train_rows.size} training spectra, {test.size} test stars, "
          f"{flux.shape[1]} pixels, labels {labels}")

    python = cannon_python(args.venv or args.cache / "cannon-venv")
    start = time.perf_counter()
    result = run_cannon(python, np.asarray(flux[train_rows]), np.asarray(ivar[train_rows]),
                        stars[labels].to_numpy(dtype=float)[train_rows],
                        np.asarray(flux[np.r_[test, reference]]),
                        np.asarray(ivar[np.r_[test, reference]]), labels,
                        args.cannon_threads, args.out / "peer_cannon.log")
    C.say(f"peer_cannon: The Cannon trained in {float(result['train_seconds']):.1f} s, tested "
          f"in {float(result['test_seconds']):.1f} s ({time.perf_counter() - start:.1f} s in all)")

    true = ev[[f"{k}_true" for k in labels]].to_numpy(dtype=float)[test]
    snr = ev["snr"].to_numpy(dtype=float)[test]
    network = ev[labels].to_numpy(dtype=float)[test]
    network_raw = np.column_stack([
        ev[f"{k}_raw" if f"{k}_raw" in ev else k].to_numpy(dtype=float)[test] for k in labels])
    cannon = result["labels"][:test.size]
    cannon_raw = cannon
    scores: dict = {"labels": {}}
    if scale is not None:
        from starlabels import config
        from starlabels.reference_scale import apply_reference_scale, fit_reference_scale

        applied = [k for k, fit in scale["labels"].items() if fit.get("applied")]
        anchored = [k for k in applied if scale["labels"][k]["method"] == "reference_stars"]
        trended = [k for k in applied if k not in anchored]
        cfg = config.section("reference_scale", {
            "enabled": True, "labels": anchored, "terms": scale["terms"],
            "pivot": scale["pivot"], "clip_sigma": scale["clip_sigma"],
            "abundance_trends": {**scale["abundance_trends"], "labels": []}})
        ref = ev.iloc[reference][["star_id", "split"]].reset_index(drop=True)
        for j, label in enumerate(labels):
            ref[label] = result["labels"][test.size:, j]
            ref[f"{label}_err"] = result["errors"][test.size:, j]
        cannon_scale = fit_reference_scale(ref, calibration, labels, cfg, log=C.say)
        if trended:
            # the ratios no reference star anchors: The Cannon's own trend with evolutionary
            # state, fitted on its labels of the test stars as the run fitted the network's on
            # the stars outside training
            import pandas

            from starlabels.abundance_trends import fit_abundance_trends

            own = pandas.DataFrame({"split": "test",
                                    **{k: cannon[:, j] for j, k in enumerate(labels)}})
            # the run's own validated settings, for The Cannon's ratios
            trend_cfg = {**scale["abundance_trends"], "labels": trended}
            for k, fit in fit_abundance_trends(own, labels, trend_cfg, scale["terms"],
                                               scale["pivot"], log=C.say).items():
                cannon_scale["labels"][k] = dict(fit, method="abundance_trend")
        moved = apply_reference_scale({k: cannon[:, j] for j, k in enumerate(labels)},
                                      cannon_scale)
        cannon = np.column_stack([moved.get(k, cannon[:, j]) for j, k in enumerate(labels)])
        scores["reference_scale"] = {
            "labels": applied, "n_reference_spectra": int(reference.size),
            "cannon_coefficients": {k: cannon_scale["labels"][k].get("coefficients")
                                    for k in applied},
            "network_coefficients": {k: scale["labels"][k]["coefficients"] for k in applied}}
    edges = scoring.snr_tercile_edges(snr)
    best = cannon_raw.copy()           # The Cannon at its best, label by label (see the notes)
    for j, label in enumerate(labels):
        entry = {}
        versions = [("network", network[:, j]), ("network_raw", network_raw[:, j]),
                    ("cannon_raw", cannon_raw[:, j])]
        if scale is not None:
            versions.append(("cannon_scaled", cannon[:, j]))
        for name, pred in versions:
            block = scoring.sigma_ci(pred - true[:, j])
            block["bias"] = float(np.nanmean(pred - true[:, j]))
            block["sigma_by_snr_tercile"] = [
                scoring.sigma_ci((pred - true[:, j])[(snr >= lo) & (snr < hi)])["sigma"]
                for lo, hi in zip([-np.inf, *edges], [*edges, np.inf])]
            entry[name] = block
        chosen = "cannon_raw"
        if "cannon_scaled" in entry and entry["cannon_scaled"]["sigma"] < entry["cannon_raw"]["sigma"]:
            chosen = "cannon_scaled"
            best[:, j] = cannon[:, j]
        entry["cannon"] = dict(entry[chosen], version=chosen)
        entry["network_over_cannon"] = entry["network"]["sigma"] / entry["cannon"]["sigma"]
        entry["network_raw_over_cannon_raw"] = (entry["network_raw"]["sigma"]
                                                / entry["cannon_raw"]["sigma"])
        entry["network_at_least_20pct_better"] = bool(entry["network_over_cannon"] <= 0.8)
        scores["labels"][label] = entry
        C.say(f"peer_cannon: {label}: network σ {entry['network']['sigma']:.4g} "
              f"{entry['network']['sigma_ci95']}, The Cannon σ {entry['cannon']['sigma']:.4g} "
              f"{entry['cannon']['sigma_ci95']} ({chosen}), ratio "
              f"{entry['network_over_cannon']:.2f}")
    if "fe_h" in labels and "mg_fe" in labels:
        j, k = labels.index("fe_h"), labels.index("mg_fe")
        scores["alpha_sequence"] = {
            name: scoring.abundance_sequence(true[:, j], true[:, k], pred[:, j], pred[:, k],
                                             (-0.5, -0.2), 0.2)
            for name, pred in (("network", network), ("cannon", best))}
    scores["snr_tercile_edges"] = edges
    bench_dir = folder / "benchmarks"
    predict_seconds = sum(float(np.loadtxt(f, skiprows=1, usecols=0, ndmin=1)[0])
                          for f in bench_dir.glob("predict_shard_*.tsv"))
    scores["timing"] = {
        "cannon_train_seconds": float(result["train_seconds"]),
        "cannon_train_cpu_seconds": float(result["train_cpu_seconds"]),
        "cannon_test_seconds": float(result["test_seconds"]),
        "cannon_processes": args.cannon_threads,
        "network_members": len(metas),
        "network_train_seconds_per_member": [float(m["train_seconds"]) for m in metas],
        "network_threads_per_member": sorted({int(m["threads"]) for m in metas}),
        "network_predict_seconds_all_rows": predict_seconds,
    }
    run.parameters = {
        "run": str(folder), "experiment": experiment, "labels": labels,
        "n_train": int(train_rows.size), "n_test": int(test.size), "n_pixels": int(flux.shape[1]),
        "network_members_holdout_rows": n_holdout,
        "cannon": {"package": "annieslasso", "version": str(result["version"]),
                   "numpy": str(result["numpy_version"]), "vectorizer": "quadratic",
                   "requirements": list(CANNON_REQUIREMENTS)},
        "network_git_commit": metas[0].get("git_commit"),
    }
    run.figures = scores
    run.notes = [
        "Same training spectra (the training set's observed train rows: flux and ivar from the "
        "normalize stage, catalogue labels), same test stars (evaluation split, no injected "
        "defect), both against the simulator's true labels.",
        "The network's labels are the run's catalogue (the ensemble); its members may hold out "
        f"{n_holdout} of these rows for early stopping.",
        "The Cannon's test step starts every star from the training set's mean labels "
        "(the package's default).",
        "Where the run put its labels onto the reference stars' scale (catalog/"
        "reference_scale.json), `network` and `cannon` are both on it: The Cannon also labels "
        "the same reference spectra and its own trend is fitted and removed the same way "
        "(starlabels.reference_scale) into `cannon_scaled`; `network_raw` and `cannon_raw` "
        "are both without it. `cannon` (and the ratio) is The Cannon at its better of the two, "
        "label by label (`version` says which): its own reference-scale fit can be worse than "
        "none when its labels of the reference stars scatter far beyond its formal errors.",
    ]
    run.write()


if __name__ == "__main__":
    main()
