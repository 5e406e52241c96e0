"""Shared helpers of the benchmark scripts: machine facts, result JSON, simulated Gaia-ESO data.

Every benchmark writes ``<out>/<name>.json`` with the same envelope::

    {"name", "created_utc", "mode" (quick|full), "machine", "versions", "parameters",
     "figures", "targets", "load_average": {"before", "after"}, "notes"}

and, in full mode, a copy under ``bench/results/`` (``results/`` is git-ignored; the copy is
what gets committed). Nothing here re-implements what is measured: the scripts call the
package's own stage functions (``starlabels.stages``, ``starlabels.clean``,
``starlabels.cnn``, ``starlabels.members``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parent.parent
# the checkout's own package wins over whatever `pip install -e` pointed at
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

DEFAULT_OUT = REPO / "results" / "bench"
COMMITTED_OUT = REPO / "bench" / "results"
FULL_N_STARS = 36904          # the Gaia-ESO survey size of configs/sim_ges_full.yaml
FULL_EXPERIMENT = "sim_ges_full"


# ---------------------------------------------------------------- machine and versions

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gpu_name() -> str | None:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no torch / broken driver: report no GPU
        pass
    return None


def machine_info() -> dict[str, Any]:
    ram = _ram_bytes()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"hostname": socket.gethostname(), "cpu_model": _cpu_model(),
            "logical_cores": os.cpu_count(), "usable_cores": usable,
            "ram_bytes": ram, "ram_gib": None if ram is None else round(ram / 2**30, 1),
            "gpu": gpu_name(), "platform": platform.platform()}


def versions() -> dict[str, Any]:
    from starlabels import artifacts
    import torch

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "starlabels_git_commit": artifacts.git_commit(REPO)}
    soft = artifacts.software_versions()
    for key in ("pandas", "pyarrow", "astropy", "openTSNE", "scipy"):
        out[key] = soft.get(key)
    return out


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_self_bytes() -> int:
    """Peak resident set of this process (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux ≥ 4.0: write 5 to /proc/self/clear_refs), so a peak
    read later covers only what ran after this call. False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem from /proc/<pid>/status, in bytes."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- arguments and result files

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small sizes (seconds); used by tests/test_bench.py")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for <name>.json (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for simulated data reused between runs (default <out>/cache)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the usable cores of this machine)")
    p.add_argument("--no-copy", action="store_true",
                   help="full mode: do not copy the JSON to bench/results/")
    p.add_argument("--tag", default="",
                   help="suffix of the result name, e.g. 'malloc_tuned' -> "
                        "<name>_malloc_tuned.json (for runs under another environment)")
    return p


#: environment variables that change performance; every JSON records the ones set
PERF_ENV_PREFIXES = ("MALLOC_", "OMP_", "MKL_", "OPENBLAS_", "LD_PRELOAD", "PYTORCH_",
                     "CUDA_VISIBLE_DEVICES", "GLIBC_TUNABLES")


def perf_environment() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(PERF_ENV_PREFIXES)}


def resolve_paths(args: argparse.Namespace) -> None:
    args.out = Path(args.out) if args.out else DEFAULT_OUT
    args.cache = Path(args.cache) if args.cache else args.out / "cache"
    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)


class Run:
    """Collects one benchmark's parameters and figures; ``write`` stamps machine + load."""

    def __init__(self, name: str, args: argparse.Namespace):
        tag = getattr(args, "tag", "")
        self.name, self.args = name + (f"_{tag}" if tag else ""), args
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.load_before = load_average()
        self.parameters: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}
        self.notes: list[str] = []
        say(f"{self.name}: load average before {self.load_before}")

    def write(self) -> Path:
        from starlabels.artifacts import save_json

        payload = {
            "name": self.name, "created_utc": self.created,
            "mode": "quick" if self.args.quick else "full",
            "machine": machine_info(), "versions": versions(),
            "environment": perf_environment(),
            "parameters": self.parameters, "figures": self.figures, "targets": self.targets,
            "load_average": {"before": self.load_before, "after": load_average(),
                             "cores": os.cpu_count()},
            "notes": self.notes,
        }
        path = self.args.out / f"{self.name}.json"
        save_json(path, payload)
        if not self.args.quick and not self.args.no_copy:
            COMMITTED_OUT.mkdir(parents=True, exist_ok=True)
            if path.resolve() != (COMMITTED_OUT / path.name).resolve():
                shutil.copyfile(path, COMMITTED_OUT / path.name)
        say(f"{self.name}: load average after {payload['load_average']['after']}; wrote {path}")
        print(json.dumps({"figures": self.figures, "targets": self.targets}, indent=2,
                         default=str), flush=True)
        return path


def target(value: float | None, limit: float, unit: str, what: str) -> dict[str, Any]:
    """A target line: the limit, the measured value and whether it is met (value ≤ limit)."""
    met = None if value is None or not np.isfinite(value) else bool(value <= limit)
    return {"what": what, "limit": limit, "unit": unit, "measured": value, "met": met}


# ---------------------------------------------------------------- the simulated Gaia-ESO survey

def ges_experiment(n_stars: int | None = None) -> dict[str, Any]:
    """The validated ``sim_ges_full`` experiment block (defaults filled), optionally resized."""
    import yaml
    from starlabels.config import validate_config

    block = yaml.safe_load((REPO / "configs" / "sim_ges_full.yaml").read_text())
    # one exposure per star and setup, as the archive serves them (keep: newest): the figures
    # speak of 36 904 stars = 73 808 files
    sim = block["experiments"][FULL_EXPERIMENT].setdefault("simulate", {})
    sim.setdefault("observing", {})["repeat_fraction"] = 0.0
    config = validate_config(block)
    exp = config["experiments"][FULL_EXPERIMENT]
    if n_stars is not None:
        exp["simulate"]["n_stars"] = int(n_stars)
    # throughput is measured per field star: a dozen benchmark stars would skew a small run
    exp["simulate"]["benchmark_stars"]["table"] = None
    return exp


def ges_grid(exp: Mapping[str, Any]):
    from starlabels.grid import WavelengthGrid

    return WavelengthGrid.from_config(exp["grid"]["segments"])


def survey_dir(cache: Path, n_stars: int) -> Path:
    return Path(cache) / f"ges_n{int(n_stars)}"


def simulate_raw(cache: Path, n_stars: int, threads: int,
                 log: Callable[[str], Any] = say) -> tuple[Path, dict[str, Any]]:
    """Raw HR10+HR21 files of ``n_stars`` simulated stars, written once and then reused.

    A ``complete.json`` marker (with the simulate config hash) is written last; a folder
    without it (interrupted run) or from other settings is simulated again.
    """
    from starlabels import artifacts, stages

    exp = ges_experiment(n_stars)
    folder = survey_dir(cache, n_stars)
    marker = folder / "complete.json"
    want = artifacts.config_hash(exp["simulate"])
    if marker.exists() and artifacts.load_json(marker).get("simulate_hash") == want:
        return folder, dict(artifacts.load_json(marker), reused=True)
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    log(f"simulating {n_stars} Gaia-ESO stars (HR10+HR21 raw files) into {folder} "
        f"with {threads} thread(s); cached for later runs")
    counts = stages.acquire_observed(survey="gaia_eso", source="simulate",
                                     simulate_cfg=exp["simulate"], raw_dir=str(folder / "raw"),
                                     truth=str(folder / "truth.parquet"), threads=threads,
                                     log=lambda m: None)
    raw_bytes = sum(p.stat().st_size for p in (folder / "raw" / "spectra").iterdir())
    info = {"simulate_hash": want, "n_stars": int(n_stars), "n_files": int(counts["n_files"]),
            "raw_bytes": int(raw_bytes), "simulate_seconds": time.perf_counter() - start,
            "simulate_threads": threads}
    artifacts.save_json(marker, info)
    log(f"simulated {counts['n_files']} files ({raw_bytes / 2**30:.2f} GiB) in "
        f"{info['simulate_seconds']:.0f} s")
    return folder, dict(info, reused=False)


def run_normalize(folder: Path, n_stars: int, threads: int,
                  log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """The workflow's normalize stage (``stages.normalize``) on a cached raw survey."""
    from starlabels import stages

    exp = ges_experiment(n_stars)
    raw = folder / "raw"
    out = folder / "normalized"
    return stages.normalize(
        survey="gaia_eso", manifest=str(raw / "manifest.parquet"),
        catalog=str(raw / "catalog.fits"), calibration=str(raw / "calibration_stars.parquet"),
        labels=exp["labels"], grid_cfg=exp["grid"], selection=exp["selection"],
        solar=exp["solar_abundances"], cfg=exp["normalize"], flux=str(out / "flux.npy"),
        ivar=str(out / "ivar.npy"), table=str(out / "stars.parquet"),
        rejects=str(out / "rejects.parquet"), threads=threads, log=log)


def normalized_base(cache: Path, min_stars: int, threads: int) -> tuple[Path, Path, int]:
    """(flux.npy, stars.parquet, n_stars simulated) of the largest normalised cache, or a fresh
    small one of ``min_stars`` stars when none exists."""
    best = None
    for marker in sorted(Path(cache).glob("ges_n*/complete.json")):
        folder = marker.parent
        flux = folder / "normalized" / "flux.npy"
        table = folder / "normalized" / "stars.parquet"
        if flux.exists() and table.exists():
            n = int(folder.name[len("ges_n"):])
            if best is None or n > best[2]:
                best = (flux, table, n)
    if best is not None:
        from starlabels import artifacts

        if not artifacts.table_metadata(best[1]).get("spectra"):
            # normalized by an older version: model folders now need its description
            run_normalize(best[0].parent.parent, best[2], threads)
        return best
    folder, _ = simulate_raw(cache, min_stars, threads)
    run_normalize(folder, min_stars, threads)
    return folder / "normalized" / "flux.npy", folder / "normalized" / "stars.parquet", min_stars


def ges_matrix(cache: Path, n_rows: int, threads: int, seed: int = 0,
               min_base_stars: int = 400) -> tuple[Path, Path, dict[str, Any]]:
    """A float32 ``.npy`` of exactly ``n_rows`` normalised spectra on the 0.05 Å Gaia-ESO grid,
    with a table (spectrum_id, star_id, split, snr, labels; grid_hash in the metadata).

    Rows come from the normalize stage's output on the simulated survey (the largest cached
    one); when it has fewer rows than asked, the rest are copies of random rows with fresh
    noise (S/N 30–150), a ±5 % line-depth change and jittered labels, so the matrix keeps the
    structure of real normalised spectra. Built in row chunks and cached.
    """
    from starlabels import artifacts

    base_flux, base_table, base_stars = normalized_base(cache, min_base_stars, threads)
    out_dir = Path(cache) / f"matrix_n{int(n_rows)}_from_n{base_stars}_seed{seed}"
    flux_path, table_path = out_dir / "flux.npy", out_dir / "stars.parquet"
    info_path = out_dir / "matrix.json"
    if info_path.exists() and flux_path.exists() and table_path.exists() \
            and artifacts.table_metadata(table_path).get("spectra"):
        return flux_path, table_path, artifacts.load_json(info_path)
    base = artifacts.load_matrix(base_flux)
    table = artifacts.load_table(base_table)
    meta = artifacts.table_metadata(base_table)
    n_base = base.shape[0]
    rng = np.random.default_rng(seed)
    take = min(n_base, n_rows)
    extra = n_rows - take
    src = np.concatenate([np.arange(take), rng.integers(0, n_base, extra)]).astype(np.int64)
    writer = artifacts.open_matrix_writer(flux_path, n_rows, base.shape[1])
    chunk = 2048
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        block = np.array(base[start:stop] if stop <= take else base[src[start:stop]],
                         dtype=np.float32)
        copied = np.arange(start, stop) >= take
        if copied.any():
            k = int(copied.sum())
            snr = np.exp(rng.uniform(np.log(30.0), np.log(150.0), k)).astype(np.float32)
            depth = rng.uniform(0.95, 1.05, k).astype(np.float32)
            block[copied] = (1.0 + (block[copied] - 1.0) * depth[:, None]
                             + rng.standard_normal((k, block.shape[1]), dtype=np.float32)
                             / snr[:, None])
        writer[start:stop] = block
    artifacts.commit_matrix_writer(writer, flux_path)
    rows = table.iloc[src].reset_index(drop=True)
    labels = [c for c in ("teff", "logg", "fe_h", "mg_fe", "al_fe") if c in rows]
    is_copy = np.arange(n_rows) >= take
    rows["spectrum_id"] = [f"{s}#{i}" if c else s
                           for i, (s, c) in enumerate(zip(rows["spectrum_id"], is_copy))]
    rows["star_id"] = rows["spectrum_id"]
    jitter = {"teff": 30.0, "logg": 0.05, "fe_h": 0.03, "mg_fe": 0.03, "al_fe": 0.03}
    for lab in labels:
        rows.loc[is_copy, lab] = rows.loc[is_copy, lab] + rng.normal(0, jitter[lab],
                                                                     int(is_copy.sum()))
    keep_cols = ["spectrum_id", "star_id", "split", "snr", *labels]
    # the normalize stage's description of its spectra travels along, as trainset passes it
    artifacts.save_table(table_path, rows[keep_cols], {"grid_hash": meta["grid_hash"],
                                                       "n_pixels": int(base.shape[1]),
                                                       "spectra": meta.get("spectra")})
    info = {"n_rows": int(n_rows), "n_pixels": int(base.shape[1]),
            "base": str(base_flux), "base_stars_simulated": int(base_stars),
            "base_rows_normalized": int(n_base), "rows_from_normalize": int(take),
            "rows_copied_with_fresh_noise": int(extra), "grid_hash": meta["grid_hash"]}
    artifacts.save_json(info_path, info)
    return flux_path, table_path, info


def write_untrained_members(folder: Path, n_members: int, n_pixels: int, labels: list[str],
                            grid_hash: str, seed: int = 0) -> list[Path]:
    """Model folders of freshly initialised GaiaEsoCNN members (``build_model`` +
    ``write_model_folder``), loadable by ``predict``. Weights are random: throughput and memory
    do not depend on their values."""
    import pandas as pd
    import torch
    from starlabels import artifacts
    from starlabels.models import build_model
    from starlabels.members import META_FILE, write_model_folder

    dirs = []
    for k in range(n_members):
        d = Path(folder) / f"member_{k}"
        if (d / META_FILE).exists():
            m = artifacts.load_json(d / META_FILE)
            if m.get("n_pixels") == n_pixels and m.get("grid_hash") == grid_hash \
                    and m.get("labels") == labels:
                dirs.append(d)
                continue
        torch.manual_seed(seed + k)
        model = build_model("cnn_regression", n_pixels, len(labels), {})
        meta = {"method": "cnn_regression", "architecture": model.architecture,
                "labels": labels, "label_min": [0.0] * len(labels),
                "label_max": [1.0] * len(labels), "n_pixels": int(n_pixels),
                "grid_hash": grid_hash, "training_set_hash": f"untrained{seed + k}",
                "best_valid_loss": 1.0, "member": k, "seed": seed + k,
                "note": "untrained weights for benchmarking (throughput/memory only)"}
        write_model_folder(d, model, meta, pd.DataFrame({"epoch": []}))
        dirs.append(d)
    return dirs
