"""The assemble step: downloaded files → the raw/ layout the normalize or synthesize stage reads,
with the manifest, catalogue and calibration table the simulated surveys write (same columns).

Files are hard-linked from the download folder (copied where links are impossible), so deleting
an assembled raw/ folder for a rerun never costs a download.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts
from ..batch import Log
from .http import DownloadError
from .literature import calibration_table
from .remote import FETCHED_STATUSES, MISSING_STATUSES

def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (same bytes, no copy); copy where links are impossible.

    The download folder keeps its files when an assembled raw/ folder is deleted for a rerun,
    so a rerun never downloads again what is already here.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fetched_files(remote: pd.DataFrame, shard_tables: Sequence[str]) -> pd.DataFrame:
    """The remote table joined with the shards' fetch results (status, path, bytes, sha256,
    error: why a file is missing)."""
    columns = ["relpath", "path", "status", "bytes", "sha256", "error"]
    parts = [artifacts.load_table(p) for p in shard_tables]
    fetched = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    fetched = fetched.drop_duplicates("relpath", keep="last").reindex(columns=columns)
    merged = remote.drop(columns=["sha256"]).merge(fetched, on="relpath", how="left")
    merged["status"] = merged["status"].fillna("not fetched").astype(str).str.lower()
    lost = ~merged["status"].isin(FETCHED_STATUSES | MISSING_STATUSES)
    if lost.any():
        raise DownloadError(f"{int(lost.sum())} files of the manifest were not fetched by any "
                            f"shard (e.g. {merged.loc[lost, 'relpath'].head(3).tolist()}); rerun "
                            f"the download_shard jobs")
    return merged


def assemble_observed(*, survey: str, remote: str, shard_tables: Sequence[str], catalog: str,
                      raw_dir: str, calibration: Mapping[str, Any], log: Log = print,
                      metadata: Mapping | None = None) -> dict:
    """Downloaded files → ``raw_dir/{manifest.parquet, catalog.fits, calibration_stars.parquet,
    spectra/}`` with the columns the simulated survey writes (path, unit, star_id/plate, setup).

    A spectrum the archive no longer has (404), or served only in a form the download refused
    (an HTML page, a file cut short), stays in the manifest with its would-be path and the
    reason in ``download_error``, so the normalize stage records it in its rejects table with
    that reason instead of the star vanishing without trace.
    """
    raw = Path(raw_dir)
    spectra_dir = raw / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    files = fetched_files(artifacts.load_table(remote), shard_tables)
    present = files["status"].isin(FETCHED_STATUSES)
    for src, rel in zip(files.loc[present, "path"], files.loc[present, "relpath"]):
        link_or_copy(src, spectra_dir / rel)
    keep = [c for c in ("star_id", "setup", "plate", "dp_id", "url", "sha256", "bytes")
            if c in files]
    manifest = pd.DataFrame({"path": [str(spectra_dir / r) for r in files["relpath"]],
                             "unit": files["unit"].astype(str)})
    for c in keep:
        manifest[c] = files[c].reset_index(drop=True)
    manifest["download_status"] = np.where(present, "ok", "missing")
    manifest["download_error"] = [None if ok else str(error or "not fetched")
                                  for ok, error in zip(present, files["error"])]
    meta = dict(metadata or {}, survey=survey)
    with artifacts.atomic_path(raw / "catalog.fits") as tmp:
        shutil.copyfile(catalog, tmp)
    literature = calibration_table(survey, calibration, log=log)
    artifacts.save_table(raw / "calibration_stars.parquet", literature, meta)
    artifacts.save_table(raw / "manifest.parquet", manifest, meta)
    n_missing = int((~present).sum())
    log(f"assemble: {int(present.sum())} files in {spectra_dir}"
        + (f"; {n_missing} the archive did not have (normalize lists them as rejects)"
           if n_missing else "") + f"; {len(literature)} calibration stars")
    return {"n_files": int(present.sum()), "n_missing": n_missing,
            "n_calibration": len(literature)}


def assemble_synthetic(*, remote: str, shard_tables: Sequence[str], raw_dir: str,
                       log: Log = print, metadata: Mapping | None = None) -> dict:
    """Downloaded PHOENIX files → ``raw_dir/{manifest.parquet, HiResFITS/}`` as the synthesize
    stage reads them (path, relpath, kind 'wave'/'spectrum', teff, logg, fe_h, alpha).

    Grid points the archive does not have are kept with kind 'missing' (recorded, not fatal);
    the WAVE file is required.
    """
    raw = Path(raw_dir)
    grid_dir = raw / "HiResFITS"
    grid_dir.mkdir(parents=True, exist_ok=True)
    files = fetched_files(artifacts.load_table(remote), shard_tables)
    present = files["status"].isin(FETCHED_STATUSES)
    wave = files["kind"] == "wave"
    if not (present & wave).any():
        raise FileNotFoundError(f"the PHOENIX WAVE file ({files.loc[wave, 'url'].tolist()}) "
                                f"was not fetched: without it no model has wavelengths")
    for src, rel in zip(files.loc[present, "path"], files.loc[present, "relpath"]):
        link_or_copy(src, grid_dir / rel)
    manifest = files[["relpath", "kind", "teff", "logg", "fe_h", "alpha", "url"]].copy()
    manifest.insert(0, "path", [str(grid_dir / r) for r in files["relpath"]])
    manifest.loc[~present.to_numpy(), "kind"] = "missing"
    artifacts.save_table(raw / "manifest.parquet", manifest.reset_index(drop=True),
                         dict(metadata or {}, survey="phoenix"))
    n_missing = int((~present).sum())
    log(f"assemble: {int(present.sum()) - 1} PHOENIX models + WAVE file in {grid_dir}; "
        f"{n_missing} grid points the archive does not have (kind 'missing')")
    return {"n_models": int(present.sum()) - 1, "n_missing": n_missing}
