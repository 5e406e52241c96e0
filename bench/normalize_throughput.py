#!/usr/bin/env python
"""Figure 1 — normalize throughput: Gaia-ESO HR10 + HR21 raw files → normalised flux matrix.

Runs the workflow's own normalize stage (``starlabels.stages.normalize``: catalogue + manifest
read, every raw FITS file read, rest frame, resampling onto the 0.05 Å grid of
configs/sim_ges_full.yaml, continuum fits, coadd, matrices and tables written) on a survey
simulated by ``starlabels.simulate`` exactly as the acquire stage writes it. Only the normalize
call is timed; the simulated raw files are cached under ``<cache>/ges_n<N>/`` so reruns skip
the simulation (≈13 GB and several minutes at the full 36 904 stars).

Target: 36 904 stars (73 808 spectra) in ≤ 180 s on the 2-core CPU machine.

    python bench/normalize_throughput.py             # full size, 36 904 stars
    python bench/normalize_throughput.py --n 5000    # scaled down (the JSON says so)
    python bench/normalize_throughput.py --quick     # a few stars, seconds
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import time
from pathlib import Path

import _common as C

TARGET_SECONDS = 180.0


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _cached_fraction(spectra_dir: Path, sample: int = 400) -> float | None:
    """Share of a sample of the raw files' pages already in the OS page cache (util-linux
    ``fincore``), i.e. how 'warm' the reading is; None where fincore is missing."""
    exe = shutil.which("fincore")
    if exe is None:
        return None
    files = sorted(spectra_dir.iterdir())
    step = max(1, len(files) // sample)
    picked = [str(p) for p in files[::step][:sample]]
    try:
        out = subprocess.run([exe, "--bytes", "--noheadings", "--output", "RES,SIZE", *picked],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    res = size = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            res, size = res + int(parts[0]), size + int(parts[1])
    return res / size if size else None


def main() -> None:
    p = C.parser(__doc__.splitlines()[1])
    p.add_argument("--n", type=int, default=None,
                   help=f"stars to simulate and normalise (default {C.FULL_N_STARS}; quick 24)")
    p.add_argument("--keep-ivar", action="store_true",
                   help="keep the ivar matrix (deleted by default: other benchmarks need only "
                        "flux, and it is 2.3 GB at full size)")
    args = p.parse_args()
    C.resolve_paths(args)
    n = args.n or (24 if args.quick else C.FULL_N_STARS)
    run = C.Run("normalize_throughput", args)

    folder, sim = C.simulate_raw(args.cache, n, args.threads)
    exp = C.ges_experiment(n)
    grid = C.ges_grid(exp)
    cached = _cached_fraction(folder / "raw" / "spectra")
    lines: list[str] = []
    C.say(f"normalize: {n} stars, {sim['n_files']} files, grid {grid.n_pixels} pixels, "
          f"{args.threads} worker(s)")
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    counts = C.run_normalize(folder, n, args.threads, log=lines.append)
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    out = folder / "normalized"
    flux_bytes = (out / "flux.npy").stat().st_size
    if not args.keep_ivar:
        (out / "ivar.npy").unlink(missing_ok=True)

    full = n == C.FULL_N_STARS
    projected = seconds * C.FULL_N_STARS / n
    run.parameters = {
        "n_stars": n, "full_size": full, "full_size_n_stars": C.FULL_N_STARS,
        "threads": args.threads, "grid_pixels": grid.n_pixels, "grid_hash": grid.hash(),
        "grid_segments": exp["grid"]["segments"], "normalize_config": exp["normalize"],
        "setups": [s["name"] for s in exp["simulate"]["setups"]],
        "code_path": "starlabels.stages.normalize -> starlabels.normalize.normalize_survey",
        "raw_files_reused_from_cache": sim["reused"],
        "raw_bytes": sim["raw_bytes"],
        "raw_page_cache_fraction_before": cached,
    }
    run.figures = {
        "seconds": seconds, "spectra_per_s": counts["n_spectra"] / seconds,
        "stars_per_s": counts["n_stars"] / seconds, "files_per_s": counts["n_files"] / seconds,
        "raw_mb_per_s": sim["raw_bytes"] / 2**20 / seconds,
        "stage_internal_seconds": counts["elapsed_s"],
        "cpu_seconds": cpu, "cpu_utilisation": cpu / seconds / max(1, args.threads),
        # contention-free estimates: the same CPU work spread over `threads` idle cores
        "spectra_per_cpu_second": counts["n_spectra"] / cpu if cpu > 0 else None,
        "cpu_seconds_per_thread": cpu / max(1, args.threads),
        "n_files": counts["n_files"], "n_spectra": counts["n_spectra"],
        "n_stars": counts["n_stars"], "n_accepted": counts["n_accepted"],
        "n_rejected": counts["n_rejected"], "rejects_by_reason": counts["per_reason"],
        "flux_matrix_bytes": flux_bytes,
        "projected_seconds_at_full_size": projected,
        "simulate_seconds_not_timed": sim.get("simulate_seconds"),
    }
    run.targets = {"total_seconds_at_36904": C.target(
        seconds if full else projected, TARGET_SECONDS, "s",
        "normalize 36 904 Gaia-ESO stars (73 808 HR10+HR21 spectra), reading included"
        + ("" if full else f" — PROJECTED linearly from {n} stars"))}
    run.notes = [
        "Timed: one call of starlabels.stages.normalize (the workflow rule's function) with "
        "threads=%d: catalogue and manifest read, every raw file opened and parsed, written "
        "flux/ivar matrices and tables. Simulation of the raw files is not timed." % args.threads,
        "cpu_seconds counts this process and its pool workers (RUSAGE_SELF + CHILDREN); "
        "cpu_seconds_per_thread is what the wall time would be on idle cores with perfect "
        "scaling, a lower bound when other jobs share the machine (see load_average).",
        "Reading is from the local disk through the OS page cache; "
        + ("the fraction of a file sample already cached before the run is "
           f"{cached:.2f} (fincore)" if cached is not None else "fincore was not available")
        + ". Caches were not dropped (that would disturb other users of the machine), so a "
          "cold read from an archive file system would be slower.",
    ]
    if not full:
        run.notes.append(f"Scaled run: {n} of {C.FULL_N_STARS} stars; the target is checked "
                         f"against a linear projection.")
    run.write()


if __name__ == "__main__":
    main()
