"""One function per workflow rule, named as the rule: the wiring of paths, config sections and
the library functions that do the work.

``workflow_scripts/<rule>.py`` only unpacks the ``snakemake`` object and calls the matching
function here, so every stage can equally be run from Python or a notebook::

    from starlabels import stages
    stages.normalize(survey="gaia_eso", manifest="...", catalog="...", ...)

Each function reads only the paths it is given and writes its outputs atomically. What differs
between surveys and between methods comes from their records (:mod:`starlabels.surveys`,
:mod:`starlabels.methods`); section arguments (``cfg``, ``*_cfg``) are the experiment's validated
config sections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import artifacts, methods, surveys
from .batch import Log
from .grid import WavelengthGrid
from .runtime import keep_freed_memory, log_to_stdout


# ------------------------------------------------------------------ acquire

def acquire_observed(*, survey: str, source: str, simulate_cfg: Mapping[str, Any], raw_dir: str,
                     truth: str, threads: int = 1, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Raw observed spectra + catalogue + manifest + truth table of a simulated survey.

    Real archives (``source`` = the survey's archive) write the same raw/ files through
    :func:`archive_manifest`, :func:`download_shard` and :func:`archive_observed`.
    """
    if source != "simulate":
        raise ValueError(f"source {source!r}: acquire_observed only simulates; real archives "
                         f"are fetched by the archive_manifest → download_shard → "
                         f"archive_observed rules (rules/download.smk)")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire")
    return surveys.get(survey).simulate(simulate_cfg, raw_dir, truth, threads=threads, log=log,
                                        metadata=meta)


def acquire_synthetic(*, simulate_cfg: Mapping[str, Any], raw_dir: str, threads: int = 1,
                      log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """A simulated PHOENIX-like HiRes grid in raw/phoenix/."""
    from .simulate.survey import simulate_phoenix_grid

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire_synthetic")
    return simulate_phoenix_grid(simulate_cfg, raw_dir, threads=threads, log=log, metadata=meta)


# ---- real archives: manifest → download shards → assemble (rules/download.smk)

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
    from .acquire.literature import calibration_table

    record = surveys.get(survey)
    if source != record.archive:
        raise ValueError(f"source {source!r} cannot serve survey {survey!r}")
    if reference_stars is not None:
        calibration_table(survey, reference_stars, log=log)
    meta = artifacts.provenance(None, config_hash=config_hash, stage="archive_manifest")
    return record.manifest(archive_cfg=archive_cfg, download_cfg=download_cfg, grid_cfg=grid_cfg,
                           labels=labels, mirror=mirror, remote=remote, catalog=catalog,
                           download_dir=download_dir, log=log, metadata=meta)


def phoenix_manifest(*, phoenix_cfg: Mapping[str, Any], mirror: str | None,
                     download_cfg: Mapping[str, Any], remote: str, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """The PHOENIX HiRes files of the configured grid ranges, as a remote-file table."""
    from .acquire.manifests import build_phoenix_manifest

    meta = artifacts.provenance(None, config_hash=config_hash, stage="phoenix_manifest")
    return build_phoenix_manifest(phoenix=phoenix_cfg, mirror=mirror,
                                  n_shards=int(download_cfg["shards"]), remote_out=remote,
                                  log=log, metadata=meta)


def download_shard(*, remote: str, shard: int, dest_dir: str, journal_dir: str, out: str,
                   dataset: str, download_cfg: Mapping[str, Any],
                   login: Mapping[str, Any] | None = None,
                   log: Log = log_to_stdout) -> pd.DataFrame:
    """Fetch one shard of a remote-file table (files already complete are kept; the journal
    in ``journal_dir`` says which are, for archives that publish no size or checksum).

    ``login`` is the archive's login block for proprietary data (ESO: ``token_url`` and the
    names of the environment variables with the user and password; see
    :mod:`starlabels.acquire.auth`), None for public data. A file the archive does not have (HTTP 404: a PHOENIX grid hole, a
    withdrawn spectrum) is recorded as missing instead of failing the job for ever; the
    assemble step passes it on so it appears in the normalize rejects or the PHOENIX manifest.
    """
    from .acquire import shards

    what = {"observed": "archive spectra", "phoenix": "PHOENIX HiRes models"}[dataset]
    meta = artifacts.provenance(None, stage="download_shard", dataset=dataset)
    return shards.download_shard(remote=remote, shard=int(shard), dest_dir=dest_dir, out=out,
                                 journal_dir=journal_dir, download=download_cfg,
                                 login=login, allow_missing=True,
                                 what=what, log=log, metadata=meta)


def archive_observed(*, survey: str, remote: str, shards: Sequence[str], catalog: str,
                     raw_dir: str, reference_stars: Mapping[str, Any], log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Downloaded files → raw/observed/ exactly as acquire_observed lays it out (no truth)."""
    from .acquire import assemble

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire")
    return assemble.assemble_observed(survey=survey, remote=remote, shard_tables=list(shards),
                                      catalog=catalog, raw_dir=raw_dir,
                                      calibration=reference_stars, log=log, metadata=meta)


def archive_synthetic(*, remote: str, shards: Sequence[str], raw_dir: str,
                      log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """Downloaded PHOENIX files → raw/phoenix/ as acquire_synthetic lays it out."""
    from .acquire import assemble

    meta = artifacts.provenance(None, config_hash=config_hash, stage="acquire_synthetic")
    return assemble.assemble_synthetic(remote=remote, shard_tables=list(shards), raw_dir=raw_dir,
                                       log=log, metadata=meta)


# ------------------------------------------------------------------ normalize, clean, synthesize

def normalize(*, survey: str, manifest: str, catalog: str, calibration: str,
              labels: Sequence[str], grid_cfg: Mapping[str, Any], selection: Mapping[str, Any],
              solar: Mapping[str, float], cfg: Mapping[str, Any], flux: str, ivar: str,
              table: str, rejects: str, threads: int = 1, log: Log = log_to_stdout,
              config_hash: str = "none") -> dict:
    """Raw files → rest-frame, resampled, continuum-normalised flux/ivar matrices + star table."""
    from .normalize import normalize_survey

    record = surveys.get(survey)
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    stars = record.stars(catalog_path=catalog, calibration_path=calibration, labels=labels,
                         selection=selection, solar=solar)
    files = artifacts.load_table(manifest)
    # a unit = files read together: one star's setups (Gaia-ESO) or one plate (MARVELS), in
    # one visit (simulated repeat visits carry their number; a star's visits stay separate rows)
    groups = [group for _, group in files.groupby("unit", sort=True)]
    units = [list(group["path"]) for group in groups]
    visits = [int(group["visit"].iloc[0]) if "visit" in group else 1 for group in groups]
    read_fn = record.reader(cfg.get("reader"))
    # the star a one-star file belongs to is the manifest's (the header must agree), and a
    # file the download could not get carries its reason
    file_stars = (dict(zip(files["path"], files["star_id"].astype(str)))
                  if "star_id" in files else None)
    file_problems = ({p: e for p, e in zip(files["path"], files["download_error"])
                      if isinstance(e, str) and e} if "download_error" in files else None)
    log(f"normalize: {len(files)} files in {len(units)} units, {len(stars)} catalogue stars, "
        f"grid {grid.n_pixels} pixels ({', '.join(s.name for s in grid.segments)})")
    meta = artifacts.provenance(None, config_hash=config_hash, stage="normalize",
                                labels=list(labels), survey=survey)
    return normalize_survey(units, read_fn, grid, stars, cfg, flux, ivar, table, rejects,
                            rv_column=record.rv_column, threads=threads, log=log, metadata=meta,
                            visits=visits, file_stars=file_stars,
                            file_problems=file_problems)


def clean(*, flux: str, table: str, labels: Sequence[str], cfg: Mapping[str, Any],
          out_table: str, plot: str, threads: int = 1, log: Log = log_to_stdout,
          config_hash: str = "none") -> pd.DataFrame:
    """t-SNE cleaning of the training set; writes the kept/rejected table and the map."""
    keep_freed_memory()
    from . import config
    from .clean import tsne_clean
    from .plots import tsne_map

    matrix = artifacts.load_matrix(flux)
    stars = artifacts.load_table(table)
    cfg = config.section("clean", cfg)
    if cfg.pop("enabled"):
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


def synthesize(*, manifest: str, grid_cfg: Mapping[str, Any], cfg: Mapping[str, Any],
               continuum: Mapping[str, Any], flux: str, ivar: str, table: str, rejects: str,
               threads: int = 1, log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """PHOENIX HiRes grid → degraded, normalised, augmented training spectra."""
    from .io.readers import phoenix_models
    from .synthesize import synthesize_grid

    files = artifacts.load_table(manifest)
    wave = files.loc[files["kind"] == "wave", "path"]
    if wave.empty:
        raise ValueError(f"{manifest}: no WAVE file listed (kind == 'wave')")
    spectra = files.loc[files["kind"] == "spectrum", "path"].tolist()
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    read_wave, read_model = phoenix_models()
    meta = artifacts.provenance(None, config_hash=config_hash, stage="synthesize")
    return synthesize_grid(spectra, wave.iloc[0], read_wave, read_model, grid,
                           dict(cfg, continuum=dict(continuum)), flux, ivar, table, rejects,
                           threads=threads, log=log, metadata=meta)


# ------------------------------------------------------------------ trainset, train

def trainset(*, sources: Sequence[str], labels: Sequence[str], observed_flux: str,
             observed_ivar: str, observed_table: str, clean_table: str, flux: str, ivar: str,
             table: str, synthetic_flux: str | None = None, synthetic_ivar: str | None = None,
             synthetic_table: str | None = None, log: Log = log_to_stdout,
             config_hash: str = "none") -> pd.DataFrame:
    """The rows the networks learn from (:mod:`starlabels.trainset`) into flux and ivar
    matrices + a table."""
    from .trainset import build_trainset

    return build_trainset(sources=sources, labels=labels, observed_flux=observed_flux,
                          observed_ivar=observed_ivar, observed_table=observed_table,
                          clean_table=clean_table, flux=flux, ivar=ivar, table=table,
                          synthetic_flux=synthetic_flux, synthetic_ivar=synthetic_ivar,
                          synthetic_table=synthetic_table, log=log, config_hash=config_hash)


def train(*, flux: str, table: str, labels: Sequence[str], member: int, cfg: Mapping[str, Any],
          model_dir: str, threads: int = 1, log: Log = log_to_stdout,
          method_cfg: Mapping[str, Any] | None = None, variant: str = "full",
          ivar: str | None = None) -> dict:
    """One ensemble member of ``cfg["method"]`` into ``model_dir`` (``cfg``: the ``train``
    section and ``method``; ``method_cfg``: the method's own section, if it has one)."""
    keep_freed_memory()
    method = methods.get(cfg["method"])
    if method.section and method_cfg is None:
        raise ValueError(f"method {method.name} needs the experiment's `{method.section}` "
                         f"section")
    if variant != "full" and variant not in method.variants:
        raise ValueError(f"method {method.name} has no ablation variant {variant!r} "
                         f"(its variants: {list(method.variants)})")
    from .members import describe_member, training_description

    description = training_description(table, labels)
    method.train(flux=flux, ivar=ivar, table=table, labels=list(labels), member=int(member),
                 cfg=cfg, model_dir=model_dir, method_cfg=method_cfg, variant=variant, log=log,
                 threads=threads)
    # the folder describes its input spectra too, so it can be applied to new files
    return describe_member(model_dir, description)


def train_ablation(*, flux: str, table: str, labels: Sequence[str], variant: str,
                   cfg: Mapping[str, Any], model_dir: str, threads: int = 1,
                   log: Log = log_to_stdout, method_cfg: Mapping[str, Any] | None = None,
                   ivar: str | None = None) -> dict:
    """One ablation variant: a single member with member 0's seed and one part of the recipe
    switched off."""
    return train(flux=flux, table=table, labels=labels, member=0, cfg=cfg, model_dir=model_dir,
                 threads=threads, log=log, method_cfg=method_cfg, variant=variant, ivar=ivar)


# ------------------------------------------------------------------ reference scale

def reference_scale(*, shards: Sequence[str], table: str, calibration: str,
                    labels: Sequence[str], cfg: Mapping[str, Any], out: str,
                    log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """Fit the trends that put the predicted labels onto the reference stars' scale
    (:mod:`starlabels.reference_scale`) and save them as JSON for the catalogue."""
    from .catalog import merge_shards, prediction_columns
    from .reference_scale import fit_reference_scale

    stars = artifacts.load_table(table)
    pred = merge_shards(list(shards), n_rows=len(stars))
    frame = pd.DataFrame({"star_id": stars["star_id"].to_numpy(),
                          "split": stars["split"].to_numpy(),
                          **prediction_columns(pred, labels)})
    reference = artifacts.load_table(calibration)
    record = fit_reference_scale(frame, reference, labels, cfg, log=log)
    record["provenance"] = artifacts.provenance(None, config_hash=config_hash,
                                                stage="reference_scale")
    artifacts.save_json(out, record)
    return record


# ------------------------------------------------------------------ predict

def calibrate_ensemble(*, flux: str, table: str, model_dirs: Sequence[str],
                       cfg: Mapping[str, Any], out: str, keep_quantile: float,
                       ivar: str | None = None, log: Log = log_to_stdout) -> dict:
    """The ensemble's uncertainty calibration on the training set's ``valid`` rows, for the
    members predict will use (``keep_quantile``): deep_remap one temperature per head of the
    averaged distribution, the regression CNN one scale per label and S/N bin."""
    from .members import select_members

    members = select_members(list(model_dirs), keep_quantile)
    method = methods.get(artifacts.load_json(Path(members[0]) / "model.json")["method"])
    return method.calibrate(flux=flux, ivar=ivar, table=table, members=members, cfg=cfg,
                            out=out, log=log)


def predict(*, flux: str, table: str, model_dirs: Sequence[str], shard: int, n_shards: int,
            cfg: Mapping[str, Any], out: str, threads: int = 1, log: Log = log_to_stdout,
            config_hash: str = "none", options: Mapping[str, Any] | None = None,
            ensemble_calibration: str | None = None, ivar: str | None = None) -> int:
    """One prediction shard to Parquet with the members' method; returns the rows written.

    ``options`` are the method's own prediction settings (its record's ``predict_settings``)."""
    from .members import resolve_device, select_members

    keep_freed_memory()
    # null batch size = auto: large batches help a GPU, small ones a CPU (schema)
    batch_size = cfg["batch_size"] or (2048 if resolve_device(cfg["device"]).type == "cuda" else 64)
    members = select_members(list(model_dirs), cfg["keep_quantile"])
    log(f"predict: shard {shard}/{n_shards} with {len(members)} of {len(model_dirs)} members")
    method = methods.get(artifacts.load_json(Path(members[0]) / "model.json")["method"])
    meta = artifacts.provenance(None, config_hash=config_hash, stage="predict", shard=int(shard),
                                n_shards=int(n_shards))
    return method.predict(flux=flux, ivar=ivar, table=table, members=members, shard=int(shard),
                          n_shards=int(n_shards), batch_size=batch_size, device=cfg["device"],
                          out=out, metadata=meta, log=log, threads=threads,
                          ensemble_calibration=ensemble_calibration, **dict(options or {}))


def ensemble(*, model_dirs: Sequence[str], out: str, method: str, survey: str,
             labels: Sequence[str], keep_quantile: float, options: Mapping[str, Any],
             catalog_cfg: Mapping[str, Any], classes: Mapping[str, float] | None = None,
             ensemble_calibration: str | None = None, reference_scale: str | None = None,
             experiment: str = "unknown", log: Log = log_to_stdout,
             config_hash: str = "none") -> dict:
    """models/ensemble.json: the members, their checksums, the settings that apply them and the
    catalogue's reference-star scale, so the models folder is one thing to copy and to use
    (:mod:`starlabels.ensemble`)."""
    from .ensemble import write_manifest

    meta = artifacts.provenance(None, config_hash=config_hash, stage="ensemble",
                                experiment=experiment)
    manifest = write_manifest(model_dirs=model_dirs, out=out, method=method, survey=survey,
                              labels=labels, keep_quantile=keep_quantile, options=options,
                              catalog_cfg=catalog_cfg, classes=classes,
                              ensemble_calibration=ensemble_calibration,
                              reference_scale=reference_scale, metadata=meta)
    log(f"ensemble: {len(manifest['members'])} members of {method} for {survey}, "
        f"calibration {manifest['calibration']['file'] if manifest['calibration'] else 'none'}, "
        f"reference-star scale {'from ' + reference_scale if reference_scale else 'none'}; "
        f"wrote {out}")
    return manifest


# ------------------------------------------------------------------ refine

def train_emulator(*, flux: str, ivar: str, table: str, trainset_table: str,
                   labels: Sequence[str], cfg: Mapping[str, Any], grid_cfg: Mapping[str, Any],
                   linelist: str | None, model_dir: str, threads: int = 1,
                   log: Log = log_to_stdout, config_hash: str = "none") -> dict:
    """The spectral emulator of the refine stage (:mod:`starlabels.refine`), trained on the
    trainset's observed train rows; ``cfg`` is the ``refine`` section."""
    from .refine.jobs import train_emulator_job
    from .simulate.physics import load_linelist

    keep_freed_memory()
    lines = load_linelist(linelist) if cfg["emulator"]["censor"] else None
    meta = artifacts.provenance(None, config_hash=config_hash, stage="train_emulator")
    return train_emulator_job(flux=flux, ivar=ivar, table=table, trainset_table=trainset_table,
                              labels=list(labels), cfg=cfg, grid_cfg=grid_cfg, lines=lines,
                              out_dir=model_dir, log=log, threads=threads, metadata=meta)


def calibrate_refine(*, emulator_dir: str, flux: str, ivar: str, trainset_table: str,
                     predictions: Sequence[str], labels: Sequence[str], cfg: Mapping[str, Any],
                     out: str, threads: int = 1, log: Log = log_to_stdout,
                     config_hash: str = "none") -> dict:
    """Refine the trainset's valid stars and calibrate label scale, errors and the χ² flag."""
    from .refine.jobs import calibrate_refine_job

    meta = artifacts.provenance(None, config_hash=config_hash, stage="calibrate_refine")
    return calibrate_refine_job(emulator_dir=emulator_dir, flux=flux, ivar=ivar,
                                trainset_table=trainset_table, predictions=list(predictions),
                                labels=list(labels), cfg=cfg, out=out, log=log, threads=threads,
                                metadata=meta)


def refine(*, emulator_dir: str, calibration: str, flux: str, ivar: str, table: str,
           prediction: str, shard: int, n_shards: int, labels: Sequence[str],
           cfg: Mapping[str, Any], out_table: str, out_models: str, threads: int = 1,
           log: Log = log_to_stdout, config_hash: str = "none") -> int:
    """One refine shard (the prediction shard's stars): refined labels, errors, χ², flag, and
    the best-fit model spectra; returns the stars fitted."""
    from .refine.jobs import refine_job

    keep_freed_memory()
    meta = artifacts.provenance(None, config_hash=config_hash, stage="refine", shard=int(shard),
                                n_shards=int(n_shards))
    return refine_job(emulator_dir=emulator_dir, calibration=calibration, flux=flux, ivar=ivar,
                      table=table, prediction=prediction, shard=int(shard),
                      n_shards=int(n_shards), labels=list(labels), cfg=cfg,
                      out_table=out_table, out_models=out_models, log=log, threads=threads,
                      metadata=meta)


def refine_report(*, catalog: str, truth: str | None, flux: str, ivar: str,
                  model_files: Sequence[str], calibration: str, labels: Sequence[str],
                  survey: str, grid_cfg: Mapping[str, Any], plot_stars: int,
                  snr_bins: Sequence[float], targets: Mapping[str, Any], linelist: str | None,
                  metrics: str, plot: str, log: Log = log_to_stdout,
                  config_hash: str = "none") -> dict:
    """The refine stage's report against the truth (or the catalogue's labels) and its figure
    of data, model and residuals (:mod:`starlabels.refine.report`)."""
    from .refine.report import refine_report as run
    from .simulate.physics import load_linelist

    meta = artifacts.provenance(None, config_hash=config_hash, stage="refine_report")
    return run(catalog=catalog, truth=truth, flux=flux, ivar=ivar, model_files=list(model_files),
               calibration=calibration, labels=list(labels), survey=survey, grid_cfg=grid_cfg,
               plot_stars=plot_stars, snr_bins=snr_bins, targets=targets,
               lines=load_linelist(linelist), metrics=metrics, plot=plot, log=log,
               metadata=meta)


# ------------------------------------------------------------------ catalog, validate

def catalog(*, shards: Sequence[str], table: str, clean_table: str, model_dirs: Sequence[str],
            labels: Sequence[str], cfg: Mapping[str, Any], experiment: str, method: str,
            fits_path: str, parquet_path: str, log: Log = log_to_stdout,
            config_hash: str = "none", classes: Mapping[str, float] | None = None,
            survey: str | None = None, refined: Sequence[str] | None = None,
            reference_scale: str | None = None) -> pd.DataFrame:
    """Merge prediction shards with the star table and flags; write FITS + Parquet catalogues.

    ``classes`` (giant_logg_max, dwarf_logg_min) adds a giant / subgiant / dwarf column;
    ``survey`` names the input-catalogue columns (positions, survey ids) the catalogue carries;
    ``refined`` (the refine stage's shard tables) adds the refined labels and their flag;
    ``reference_scale`` (the reference_scale rule's JSON) puts the labels onto the reference
    stars' scale.
    """
    from .catalog import FLAG_COLUMN, bin_edges, catalog_tables, write_catalog

    carry = surveys.get(survey).carry if survey else ()
    scale = artifacts.load_json(reference_scale) if reference_scale else {"labels": {}}
    scaled = sorted(label for label, fit in scale["labels"].items() if fit.get("applied"))
    out = catalog_tables(shards=shards, table=table, clean_table=clean_table,
                         model_dirs=model_dirs, labels=labels, cfg=cfg, classes=classes,
                         carry=carry, refined=refined, scale=scale if scaled else None)
    prov = artifacts.provenance(None, config_hash=config_hash, stage="catalog",
                                experiment=experiment, method=method, n_members=len(model_dirs),
                                scaled_labels=",".join(scaled) or "none")
    metas = [artifacts.load_json(Path(d) / "model.json") for d in model_dirs]
    write_catalog(out, fits_path, parquet_path, labels=list(labels), provenance=prov,
                  bins=bin_edges(metas))
    log(f"catalog: {len(out)} stars, {int((out[FLAG_COLUMN] != 0).sum())} flagged; wrote "
        f"{fits_path} and {parquet_path}")
    return out


def validate(*, catalog: str, table: str, flux: str, clean_table: str, rejects: str,
             truth: str | None, model_dirs: Sequence[str], labels: Sequence[str], survey: str,
             ivar: str | None = None,
             grid_cfg: Mapping[str, Any], cfg: Mapping[str, Any], metrics: str,
             plots: Mapping[str, str], experiment: str, linelist: str | None = None,
             simulate_cfg: Mapping[str, Any] | None = None, log: Log = log_to_stdout,
             config_hash: str = "none", method: str | None = None,
             method_report: str | None = None, calibration: str | None = None,
             continuum: Mapping[str, Any] | None = None,
             refine_report: str | None = None, reference_scale: str | None = None) -> dict:
    """metrics.json and the validation plots (:func:`starlabels.validate.validate`);
    ``method_report`` is the method's report (e.g. deep-REMAP's), merged into the metrics under
    the ``method``'s name; ``calibration`` the stars with literature labels (reported beside
    them); ``continuum`` the normalize stage's continuum section (the marginalised Cramér–Rao
    bound frees its coefficients); ``refine_report`` the refine stage's, under ``refine``;
    ``reference_scale`` the reference-star scale's fit, under ``reference_scale``."""
    from .validate import validate as run

    return run(catalog=catalog, table=table, flux=flux, ivar=ivar, clean_table=clean_table,
               rejects=rejects, truth=truth, model_dirs=model_dirs, labels=labels, survey=survey,
               grid_cfg=grid_cfg, cfg=cfg, metrics=metrics, plots=plots, experiment=experiment,
               linelist=linelist, simulate_cfg=simulate_cfg, log=log, config_hash=config_hash,
               method=method, method_report=method_report, calibration=calibration,
               continuum=continuum, refine_report=refine_report,
               reference_scale=reference_scale)


def summary_tables(*, metrics: str, catalog: str, labels: Sequence[str], metrics_html: str,
                   catalog_html: str, log: Log = log_to_stdout) -> None:
    """The report's tables: validation metrics and a summary of the catalogue (HTML)."""
    from .summary import write_tables

    write_tables(metrics=metrics, catalog=catalog, labels=labels, metrics_html=metrics_html,
                 catalog_html=catalog_html)
    log(f"summary_tables: wrote {metrics_html} and {catalog_html}")


def remap_report(*, flux: str, table: str, catalog: str, truth: str | None,
                 model_dirs: Sequence[str], classes: Mapping[str, float],
                 targets: Mapping[str, Any], metrics: str, reliability_plot: str,
                 embedding_plot: str, log: Log = log_to_stdout, config_hash: str = "none",
                 ensemble_calibration: str | None = None) -> dict:
    """deep_remap: held-out calibration, calibration stars and giant classes
    (:mod:`starlabels.remap.report`)."""
    from .remap.report import remap_report as run

    return run(flux=flux, table=table, catalog=catalog, truth=truth, model_dirs=model_dirs,
               classes=classes, targets=targets, metrics=metrics,
               reliability_plot=reliability_plot, embedding_plot=embedding_plot, log=log,
               config_hash=config_hash, ensemble_calibration=ensemble_calibration)


def ablation_report(*, flux: str, table: str, truth: str | None, model_dirs: Sequence[str],
                    ablation_dirs: Mapping[str, str], ablation_md: str, ablation_json: str,
                    log: Log = log_to_stdout, config_hash: str = "none",
                    ensemble_calibration: str | None = None) -> dict:
    """deep_remap: the ablation study on the calibration stars (:mod:`starlabels.remap.report`)."""
    from .remap.report import ablation_report as run

    return run(flux=flux, table=table, truth=truth, model_dirs=model_dirs,
               ablation_dirs=ablation_dirs, ablation_md=ablation_md, ablation_json=ablation_json,
               log=log, config_hash=config_hash, ensemble_calibration=ensemble_calibration)
