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


def keep_freed_memory(top_pad_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep up to ``top_pad_bytes`` of freed heap instead of returning it to the
    kernel (mallopt M_TOP_PAD, what ``MALLOC_TOP_PAD_`` sets). Network layers allocate and free
    the same activation buffers every batch; by default glibc trims them and page-faults them in
    again, which measured 2.6× slower prediction and 1.55× slower training on the 2-core machine
    (bench/README.md). Called at the start of a job process; a no-op (False) off glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-2, int(top_pad_bytes)))  # -2 = M_TOP_PAD
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------ acquire

def acquire_observed(*, survey: str, source: str, simulate_cfg: Mapping[str, Any], raw_dir: str,
                     truth: str, threads: int = 1, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Raw observed spectra + catalogue + manifest + truth table of a simulated survey.

    Real archives (source eso_ges, sdss_marvels) write the same raw/ files through
    :func:`archive_manifest`, :func:`download_shard` and :func:`assemble_observed`.
    """
    from .simulate.survey import simulate_gaia_eso, simulate_marvels

    if source != "simulate":
        raise ValueError(f"source {source!r}: acquire_observed only simulates; real archives "
                         f"are fetched by the archive_manifest → download_shard → "
                         f"archive_observed rules (rules/download.smk)")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire")
    run = {"gaia_eso": simulate_gaia_eso, "sdss_marvels": simulate_marvels}[survey]
    return run(simulate_cfg, raw_dir, truth, threads=threads, log=log, metadata=meta)


def acquire_synthetic(*, simulate_cfg: Mapping[str, Any], raw_dir: str, threads: int = 1,
                      log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    from .simulate.survey import simulate_phoenix_grid

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire_synthetic")
    return simulate_phoenix_grid(simulate_cfg, raw_dir, threads=threads, log=log, metadata=meta)


# ---- real archives: manifest → download shards → assemble (rules/download.smk)

def _archive_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all there is to say (host, what, mirror / config hint)."""
    from .archives import ArchiveConfigError
    from .download import DownloadError
    from .literature import LiteratureTableError

    return (DownloadError, ArchiveConfigError, LiteratureTableError)


def concise_excepthook(kind, value, traceback) -> None:
    """sys.excepthook for the archive rules' scripts: an unreachable archive, a config gap or an
    empty literature table is reported as its one-line message, not a traceback; any other
    error keeps its traceback."""
    import sys

    if isinstance(value, _archive_errors()):
        print(f"ERROR: {value}", file=sys.stderr, flush=True)
    else:
        sys.__excepthook__(kind, value, traceback)


def archive_manifest(*, survey: str, source: str, mirror: str | None,
                     archive_cfg: Mapping[str, Any], download_cfg: Mapping[str, Any],
                     grid_cfg: Mapping[str, Any], labels: Sequence[str], remote: str,
                     catalog: str, download_dir: str,
                     reference_stars: Mapping[str, Any] | None = None, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Ask the archive what to fetch: writes the remote-file table (with shards) and the
    survey's parameter catalogue (ESO by async TAP; MARVELS as a fetched FITS file).

    A required literature table (``reference_stars``) is checked first, so an experiment that
    cannot run its calibration comparison stops before anything is downloaded.
    """
    from .archives import build_eso_manifest, build_marvels_manifest
    from .literature import calibration_table

    if reference_stars is not None:
        calibration_table(survey, reference_stars, log=log)
    meta = artifacts.provenance(None, config_hash=config_hash, stage="archive_manifest")
    n_shards = int(download_cfg["shards"])
    if source == "eso_ges" and survey == "gaia_eso":
        return build_eso_manifest(eso=archive_cfg["eso"], segments=grid_cfg["segments"],
                                  labels=labels, mirror=mirror, n_shards=n_shards,
                                  tap_timeout_s=float(download_cfg["tap_timeout_s"]),
                                  remote_out=remote, catalog_out=catalog, log=log, metadata=meta)
    if source == "sdss_marvels" and survey == "sdss_marvels":
        return build_marvels_manifest(sdss=archive_cfg["sdss"], mirror=mirror, n_shards=n_shards,
                                      download=download_cfg, download_dir=download_dir,
                                      remote_out=remote, catalog_out=catalog, log=log,
                                      metadata=meta)
    raise ValueError(f"source {source!r} cannot serve survey {survey!r}")


def phoenix_manifest(*, phoenix_cfg: Mapping[str, Any], mirror: str | None,
                     download_cfg: Mapping[str, Any], remote: str, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """The PHOENIX HiRes files of the configured grid ranges, as a remote-file table."""
    from .archives import build_phoenix_manifest

    meta = artifacts.provenance(None, config_hash=config_hash, stage="phoenix_manifest")
    return build_phoenix_manifest(phoenix=phoenix_cfg, mirror=mirror,
                                  n_shards=int(download_cfg["shards"]), remote_out=remote,
                                  log=log, metadata=meta)


def download_shard(*, remote: str, shard: int, dest_dir: str, journal_dir: str, out: str,
                   dataset: str, download_cfg: Mapping[str, Any],
                   credentials_env: Sequence[str | None] = (None, None),
                   log: Log = log_to_stdout) -> pd.DataFrame:
    """Fetch one shard of a remote-file table (files already complete are kept; the journal
    in ``journal_dir`` says which are, for archives that publish no size or checksum).

    ``credentials_env`` names the environment variables holding a user and password for
    proprietary data (ESO). A file the archive does not have (HTTP 404: a PHOENIX grid hole, a
    withdrawn spectrum) is recorded as missing instead of failing the job for ever; the
    assemble step passes it on so it appears in the normalize rejects or the PHOENIX manifest.
    """
    from .archives import download_shard as fetch_shard

    what = {"observed": "archive spectra", "phoenix": "PHOENIX HiRes models"}[dataset]
    meta = artifacts.provenance(None, stage="download_shard", dataset=dataset)
    return fetch_shard(remote=remote, shard=int(shard), dest_dir=dest_dir, out=out,
                       journal_dir=journal_dir, download=download_cfg,
                       credentials_env=tuple(credentials_env), allow_missing=True,
                       what=what, log=log, metadata=meta)


def assemble_observed(*, survey: str, remote: str, shards: Sequence[str], catalog: str,
                      raw_dir: str, reference_stars: Mapping[str, Any], log: Log = log_to_stdout,
                      config_hash: str = "none") -> dict:
    """Downloaded files → raw/observed/ exactly as acquire_observed lays it out (no truth)."""
    from .archives import assemble_observed as assemble

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire")
    return assemble(survey=survey, remote=remote, shard_tables=list(shards), catalog=catalog,
                    raw_dir=raw_dir, calibration=reference_stars, log=log, metadata=meta)


def assemble_synthetic(*, remote: str, shards: Sequence[str], raw_dir: str,
                       log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """Downloaded PHOENIX files → raw/phoenix/ as acquire_synthetic lays it out."""
    from .archives import assemble_synthetic as assemble

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire_synthetic")
    return assemble(remote=remote, shard_tables=list(shards), raw_dir=raw_dir, log=log,
                    metadata=meta)


# ------------------------------------------------------------------ normalize

def survey_stars(survey: str, catalog: str, calibration: str, labels: Sequence[str],
                 selection: Mapping[str, Any], solar: Mapping[str, float]) -> pd.DataFrame:
    from .selection import gaia_eso_stars, marvels_stars

    if survey == "gaia_eso":
        return gaia_eso_stars(catalog, labels, selection, solar)
    if survey == "sdss_marvels":
        return marvels_stars(catalog, calibration, labels, selection)
    raise ValueError(f"survey {survey!r}: expected gaia_eso or sdss_marvels")


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
    from .archives import spectrum_reader

    read_fn = spectrum_reader(survey, cfg.get("reader"))
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
    keep_freed_memory()
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
    # catalogue label errors travel along: deep_remap's calibration deconvolves them
    keep_cols = ["spectrum_id", "star_id", "split", "source", "source_row", "snr", *labels,
                 *[f"e_{label}" for label in labels]]
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
          model_dir: str, threads: int = 1, log: Log = log_to_stdout,
          remap_cfg: Mapping[str, Any] | None = None, variant: str = "full") -> dict:
    """One ensemble member (or, for deep_remap, one ablation variant) into ``model_dir``."""
    keep_freed_memory()
    from .train import train_member

    if cfg["method"] == "deep_remap":
        from .remap.train import train_remap_member

        if remap_cfg is None:
            raise ValueError("method deep_remap needs the experiment's `remap` section")
        return train_remap_member(flux, table, labels, int(member), cfg, remap_cfg, model_dir,
                                  variant=variant, log=log, threads=threads)
    if variant != "full":
        raise ValueError(f"ablation variant {variant!r} exists only for method deep_remap")
    n = len(artifacts.load_table(table, columns=["spectrum_id"]))
    return train_member(flux, table, np.ones(n, dtype=bool), list(labels), int(member), cfg,
                        model_dir, log=log, threads=threads)


def predict(*, flux: str, table: str, model_dirs: Sequence[str], shard: int, n_shards: int,
            cfg: Mapping[str, Any], out: str, threads: int = 1, log: Log = log_to_stdout,
            config_hash: str = "none", knn: int = 5,
            ensemble_calibration: str | None = None) -> int:
    """One prediction shard to Parquet; returns the number of rows written."""
    from .predict import iter_shard_predictions, select_members, write_shard, write_shard_chunks
    from .train import resolve_device

    keep_freed_memory()

    batch_size = cfg["batch_size"] or (2048 if resolve_device(cfg["device"]).type == "cuda" else 64)
    members = select_members(list(model_dirs), cfg["keep_quantile"])
    log(f"predict: shard {shard}/{n_shards} with {len(members)} of {len(model_dirs)} members")
    method = artifacts.load_json(Path(members[0]) / "model.json")["method"]
    meta = artifacts.provenance(None, config_hash=config_hash, stage="predict", shard=int(shard),
                                n_shards=int(n_shards))
    if method == "deep_remap":
        from .remap.predict import predict_remap_shard

        temperatures = _ensemble_temperatures(ensemble_calibration, members)
        df = predict_remap_shard(flux, table, members, int(shard), int(n_shards),
                                 batch_size=batch_size, device=cfg["device"], knn=knn, log=log,
                                 threads=threads, temperatures=temperatures)
        write_shard(df, out, meta)
        return len(df)
    # streamed: chunks go to disk as they are predicted, so memory does not grow with the shard
    chunks = iter_shard_predictions(flux, table, members, int(shard), int(n_shards),
                                    batch_size=batch_size, device=cfg["device"], log=log,
                                    threads=threads)
    return write_shard_chunks(chunks, out, meta)


def _ensemble_temperatures(path: str | None, members: Sequence[str]) -> list[float] | None:
    """The ensemble's temperatures, checked to belong to exactly these members (None = none)."""
    if not path:
        return None
    calibration = artifacts.load_json(path)
    if sorted(calibration["members"]) != sorted(str(m) for m in members):
        raise ValueError(f"{path} was fitted for members {calibration['members']}, but predict "
                         f"uses {list(map(str, members))}; rerun calibrate_ensemble")
    return list(calibration["temperatures"])


def calibrate_ensemble(*, flux: str, table: str, model_dirs: Sequence[str],
                       cfg: Mapping[str, Any], out: str, log: Log = log_to_stdout) -> dict:
    """deep_remap: one temperature per head for the members' averaged distribution."""
    from .remap.train import calibrate_ensemble as fit

    return fit(flux, table, list(model_dirs), cfg, out, log=log)


# ------------------------------------------------------------------ catalog

def catalog(*, shards: Sequence[str], table: str, clean_table: str, model_dirs: Sequence[str],
            labels: Sequence[str], cfg: Mapping[str, Any], experiment: str, method: str,
            fits_path: str, parquet_path: str, log: Log = log_to_stdout,
            config_hash: str = "none",
            classes: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Merge prediction shards with the star table and flags; write FITS + Parquet catalogues.

    ``classes`` (giant_logg_max, dwarf_logg_min) adds a giant / subgiant / dwarf column.
    """
    from .catalog import compute_flags, evolutionary_class, merge_shards, write_catalog

    stars = artifacts.load_table(table)
    pred = merge_shards(list(shards), n_rows=len(stars))
    cleaned = artifacts.load_table(clean_table, columns=["keep", "reason", "cleaned"])
    out = pd.DataFrame({"spectrum_id": stars["spectrum_id"], "star_id": stars["star_id"],
                        "split": stars["split"], "snr": stars["snr"]})
    for label in labels:
        out[label] = pred[label].to_numpy()
        out[f"{label}_std"] = pred[f"{label}_std"].to_numpy()
        # deep_remap: the distribution's 16th/84th percentiles and the members' disagreement
        for suffix in ("q16", "q84", "members_std"):
            if f"{label}_{suffix}" in pred:
                out[f"{label}_{suffix}"] = pred[f"{label}_{suffix}"].to_numpy()
    if classes is not None:
        out["evolutionary_class"] = evolutionary_class(out["logg"].to_numpy(),
                                                       classes["giant_logg_max"],
                                                       classes["dwarf_logg_min"])
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
    # per-spectrum vectors (probabilities per bin, nearest labelled stars, embedding) are
    # Parquet list columns; the FITS catalogue keeps the scalar columns
    vectors = [c for c in pred.columns if c.endswith("_prob")
               or c in ("knn_star_id", "knn_distance", "embedding")]
    full = pd.concat([out, pred[vectors].reset_index(drop=True)], axis=1) if vectors else out
    prov = artifacts.provenance(None, config_hash=config_hash, stage="catalog",
                                experiment=experiment, method=method, n_members=len(model_dirs))
    write_catalog(out, fits_path, None, labels=list(labels), provenance=prov)
    write_catalog(full, None, parquet_path, labels=list(labels), provenance=prov)
    log(f"catalog: {len(out)} stars, {int((out['flags'] != 0).sum())} flagged; wrote "
        f"{fits_path} and {parquet_path}")
    return out



# ------------------------------------------------------------------ deep-REMAP report

#: the deep-REMAP paper's figures on its 30 real calibration stars (σ vs literature)
REMAP_TARGETS = {"teff": 75.0, "logg": 0.12, "fe_h": 0.08}


def remap_report(*, flux: str, table: str, catalog: str, truth: str | None,
                 model_dirs: Sequence[str], ablation_dirs: Mapping[str, str],
                 classes: Mapping[str, float], metrics: str, ablation_md: str,
                 reliability_plot: str, embedding_plot: str, log: Log = log_to_stdout,
                 config_hash: str = "none", seed: int = 0,
                 ensemble_calibration: str | None = None) -> dict:
    """Calibration on held-out stars (before/after temperature scaling), the ablation table,
    giant-class fractions, reliability diagram and embedding map of a deep_remap experiment."""
    from . import plots as P
    from .remap import evaluate as E
    from .remap.train import VARIANTS
    from .validate import giant_fractions

    stars = artifacts.load_table(table)
    truth_df = artifacts.load_table(truth) if truth else None
    member_meta = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    labels = list(member_meta[0]["labels"])
    result: dict[str, Any] = {"members": [{"member": m["member"], "temperatures": m["temperatures"],
                                           "calibration_split": m["calibration"]}
                                          for m in member_meta]}
    temperatures = _ensemble_temperatures(ensemble_calibration, model_dirs)
    result["calibration_level"] = "ensemble" if temperatures else "member"
    if ensemble_calibration:
        result["ensemble_calibration"] = artifacts.load_json(ensemble_calibration)

    # held-out stars: observed test split + calibration stars (no phase trained on them)
    heldout = np.flatnonzero(stars["split"].isin(["test", "calibration"]).to_numpy())
    ref, kind = E.reference_labels(stars.iloc[heldout], truth_df, labels)
    result["reference"] = kind
    cal = E.heldout_calibration(E.load_rows(flux, heldout), ref, list(model_dirs),
                                temperatures=temperatures)
    result["heldout"] = cal["metrics"]
    result["heldout"]["splits"] = stars.iloc[heldout]["split"].value_counts().to_dict()
    for label, m in cal["metrics"]["labels"].items():
        log(f"remap: held-out {label}: 68% coverage {m['coverage68_before']:.2f} → "
            f"{m['coverage68_after']:.2f}, ECE {m['ece_before']:.3f} → {m['ece_after']:.3f}, "
            f"σ {m['sigma_after']:.4g} (vs {kind} labels, {m['n_after']} stars)")
    result["coverage_target"] = {
        label: {"coverage68": m["coverage68_after"], "target": [0.60, 0.76],
                "met": bool(0.60 <= m["coverage68_after"] <= 0.76)}
        for label, m in cal["metrics"]["labels"].items()}
    P.reliability_diagram(cal["curves"], reliability_plot)

    # ablation on the calibration stars
    calib = np.flatnonzero(stars["split"].eq("calibration").to_numpy())
    variants: dict[str, list[str]] = {"full": [str(model_dirs[0])],
                                      "ensemble": [str(d) for d in model_dirs]}
    variants.update({name: [str(d)] for name, d in ablation_dirs.items()})
    descriptions = dict(VARIANTS, ensemble=f"all {len(model_dirs)} members, probabilities "
                                           f"averaged (the catalogue's labels)")
    calib_ref, _ = E.reference_labels(stars.iloc[calib], truth_df, labels)
    ablation, text = E.ablation_table(E.load_rows(flux, calib), calib_ref, kind, variants,
                                      descriptions,
                                      temperatures={"ensemble": temperatures} if temperatures
                                      else None)
    result["ablation"] = ablation
    result["calibration_star_targets"] = {
        label: {"sigma": ablation["ensemble"][label]["sigma"], "target": target,
                "met": bool(ablation["ensemble"][label]["sigma"] <= target)}
        for label, target in REMAP_TARGETS.items() if label in labels}
    with artifacts.atomic_path(ablation_md) as tmp:
        Path(tmp).write_text(text)
    log(text)

    # giant / sub-giant / dwarf classes of the giant candidates
    cat = artifacts.load_table(catalog)
    if truth_df is not None and "sample" in truth_df:
        cand_ids = set(truth_df.loc[truth_df["sample"].eq("giant_candidate"), "star_id"])
    else:
        cand_ids = set(stars.loc[stars.get("rpm_class", pd.Series(dtype=str)).eq("giant"),
                                 "star_id"])
    cand = cat[cat["star_id"].isin(cand_ids)]
    gmax, dmin = classes["giant_logg_max"], classes["dwarf_logg_min"]

    classes_out: dict[str, Any] = {"n": int(len(cand)),
                                   "predicted": giant_fractions(cand["logg"], gmax, dmin)}
    if truth_df is not None:
        true_logg = cand[["star_id"]].merge(truth_df[["star_id", "logg"]], on="star_id")["logg"]
        classes_out["true"] = giant_fractions(true_logg, gmax, dmin)
        classes_out["difference_points"] = {
            c: 100 * (classes_out["predicted"][c] - classes_out["true"][c]) for c in
            ("giant", "subgiant", "dwarf")}
        classes_out["giant_within_5_points"] = bool(
            abs(classes_out["difference_points"]["giant"]) <= 5.0)
    result["giant_candidates"] = classes_out
    log(f"remap: giant candidates {classes_out}")

    # embedding map: t-SNE of the first member's embedding of every catalogue star
    emb = np.stack(cat["embedding"].to_numpy()).astype(np.float64)
    from openTSNE import TSNE

    rng = np.random.default_rng(seed)
    show = np.sort(rng.choice(len(cat), min(len(cat), 5000), replace=False))
    xy = np.asarray(TSNE(perplexity=30, random_state=seed, n_jobs=1).fit(emb[show]))
    P.embedding_map(xy, cat.iloc[show].reset_index(drop=True), labels, embedding_plot)

    result["provenance"] = artifacts.provenance(None, config_hash=config_hash,
                                                stage="remap_report")
    artifacts.save_json(metrics, result)
    return result
