"""One entry point per workflow rule: wiring of readers, stage functions and artifact paths.

``workflow_scripts/<rule>.py`` only unpacks the ``snakemake`` object and calls the matching
function here, so every stage can equally be run from Python or a notebook::

    from starlabels import stages
    stages.normalize(manifest="...", catalog="...", ...)

Each function reads only the paths it is given and writes its outputs atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts
from .grid import WavelengthGrid

Log = Callable[[str], None]


def log_to_stdout(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------ acquire

def acquire_observed(*, survey: str, source: str, simulate_cfg: Mapping[str, Any], raw_dir: str,
                     truth: str, threads: int = 1, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Raw observed spectra + catalogue + manifest (+ truth table for simulated surveys)."""
    from .simulate.survey import simulate_gaia_eso, simulate_marvels

    if source != "simulate":
        raise NotImplementedError(f"source {source!r}: only 'simulate' is available in this "
                                  f"version; real archives need the download stage")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire")
    run = {"gaia_eso": simulate_gaia_eso, "sdss_marvels": simulate_marvels}[survey]
    return run(simulate_cfg, raw_dir, truth, threads=threads, log=log, metadata=meta)


def acquire_synthetic(*, simulate_cfg: Mapping[str, Any], raw_dir: str, threads: int = 1,
                      log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    from .simulate.survey import simulate_phoenix_grid

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire_synthetic")
    return simulate_phoenix_grid(simulate_cfg, raw_dir, threads=threads, log=log, metadata=meta)


# ------------------------------------------------------------------ normalize

def survey_stars(survey: str, catalog: str, calibration: str, labels: Sequence[str],
                 selection: Mapping[str, Any], solar: Mapping[str, float]) -> pd.DataFrame:
    from .selection import gaia_eso_stars, marvels_stars

    if survey == "gaia_eso":
        return gaia_eso_stars(catalog, labels, selection, solar)
    if survey == "sdss_marvels":
        return marvels_stars(catalog, calibration, labels, selection)
    raise ValueError(f"survey {survey!r}: expected gaia_eso or sdss_marvels")


def _read_ges(path: str):
    from .io.gaia_eso import read_ges_spectrum

    return [read_ges_spectrum(path)]


def _read_marvels(path: str):
    from .io.marvels import read_marvels_plate

    return read_marvels_plate(path)


def normalize(*, survey: str, manifest: str, catalog: str, calibration: str,
              labels: Sequence[str], grid_cfg: Mapping[str, Any], selection: Mapping[str, Any],
              solar: Mapping[str, float], cfg: Mapping[str, Any], flux: str, ivar: str,
              table: str, rejects: str, threads: int = 1, log: Log = log_to_stdout,
              config_hash: str = "none") -> dict:
    """Raw files → rest-frame, resampled, continuum-normalised flux/ivar matrices + star table."""
    from .normalize import normalize_survey

    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    stars = survey_stars(survey, catalog, calibration, labels, selection, solar)
    files = artifacts.load_table(manifest)
    # a unit = files read together: one star's setups (Gaia-ESO) or one plate (MARVELS)
    units = [list(group["path"]) for _, group in files.groupby("unit", sort=True)]
    read_fn = {"gaia_eso": _read_ges, "sdss_marvels": _read_marvels}[survey]
    log(f"normalize: {len(files)} files in {len(units)} units, {len(stars)} catalogue stars, "
        f"grid {grid.n_pixels} pixels ({', '.join(s.name for s in grid.segments)})")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="normalize",
                                labels=list(labels), survey=survey)
    return normalize_survey(units, read_fn, grid, stars, cfg, flux, ivar, table, rejects,
                            rv_column="vrad" if survey == "gaia_eso" else None,
                            threads=threads, log=log, metadata=meta)


# ------------------------------------------------------------------ clean

def clean(*, flux: str, table: str, labels: Sequence[str], cfg: Mapping[str, Any],
          out_table: str, plot: str, threads: int = 1, log: Log = log_to_stdout,
          config_hash: str = "none") -> pd.DataFrame:
    """t-SNE cleaning of the training set; writes the kept/rejected table and the map."""
    from .clean import tsne_clean
    from .plots import tsne_map

    matrix = artifacts.load_matrix(flux)
    stars = artifacts.load_table(table)
    cfg = dict(cfg)
    enabled = cfg.pop("enabled", True)
    if enabled:
        result = tsne_clean(matrix, stars, labels, dict(cfg, n_jobs=threads), log=log)
    else:
        log("clean: disabled in config; every spectrum is kept")
        result = pd.DataFrame({"spectrum_id": stars["spectrum_id"], "row": np.arange(len(stars)),
                               "cleaned": False, "keep": True, "reason": "",
                               "tsne_x": np.nan, "tsne_y": np.nan})
    meta = artifacts.provenance(None, config_hash=config_hash, stage="clean")
    artifacts.save_table(out_table, result, meta)
    tsne_map(result, plot)
    return result


# ------------------------------------------------------------------ synthesize

def synthesize(*, manifest: str, grid_cfg: Mapping[str, Any], cfg: Mapping[str, Any],
               continuum: Mapping[str, Any], flux: str, ivar: str, table: str, rejects: str,
               threads: int = 1, log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """PHOENIX HiRes grid → degraded, normalised, augmented training spectra."""
    from .io.phoenix import read_phoenix_spectrum, read_phoenix_wave
    from .synthesize import synthesize_grid

    files = artifacts.load_table(manifest)
    wave = files.loc[files["kind"] == "wave", "path"]
    if wave.empty:
        raise ValueError(f"{manifest}: no WAVE file listed (kind == 'wave')")
    spectra = files.loc[files["kind"] == "spectrum", "path"].tolist()
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    meta = artifacts.provenance(None, config_hash=config_hash, stage="synthesize")
    return synthesize_grid(spectra, wave.iloc[0], read_phoenix_wave, read_phoenix_spectrum, grid,
                           dict(cfg, continuum=dict(continuum)), flux, ivar, table, rejects,
                           threads=threads, log=log, metadata=meta)


# ------------------------------------------------------------------ training set

def trainset(*, sources: Sequence[str], labels: Sequence[str], observed_flux: str,
             observed_table: str, clean_table: str, flux: str, table: str,
             synthetic_flux: str | None = None, synthetic_table: str | None = None,
             log: Log = log_to_stdout, config_hash: str = "none") -> pd.DataFrame:
    """Assemble the rows the networks learn from into one matrix + table.

    Observed rows: split train/valid, kept by the clean stage. Synthetic rows: all (their own
    train/valid split). Streams rows so the survey matrix is never loaded whole.
    """
    parts: list[tuple[np.ndarray, pd.DataFrame]] = []
    if "observed" in sources:
        obs = artifacts.load_table(observed_table)
        keep = artifacts.load_table(clean_table, columns=["spectrum_id", "keep"])
        if not obs["spectrum_id"].equals(keep["spectrum_id"]):
            raise ValueError(f"{clean_table} rows do not match {observed_table}")
        use = obs["split"].isin(["train", "valid"]).to_numpy() & keep["keep"].to_numpy()
        rows = np.flatnonzero(use)
        parts.append((artifacts.load_matrix(observed_flux),
                      obs.iloc[rows].assign(source="observed", source_row=rows)))
        log(f"trainset: {len(rows)} observed spectra (train+valid, kept by clean)")
    if "synthetic" in sources:
        syn = artifacts.load_table(synthetic_table)
        rows = np.arange(len(syn))
        parts.append((artifacts.load_matrix(synthetic_flux),
                      syn.assign(source="synthetic", source_row=rows)))
        log(f"trainset: {len(rows)} synthetic spectra")
    n_pixels = {m.shape[1] for m, _ in parts}
    if len(n_pixels) != 1:
        raise ValueError(f"trainset: sources have different pixel counts {sorted(n_pixels)}")
    n_total = sum(len(t) for _, t in parts)
    out = artifacts.open_matrix_writer(flux, n_total, n_pixels.pop())
    start = 0
    for matrix, tab in parts:
        src = tab["source_row"].to_numpy()
        for i in range(0, len(src), 2048):
            chunk = src[i:i + 2048]
            out[start + i:start + i + len(chunk)] = matrix[chunk]
        start += len(src)
    artifacts.commit_matrix_writer(out, flux)
    keep_cols = ["spectrum_id", "star_id", "split", "source", "source_row", "snr", *labels]
    merged = pd.concat([t.reindex(columns=keep_cols) for _, t in parts], ignore_index=True)
    obs_meta = artifacts.table_metadata(observed_table) if "observed" in sources else \
        artifacts.table_metadata(synthetic_table)
    meta = artifacts.provenance(None, config_hash=config_hash, stage="trainset",
                                grid_hash=obs_meta.get("grid_hash"),
                                n_pixels=obs_meta.get("n_pixels"))
    artifacts.save_table(table, merged, meta)
    log(f"trainset: {n_total} spectra; per split {merged['split'].value_counts().to_dict()}")
    return merged


# ------------------------------------------------------------------ train / predict

def train(*, flux: str, table: str, labels: Sequence[str], member: int, cfg: Mapping[str, Any],
          model_dir: str, threads: int = 1, log: Log = log_to_stdout) -> dict:
    from .train import train_member

    n = len(artifacts.load_table(table, columns=["spectrum_id"]))
    return train_member(flux, table, np.ones(n, dtype=bool), list(labels), int(member), cfg,
                        model_dir, log=log, threads=threads)


def predict(*, flux: str, table: str, model_dirs: Sequence[str], shard: int, n_shards: int,
            cfg: Mapping[str, Any], out: str, threads: int = 1, log: Log = log_to_stdout,
            config_hash: str = "none") -> pd.DataFrame:
    from .predict import predict_shard, select_members, write_shard
    from .train import resolve_device

    batch_size = cfg["batch_size"] or (2048 if resolve_device(cfg["device"]).type == "cuda" else 64)
    members = select_members(list(model_dirs), cfg["keep_quantile"])
    log(f"predict: shard {shard}/{n_shards} with {len(members)} of {len(model_dirs)} members")
    df = predict_shard(flux, table, members, int(shard), int(n_shards),
                       batch_size=batch_size, device=cfg["device"], log=log,
                       threads=threads)
    write_shard(df, out, artifacts.provenance(None, config_hash=config_hash, stage="predict",
                                               shard=int(shard), n_shards=int(n_shards)))
    return df


# ------------------------------------------------------------------ catalog

def catalog(*, shards: Sequence[str], table: str, clean_table: str, model_dirs: Sequence[str],
            labels: Sequence[str], cfg: Mapping[str, Any], experiment: str, method: str,
            fits_path: str, parquet_path: str, log: Log = log_to_stdout,
            config_hash: str = "none") -> pd.DataFrame:
    """Merge prediction shards with the star table and flags; write FITS + Parquet catalogues."""
    from .catalog import compute_flags, merge_shards, write_catalog

    stars = artifacts.load_table(table)
    pred = merge_shards(list(shards), n_rows=len(stars))
    cleaned = artifacts.load_table(clean_table, columns=["keep", "reason", "cleaned"])
    out = pd.DataFrame({"spectrum_id": stars["spectrum_id"], "star_id": stars["star_id"],
                        "split": stars["split"], "snr": stars["snr"]})
    for label in labels:
        out[label] = pred[label].to_numpy()
        out[f"{label}_std"] = pred[f"{label}_std"].to_numpy()
    for label in labels:
        # catalogue (reference) labels the survey gave, kept beside ours for comparison
        out[f"{label}_ref"] = stars[label].to_numpy(dtype=float) if label in stars else np.nan
    out["n_members"] = pred["n_members"].to_numpy()
    out["clean_keep"] = cleaned["keep"].to_numpy(dtype=bool)
    out["clean_reason"] = cleaned["reason"].fillna("").to_numpy()
    metas = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    ranges = {label: (min(m["label_min"][i] for m in metas), max(m["label_max"][i] for m in metas))
              for i, label in enumerate(metas[0]["labels"])}
    out["flags"] = compute_flags(out, list(labels), ranges, cfg["snr_min"], cfg["max_std"])
    prov = artifacts.provenance(None, config_hash=config_hash, stage="catalog",
                                experiment=experiment, method=method, n_members=len(model_dirs))
    write_catalog(out, fits_path, parquet_path, labels=list(labels), provenance=prov)
    log(f"catalog: {len(out)} stars, {int((out['flags'] != 0).sum())} flagged; wrote "
        f"{fits_path} and {parquet_path}")
    return out

