#!/usr/bin/env python
"""Figure 5 — peak memory (RSS) of predict at 10⁴, 10⁵ and 10⁶ spectra, streamed.

Each size runs in a fresh child process that calls the workflow's predict rule function
(``starlabels.stages.predict``: the shard's batches are streamed from a memory-mapped float32
``.npy``, members applied, shard Parquet written) as ONE shard over all rows — the worst case,
since the workflow splits a survey into a fixed number of shards. Peak RSS is the child's own
``VmHWM`` (``/proc/self/status``, read as it finishes); the child also samples its status every
10 ms to split the peak into anonymous memory (heap: Python, torch, tables, batch buffers) and
file-backed pages (the memory-mapped matrix pages it has touched, plus shared libraries). The
parent also records ``ru_maxrss`` from ``os.wait4`` (what ``getrusage(RUSAGE_CHILDREN)`` gives
for one child), but on Linux that figure is max(parent's RSS when it spawned the child, child's
peak) — exec keeps the larger — so it cannot show a child smaller than the parent.

Affordable design: a 10⁶ × 15 702 matrix would be 63 GB, so the matrix has the pixel count of
the MARVELS grid (5010–5690 Å at 0.2 Å: 3 401 pixels; 10⁶ rows = 13.6 GB on disk) and the
ensemble ONE untrained member (throughput and memory do not depend on weights). The rows are a
fixed block of synthetic absorption-line spectra repeated (values do not change memory).
Each matrix is deleted after its run.

Target: peak RSS ≤ 2 GB at every size and flat within 20 % from 10⁴ to 10⁶.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import _common as C

TARGET_PEAK_BYTES = 2 * 10**9
TARGET_FLATNESS = 0.20
MARVELS_GRID = [{"name": "MARVELS", "start": 5010.0, "end": 5690.0, "step": 0.2}]
LABELS = ["teff", "logg", "fe_h"]


# ---------------------------------------------------------------- child: one predict run

class _Sampler(threading.Thread):
    """Peak RssAnon / RssFile / VmRSS of this process, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for key, value in C.proc_status().items():
                if key != "VmHWM" and value > self.peak.get(key, 0):
                    self.peak[key] = value
            time.sleep(self.interval)


def child(args) -> None:
    from starlabels import stages

    sampler = _Sampler()
    sampler.start()
    lines: list[str] = []
    t0 = time.perf_counter()
    n_written = stages.predict(flux=args.flux, table=args.table, model_dirs=args.models, shard=0,
                        n_shards=1, cfg={"batch_size": args.batch_size, "device": args.device,
                                         "keep_quantile": 1.0},
                        out=args.shard_out, threads=args.threads, log=lines.append)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    status = C.proc_status()
    print("RESULT " + json.dumps({
        "seconds": seconds, "n_rows": n_written, "vm_hwm_bytes": status.get("VmHWM"),
        "peak_rss_anon_sampled_bytes": sampler.peak.get("RssAnon"),
        "peak_rss_file_sampled_bytes": sampler.peak.get("RssFile"),
        "peak_vm_rss_sampled_bytes": sampler.peak.get("VmRSS"),
        "log_tail": lines[-1:]}), flush=True)


# ---------------------------------------------------------------- parent

def _spectra_block(rows: int, n_pixels: int, seed: int = 0) -> np.ndarray:
    """A block of synthetic normalised spectra: ~40 Gaussian absorption lines + noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(n_pixels, dtype=np.float32)
    centres = rng.uniform(0, n_pixels, 40).astype(np.float32)
    block = np.ones((rows, n_pixels), dtype=np.float32)
    for c in centres:
        depth = rng.uniform(0.05, 0.6, rows).astype(np.float32)
        block -= depth[:, None] * np.exp(-0.5 * ((x - c) / 3.0) ** 2)[None, :]
    block += rng.normal(0, 0.01, block.shape).astype(np.float32)
    return block


def write_matrix(path: Path, n_rows: int, block: np.ndarray) -> None:
    """A float32 .npy of n_rows rows, written in chunks with plain file writes (no memmap, so
    the parent's memory stays small), repeating ``block``."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                 "fortran_order": False, "shape": (int(n_rows), int(block.shape[1]))})
        done = 0
        while done < n_rows:
            take = min(block.shape[0], n_rows - done)
            fh.write(block[:take].tobytes())
            done += take


def run_child_wait4(cmd: list[str]) -> tuple[str, str, int, int]:
    """Run ``cmd``; return (stdout, stderr, returncode, ru_maxrss bytes of that child)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0), fe.seek(0)
        return fo.read(), fe.read(), proc.returncode, int(usage.ru_maxrss) * 1024


def main() -> None:
    p = C.parser(__doc__.splitlines()[1])
    p.add_argument("--sizes", default=None,
                   help="comma-separated row counts (default 10000,100000,1000000; quick "
                        "1000,4000)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    p.add_argument("--flux"), p.add_argument("--table"), p.add_argument("--shard-out")
    p.add_argument("--models", nargs="*")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    C.resolve_paths(args)
    sizes = [int(s) for s in (args.sizes or ("1000,4000" if args.quick
                                             else "10000,100000,1000000")).split(",")]
    run = C.Run("predict_rss", args)

    from starlabels.grid import WavelengthGrid

    grid = WavelengthGrid.from_config(MARVELS_GRID)
    n_pixels = grid.n_pixels
    model_dirs = C.write_untrained_members(args.cache / f"untrained_members_px{n_pixels}", 1,
                                           n_pixels, LABELS, grid.hash())
    work = args.cache / "predict_rss_work"
    work.mkdir(parents=True, exist_ok=True)
    block = _spectra_block(4096, n_pixels)
    results = {}
    for n in sizes:
        res = _run_one(n, work, block, model_dirs, grid.hash(), args)
        results[str(n)] = res
        C.say(f"predict_rss: {n} rows: peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB "
              f"(anon {res['peak_rss_anon_sampled_bytes'] / 2**20:.0f} MiB, file-backed "
              f"{res['peak_rss_file_sampled_bytes'] / 2**20:.0f} MiB), {res['seconds']:.0f} s")

    peaks = np.array([r["peak_rss_bytes"] for r in results.values()], dtype=float)
    anon = np.array([r["peak_rss_anon_sampled_bytes"] for r in results.values()], dtype=float)
    full = sizes == [10**4, 10**5, 10**6]
    run.parameters = {
        "sizes": sizes, "full_size": full, "n_pixels": n_pixels, "grid": MARVELS_GRID,
        "n_members": 1, "device": args.device, "threads": args.threads,
        "batch_size": args.batch_size or "auto (64 on CPU, 2048 on CUDA)", "n_shards": 1,
        "weights": "untrained (build_model + write_model_folder); memory does not depend on "
                   "weight values",
        "code_path": "starlabels.stages.predict -> predict.predict_shard over a memory-mapped "
                     "float32 .npy, one shard = all rows, in a fresh process per size",
        "peak_rss_source": "VmHWM of the child process (/proc/self/status at its end); "
                           "wait4 ru_maxrss recorded too but includes the parent's RSS",
    }
    run.figures = {
        "per_size": results,
        "peak_rss_max_bytes": float(peaks.max()),
        "peak_rss_growth_largest_vs_smallest": float(peaks[-1] / peaks[0] - 1.0),
        "peak_rss_anon_growth_largest_vs_smallest": float(anon[-1] / anon[0] - 1.0),
    }
    run.targets = {
        "peak_rss_max": C.target(float(peaks.max()) if full else None, TARGET_PEAK_BYTES,
                                 "bytes", "peak RSS of predict ≤ 2 GB at 1e4, 1e5, 1e6"),
        "peak_rss_flatness": C.target(float(peaks.max() / peaks.min() - 1.0) if full else None,
                                      TARGET_FLATNESS, "fraction",
                                      "max/min peak RSS − 1 over 1e4..1e6 ≤ 0.20"),
    }
    run.notes = [
        "Peak RSS counts the pages of the memory-mapped matrix that the process has touched "
        "(file-backed, reclaimable page cache, but resident and counted by ru_maxrss, Slurm "
        "MaxRSS and Snakemake's benchmark max_rss); the anon/file split shows which part grows.",
        "The 10⁶ run streams a 13.6 GB matrix through one member; see bench/README.md.",
    ]
    run.write()
    try:
        work.rmdir()
    except OSError:
        pass


def _run_one(n_rows, work, block, model_dirs, grid_hash, args) -> dict:
    import pandas as pd
    from starlabels import artifacts

    flux = work / f"flux_{n_rows}.npy"
    table = work / f"table_{n_rows}.parquet"
    shard = work / f"shard_{n_rows}.parquet"
    try:
        t0 = time.perf_counter()
        write_matrix(flux, n_rows, block)
        ids = pd.DataFrame({"spectrum_id": [f"S{i:08d}" for i in range(n_rows)]})
        artifacts.save_table(table, ids, {"grid_hash": grid_hash,
                                          "n_pixels": int(block.shape[1])})
        del ids
        write_s = time.perf_counter() - t0
        C.say(f"predict_rss: {n_rows} rows, {flux.stat().st_size / 2**30:.2f} GiB matrix "
              f"written in {write_s:.0f} s; fresh child process runs predict")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--flux", str(flux),
               "--table", str(table), "--shard-out", str(shard), "--threads",
               str(args.threads), "--device", args.device, "--models", *map(str, model_dirs)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        out, err, code, maxrss = run_child_wait4(cmd)
        if code != 0:
            raise RuntimeError(f"predict child failed ({code}):\n{err[-3000:]}")
        result = json.loads(next(line for line in out.splitlines()
                                 if line.startswith("RESULT "))[len("RESULT "):])
        # the child's own VmHWM: peak RSS of its process image (reset by exec). ru_maxrss from
        # wait4 is kept beside it but is max(parent's RSS at spawn, child's peak) on Linux,
        # since exec keeps the larger of the old and new image's peak (signal->maxrss)
        result["peak_rss_bytes"] = result["vm_hwm_bytes"]
        result["wait4_ru_maxrss_bytes"] = maxrss
        result["matrix_bytes"] = flux.stat().st_size
        result["matrix_write_seconds_not_timed"] = write_s
        return result
    finally:
        for path in (flux, table, shard):
            path.unlink(missing_ok=True)


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
