#!/usr/bin/env python
"""Figure 2 — t-SNE clean time at 36 904 spectra on the 0.05 Å Gaia-ESO grid (15 702 pixels).

Runs ``starlabels.clean.tsne_clean`` (PCA + held-out residuals, quadratic label model, openTSNE,
neighbour tests — the clean rule's function) on a memory-mapped float32 matrix of 36 904
normalised spectra. The matrix is the normalize stage's own output on the simulated survey
(``normalize_throughput.py`` leaves it in the cache); when that has fewer rows (rejected stars,
or a scaled run), the remaining rows are copies of real rows with fresh noise, ±5 % line depth
and jittered labels (``_common.ges_matrix``), so the matrix keeps the structure of spectra.

By default every row is cleaned (split train/valid for all), the worst case of "36 904
spectra". The workflow's ``sim_ges_full`` config cleans only its train + valid rows (≈30 %);
that case is timed too unless ``--skip-workflow-split``.

Target: ≤ 120 s on the 2-core CPU machine.
"""
from __future__ import annotations

import re
import time

import numpy as np

import _common as C

TARGET_SECONDS = 120.0
_STEP = {"pca_and_label_model_s": r"PCA to \d+ components in ([\d.]+) s",
         "label_model_s": r"quadratic label model of the flux in ([\d.]+) s",
         "tsne_s": r"t-SNE of \d+ spectra in ([\d.]+) s"}


def _steps(lines: list[str]) -> dict[str, float]:
    out = {}
    for key, pattern in _STEP.items():
        for line in lines:
            m = re.search(pattern, line)
            if m:
                out[key] = float(m.group(1))
    if "pca_and_label_model_s" in out:
        out["pca_s"] = out["pca_and_label_model_s"] - out.get("label_model_s", 0.0)
    return out


def _timed_clean(flux, table, labels, cfg, threads) -> dict:
    from starlabels.clean import tsne_clean
    from starlabels.runtime import keep_freed_memory

    keep_freed_memory()  # what the clean rule's stage function does first

    lines: list[str] = []
    C.reset_peak_rss()
    t0 = time.perf_counter()
    result = tsne_clean(flux, table, labels, dict(cfg, n_jobs=threads), log=lines.append)
    seconds = time.perf_counter() - t0
    status = C.proc_status()
    cleaned = result["cleaned"].to_numpy()
    return {"seconds": seconds, "n_cleaned": int(cleaned.sum()),
            "n_rejected": int((cleaned & ~result["keep"].to_numpy()).sum()),
            "steps": _steps(lines), "peak_rss_bytes": status.get("VmHWM"),
            "rss_file_bytes_at_end": status.get("RssFile"), "log": lines}


def main() -> None:
    p = C.parser(__doc__.splitlines()[1])
    p.add_argument("--n", type=int, default=None, help="spectra (default 36904; quick 300)")
    p.add_argument("--skip-workflow-split", action="store_true",
                   help="do not also time the workflow's own split (train + valid rows only)")
    args = p.parse_args()
    C.resolve_paths(args)
    n = args.n or (300 if args.quick else C.FULL_N_STARS)
    run = C.Run("tsne_clean", args)

    from starlabels import artifacts

    flux_path, table_path, source = C.ges_matrix(args.cache, n, args.threads)
    exp = C.ges_experiment()
    cfg = {k: v for k, v in exp["clean"].items() if k != "enabled"}
    labels = list(exp["labels"])
    flux = artifacts.load_matrix(flux_path)
    table = artifacts.load_table(table_path)
    workflow_split = table["split"].astype(str).to_numpy()

    # every row cleaned: 5 % valid, the rest train (the split does not change the work)
    all_rows = table.assign(split=np.where(np.arange(n) % 20 == 0, "valid", "train"))
    C.say(f"tsne_clean: {n} x {flux.shape[1]} memory-mapped matrix, all rows cleaned, "
          f"n_jobs={args.threads}")
    full = _timed_clean(flux, all_rows, labels, cfg, args.threads)
    C.say(f"tsne_clean: {full['seconds']:.1f} s ({full['steps']})")
    workflow = None
    if not args.skip_workflow_split and not args.quick:
        n_workflow = int(np.isin(workflow_split, ["train", "valid"]).sum())
        C.say(f"tsne_clean: the workflow's split ({n_workflow} train+valid rows)")
        workflow = _timed_clean(flux, table, labels, cfg, args.threads)
        C.say(f"tsne_clean: {workflow['seconds']:.1f} s")

    is_full = n == C.FULL_N_STARS
    run.parameters = {
        "n_spectra": n, "n_pixels": int(flux.shape[1]), "full_size": is_full,
        "n_jobs": args.threads, "clean_config": cfg, "matrix": source,
        "matrix_memory_mapped": True, "rows_cleaned": "all (split train/valid for every row)",
        "code_path": "starlabels.clean.tsne_clean (what starlabels.stages.clean calls)",
    }
    run.figures = {
        "seconds": full["seconds"], "n_cleaned": full["n_cleaned"],
        "n_rejected": full["n_rejected"], "step_seconds": full["steps"],
        "peak_rss_bytes": full["peak_rss_bytes"],
        "rss_file_bytes_at_end": full["rss_file_bytes_at_end"],
    }
    if workflow is not None:
        run.figures["workflow_split"] = {k: v for k, v in workflow.items() if k != "log"}
    run.targets = {"seconds_at_36904": C.target(
        full["seconds"] if is_full else None, TARGET_SECONDS, "s",
        "t-SNE clean of 36 904 spectra x 15 702 pixels (all rows cleaned)"
        + ("" if is_full else f" — not measured: this run had {n} spectra"))}
    run.notes = [
        "Timed: one call of starlabels.clean.tsne_clean with the sim_ges_full clean config and "
        f"n_jobs={args.threads} (the clean rule passes its threads), on a read-only memmap.",
        f"Matrix rows: {source['rows_from_normalize']} from the normalize stage's output of "
        f"{source['base_stars_simulated']} simulated stars, "
        f"{source['rows_copied_with_fresh_noise']} copies of those with fresh noise "
        "(see bench/_common.py ges_matrix).",
        "peak_rss_bytes is VmHWM reset just before the call; it includes the page-cached "
        "pages of the memory-mapped matrix that the process touched (RssFile).",
        "Last log lines of the timed call: " + " | ".join(full["log"][-4:]),
    ]
    run.write()


if __name__ == "__main__":
    main()
