"""The refine stage's three jobs: train the emulator (once per experiment), calibrate the fit on
the `valid` split, and refine one prediction shard.

Inputs are the normalize stage's flux and inverse-variance matrices (rows = the star table's),
the trainset table (which rows the networks learned from, with catalogue labels and errors) and
the prediction shards (the network's labels, where each fit starts). A shard's spectra are read
in batches into one buffer and its model spectra written block by block, so a job's memory does
not grow with the shard.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import artifacts
from ..batch import say
from ..grid import WavelengthGrid
from ..members import META_FILE, resolve_device, shard_rows, write_model_folder
from . import calibration as cal
from .emulator import Emulator, build_emulator
from .fit import FitResult, Nuisances, fit_spectra
from .train import TrainingSet, train_emulator

Log = Callable[[str], Any]
#: rows read from the flux matrix per step of the training and calibration jobs
READ_ROWS = 2048


# ---------------------------------------------------------------- inputs

def _rows(path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """Rows of a float32 matrix (any order), read in contiguous blocks."""
    matrix = artifacts.load_matrix(path)
    out = np.empty((len(rows), matrix.shape[1]), dtype=np.float32)
    for i in range(0, len(rows), READ_ROWS):
        out[i:i + READ_ROWS] = matrix[np.asarray(rows[i:i + READ_ROWS])]
    return out


def network_errors(frame: pd.DataFrame, label: str) -> np.ndarray:
    """The network's calibrated uncertainty of ``label`` (``<label>_err``)."""
    if f"{label}_err" not in frame:
        raise ValueError(f"predictions have no {label}_err column")
    return frame[f"{label}_err"].to_numpy(dtype=np.float64)


def training_rows(trainset_table: str | os.PathLike, labels: Sequence[str], split: str
                  ) -> pd.DataFrame:
    """Observed trainset rows of ``split`` with finite labels and errors (``source_row`` = the
    row of the normalized matrices)."""
    table = artifacts.load_table(trainset_table)
    table = table[(table["source"] == "observed") & (table["split"] == split)]
    values = table[[*labels, *[f"e_{label}" for label in labels]]].to_numpy(dtype=np.float64)
    return table[np.isfinite(values).all(axis=1)].reset_index(drop=True)


def _training_set(flux: str, ivar: str, rows: pd.DataFrame, labels: Sequence[str],
                  device: torch.device) -> TrainingSet:
    src = rows["source_row"].to_numpy()
    as_t = lambda a: torch.as_tensor(np.array(a), dtype=torch.float32, device=device)  # noqa: E731
    return TrainingSet(as_t(_rows(flux, src)), as_t(_rows(ivar, src)),
                       as_t(rows[list(labels)].to_numpy(dtype=np.float64)),
                       as_t(rows[[f"e_{label}" for label in labels]].to_numpy(dtype=np.float64)))


def _grid_of(table: str | os.PathLike, grid_cfg: Mapping[str, Any]) -> WavelengthGrid:
    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    table_hash = artifacts.table_metadata(table).get("grid_hash")
    if table_hash != grid.hash():
        raise ValueError(f"{table} is on wavelength grid {table_hash}, the configured grid is "
                         f"{grid.hash()}")
    return grid


# ---------------------------------------------------------------- emulator folders

def save_emulator(out_dir: str | os.PathLike, emulator: Emulator, meta: Mapping[str, Any],
                  history: pd.DataFrame) -> None:
    write_model_folder(out_dir, emulator, meta, history)


def load_emulator(folder: str | os.PathLike, device: torch.device
                  ) -> tuple[Emulator, dict[str, Any]]:
    """The emulator of a model folder, in eval mode, gradients off; (emulator, its side-car)."""
    folder = Path(folder)
    meta = artifacts.load_json(folder / META_FILE)
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    if state.get("meta", {}).get("training_set_hash") != meta.get("training_set_hash"):
        raise ValueError(f"{folder}: model.pt and {META_FILE} come from different runs")
    emulator = build_emulator(meta["kind"], len(meta["labels"]) + int(meta["latent_nuisances"]),
                              int(meta["n_pixels"]),
                              meta["label_low"], meta["label_high"], meta["architecture"])
    emulator.load_state_dict(state["state_dict"])
    emulator.to(device).eval().requires_grad_(False)
    return emulator, meta


def nuisances(meta: Mapping[str, Any], fit_cfg: Mapping[str, Any], device: torch.device
              ) -> Nuisances:
    grid = WavelengthGrid.from_config(meta["grid"]["segments"])
    return Nuisances.build(grid.wavelength_air, list(grid.segment_slices.values()),
                           fit_cfg["continuum_order"], fit_cfg["rv"], device)


# ---------------------------------------------------------------- fitting in batches

def fit_batch_size(fit_cfg: Mapping[str, Any], device: torch.device) -> int:
    """Stars per batch: the configured number, or (null) 64 on CPU, 4096 on CUDA — a batch's
    Jacobians take batch × parameters × pixels × 4 bytes."""
    if fit_cfg["batch_size"]:
        return int(fit_cfg["batch_size"])
    return 4096 if device.type == "cuda" else 64


def fit_rows(emulator: Emulator, nuis: Nuisances, flux: np.ndarray, ivar: np.ndarray,
             start: np.ndarray, fit_cfg: Mapping[str, Any],
             prior: tuple[np.ndarray, np.ndarray] | None = None) -> FitResult:
    """:func:`fit_spectra` of one batch given as numpy arrays (physical labels)."""
    device = emulator.label_centre.device
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
    return fit_spectra(emulator, as_t(flux), as_t(ivar), as_t(start), nuis,
                       max_iterations=fit_cfg["max_iterations"],
                       chi2_tolerance=fit_cfg["chi2_tolerance"],
                       label_margin=fit_cfg["label_margin"],
                       prior_mean=None if prior is None else as_t(prior[0]),
                       prior_sigma=None if prior is None else as_t(prior[1]))


def network_prior(values: np.ndarray, errors: np.ndarray, fit_cfg: Mapping[str, Any]
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """The network's labels as a Gaussian prior (σ = ``prior_scale`` × its uncertainty), or
    None when ``prior`` is none; labels without a finite, positive uncertainty get none."""
    if fit_cfg["prior"] == "none":
        return None
    sigma = float(fit_cfg["prior_scale"]) * errors
    return values, np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1e9)


def fittable(start: np.ndarray, ivar: np.ndarray, n_params: int) -> np.ndarray:
    """'' for spectra the fit can take, else why not (the refine table's ``refine_note``)."""
    note = np.full(len(start), "", dtype=object)
    note[(ivar > 0).sum(axis=1) <= n_params] = "fewer unmasked pixels than fitted parameters"
    note[~np.isfinite(start).all(axis=1)] = "network labels not finite: no starting point"
    return note


# ---------------------------------------------------------------- jobs

def train_emulator_job(*, flux: str | os.PathLike, ivar: str | os.PathLike,
                       table: str | os.PathLike, trainset_table: str | os.PathLike,
                       labels: Sequence[str], cfg: Mapping[str, Any],
                       grid_cfg: Mapping[str, Any], lines: pd.DataFrame | None,
                       out_dir: str | os.PathLike, log: Log, threads: int | None,
                       metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Train the emulator on the observed `train` rows of the trainset (the clean stage's kept
    stars, catalogue labels); its `valid` rows give the validation χ². Writes the model folder
    (model.pt, model.json side-car, history.csv) and returns the side-car."""
    from ..members import training_set_hash

    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(cfg["device"])
    grid = _grid_of(table, grid_cfg)
    train_rows = training_rows(trainset_table, labels, "train")
    valid_rows = training_rows(trainset_table, labels, "valid")
    if len(train_rows) < 2 * len(labels) + 2:
        raise ValueError(f"{trainset_table}: {len(train_rows)} observed train rows with finite "
                         f"labels and errors; too few to train an emulator")
    say(log, f"emulator: {cfg['emulator']['kind']} on {len(train_rows)} train spectra "
             f"({len(valid_rows)} valid), {grid.n_pixels} pixels, device {device}")
    train = _training_set(flux, ivar, train_rows, labels, device)
    valid = _training_set(flux, ivar, valid_rows, labels, device)
    emulator, history, summary = train_emulator(
        train, valid, dict(cfg["emulator"]), labels=list(labels),
        wavelength=grid.wavelength_air, lines=lines, log=lambda m: say(log, m))
    inputs = emulator.n_labels
    meta = dict(metadata, kind=emulator.kind, labels=list(labels), n_pixels=grid.n_pixels,
                latent_nuisances=inputs - len(labels),
                label_low=emulator.unscale(-torch.ones(inputs, device=device)).tolist(),
                label_high=emulator.unscale(torch.ones(inputs, device=device)).tolist(),
                architecture=emulator.architecture(), grid_hash=grid.hash(),
                grid={"segments": list(grid_cfg["segments"])},
                training_set_hash=training_set_hash(train.flux.cpu().numpy(),
                                                    train.labels.cpu().numpy(), list(labels)),
                n_train=len(train_rows), n_valid=len(valid_rows),
                train_spectrum_ids_hash=artifacts.config_hash(
                    {"ids": train_rows["spectrum_id"].astype(str).tolist()}),
                emulator=dict(cfg["emulator"]), **summary)
    save_emulator(out_dir, emulator.cpu(), meta, history)
    say(log, f"emulator: wrote {out_dir} (median s_λ {summary['median_s']:.2g}, validation "
             f"median χ²/pixel {summary['valid_chi2_red_median']:.3f})")
    return meta


def _network_labels(shards: Sequence[str | os.PathLike], rows: np.ndarray,
                    labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, uncertainties) of the network at matrix ``rows``, from prediction shards."""
    from ..catalog import merge_shards

    pred = merge_shards(list(shards)).set_index("row").loc[rows]
    values = pred[list(labels)].to_numpy(dtype=np.float64)
    errors = np.column_stack([network_errors(pred, label) for label in labels])
    return values, errors


def calibrate_refine_job(*, emulator_dir: str | os.PathLike, flux: str | os.PathLike,
                         ivar: str | os.PathLike, trainset_table: str | os.PathLike,
                         predictions: Sequence[str | os.PathLike], labels: Sequence[str],
                         cfg: Mapping[str, Any], out: str | os.PathLike, log: Log,
                         threads: int | None, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Refine the observed `valid` stars of the trainset (never trained on) from the network's
    labels and calibrate against their catalogue labels (:mod:`starlabels.refine.calibration`);
    writes the calibration JSON."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(cfg["device"])
    emulator, meta = load_emulator(emulator_dir, device)
    if list(meta["labels"]) != list(labels):
        raise ValueError(f"{emulator_dir} emulates {meta['labels']}, the experiment has {labels}")
    valid = training_rows(trainset_table, labels, "valid")
    if len(valid) < 3:
        raise ValueError(f"{trainset_table}: {len(valid)} observed valid rows with finite labels "
                         f"and errors; the refined labels cannot be calibrated")
    src = valid["source_row"].to_numpy()
    start_labels, start_errors = _network_labels(predictions, src, labels)
    nuis = nuisances(meta, cfg["fit"], device)
    f, iv = _rows(flux, src), _rows(ivar, src)
    ok = fittable(start_labels, iv, nuis.n_params(emulator.n_labels)) == ""
    batch = fit_batch_size(cfg["fit"], device)
    t0 = time.perf_counter()
    parts = []
    idx = np.flatnonzero(ok)
    for i in range(0, len(idx), batch):
        sel = idx[i:i + batch]
        prior = network_prior(start_labels[sel], start_errors[sel], cfg["fit"])
        parts.append(fit_rows(emulator, nuis, f[sel], iv[sel], start_labels[sel], cfg["fit"],
                              prior))
    refined = np.concatenate([p.labels for p in parts])
    formal = np.concatenate([p.errors for p in parts])
    chi2 = np.concatenate([p.chi2_red for p in parts])
    converged = np.concatenate([p.converged for p in parts])
    catalogue = valid[list(labels)].to_numpy(dtype=np.float64)[idx]
    catalogue_err = valid[[f"e_{label}" for label in labels]].to_numpy(dtype=np.float64)[idx]
    result = cal.calibrate(refined, formal, chi2, converged, catalogue, catalogue_err,
                           list(labels), cfg["calibration"], start_labels[idx],
                           start_errors[idx])
    result.update(metadata, n_not_fittable=int((~ok).sum()), fit_seconds=time.perf_counter() - t0,
                  emulator_training_set_hash=meta["training_set_hash"])
    artifacts.save_json(out, result)
    say(log, f"calibrate_refine: {len(idx)} valid stars in {result['fit_seconds']:.1f} s, "
             f"{result['n_converged']} converged; χ²/pixel flag above "
             f"{result['chi2_red_threshold']:.3f}; " + ", ".join(
                 f"{k}: slope {v['scale']['slope']:.3f}, a {v['errors']['a']:.2f}, "
                 f"b {v['errors']['b']:.3g}, ρ with the network {v['combination']['rho']:.2f}"
                 for k, v in result["labels"].items()))
    return result


def refine_job(*, emulator_dir: str | os.PathLike, calibration: str | os.PathLike,
               flux: str | os.PathLike, ivar: str | os.PathLike, table: str | os.PathLike,
               prediction: str | os.PathLike, shard: int, n_shards: int,
               labels: Sequence[str], cfg: Mapping[str, Any], out_table: str | os.PathLike,
               out_models: str | os.PathLike, log: Log, threads: int | None,
               metadata: Mapping[str, Any]) -> int:
    """Refine the stars of one prediction shard; writes the shard's table (rows in catalogue
    order: ``row``, ``spectrum_id``, ``<label>_refined``, ``<label>_refined_err`` (calibrated),
    ``<label>_refined_err_formal``, ``<label>_combined`` and ``<label>_combined_err`` (with the
    network's, :mod:`starlabels.refine.calibration`), ``refine_chi2_red``, ``refine_converged``,
    ``refine_unlike_training``, ``refine_n_iter``, ``refine_rv``, ``refine_note``) and its
    best-fit model spectra (float32 .npy, same rows; a star not fitted has NaN). Returns the
    number of stars fitted."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(cfg["device"])
    emulator, meta = load_emulator(emulator_dir, device)
    calib = artifacts.load_json(calibration)
    if calib.get("emulator_training_set_hash") != meta["training_set_hash"]:
        raise ValueError(f"{calibration} was fitted for another emulator than {emulator_dir}")
    table_hash = artifacts.table_metadata(table).get("grid_hash")
    if table_hash != meta["grid_hash"]:
        raise ValueError(f"{emulator_dir} emulates grid {meta['grid_hash']}, {table} is on "
                         f"{table_hash}")
    if list(meta["labels"]) != list(labels):
        raise ValueError(f"{emulator_dir} emulates {meta['labels']}, the experiment has {labels}")
    ids = artifacts.load_table(table, columns=["spectrum_id"])["spectrum_id"].astype(str)
    rows = shard_rows(len(ids), shard, n_shards)
    pred = artifacts.load_table(prediction)
    if not np.array_equal(pred["row"].to_numpy(), np.arange(rows.start, rows.stop)):
        raise ValueError(f"{prediction} does not hold rows {rows.start}..{rows.stop - 1} of "
                         f"shard {shard}/{n_shards}")
    start_all = pred[list(labels)].to_numpy(dtype=np.float64)
    err_all = np.column_stack([network_errors(pred, label) for label in labels])
    nuis = nuisances(meta, cfg["fit"], device)
    n_par = nuis.n_params(emulator.n_labels)
    batch = fit_batch_size(cfg["fit"], device)
    threshold = float(calib["chi2_red_threshold"])
    say(log, f"refine: shard {shard}/{n_shards}, {len(rows)} stars (rows {rows.start}.."
             f"{rows.stop - 1}), device {device}, batch {batch}, χ²/pixel flag above "
             f"{threshold:.3f}")
    t0 = time.perf_counter()
    n_fit = 0
    with artifacts.MatrixRowReader(flux, batch) as fr, artifacts.MatrixRowReader(ivar, batch) as ir, \
            artifacts.matrix_row_writer(out_models, len(rows), int(meta["n_pixels"])) as write_model, \
            artifacts.open_table_writer(out_table, dict(metadata, labels=list(labels),
                                                        chi2_red_threshold=threshold)) as write:
        for b0 in range(rows.start, max(rows.stop, rows.start + 1), batch):
            b1 = min(b0 + batch, rows.stop)
            local = slice(b0 - rows.start, b1 - rows.start)
            f, iv = fr.read(b0, b1), ir.read(b0, b1)
            start, errs = start_all[local], err_all[local]
            note = fittable(start, iv, n_par)
            ok = np.flatnonzero(note == "")
            frame = _empty_frame(b0, b1, ids, labels)
            models = np.full((b1 - b0, f.shape[1]), np.nan, dtype=np.float32)
            if ok.size:
                prior = network_prior(start[ok], errs[ok], cfg["fit"])
                res = fit_rows(emulator, nuis, f[ok], iv[ok], start[ok], cfg["fit"], prior)
                _fill(frame, ok, res, labels, calib, threshold, start[ok], errs[ok])
                models[ok] = res.model
                n_fit += ok.size
            frame["refine_note"] = note
            write(frame)
            write_model(models)
            done = b1 - rows.start
            if done and (done // batch) % 10 == 0 or b1 == rows.stop:
                rate = n_fit / max(time.perf_counter() - t0, 1e-9)
                say(log, f"refine: {done}/{len(rows)} stars, {rate:.1f} stars/s")
    say(log, f"refine: shard {shard}: {n_fit} stars fitted, {len(rows) - n_fit} not "
             f"(see refine_note) in {time.perf_counter() - t0:.1f} s")
    return n_fit


def _empty_frame(b0: int, b1: int, ids: pd.Series, labels: Sequence[str]) -> pd.DataFrame:
    n = b1 - b0
    frame = pd.DataFrame({"row": np.arange(b0, b1, dtype=np.int64),
                          "spectrum_id": ids.iloc[b0:b1].to_numpy()})
    for label in labels:
        for suffix in ("refined", "refined_err", "refined_err_formal", "combined",
                       "combined_err"):
            frame[f"{label}_{suffix}"] = np.full(n, np.nan)
    frame["refine_chi2_red"] = np.full(n, np.nan)
    frame["refine_converged"] = np.zeros(n, dtype=bool)
    frame["refine_unlike_training"] = np.zeros(n, dtype=bool)
    frame["refine_n_iter"] = np.zeros(n, dtype=np.int32)
    frame["refine_rv"] = np.full(n, np.nan)
    return frame


def _fill(frame: pd.DataFrame, ok: np.ndarray, res: FitResult, labels: Sequence[str],
          calib: Mapping[str, Any], threshold: float, network: np.ndarray,
          network_err: np.ndarray) -> None:
    """Calibrated labels and errors, their combination with the network's (``network``,
    ``network_err``: its labels and errors of the fitted rows), χ², convergence and the flag
    of the fitted rows."""
    formal = res.errors
    chi2 = res.chi2_red
    unlike = ~(chi2 <= threshold)
    # a fit that did not converge or is unlike the training set leaves the network's label
    trusted = res.converged & ~unlike
    for k, label in enumerate(labels):
        c = calib["labels"][label]
        value = cal.apply_scale(res.labels[:, k], c["scale"])
        error = cal.calibrated_errors(formal[:, k], c["errors"], c["scale"]["slope"])
        frame.loc[ok, f"{label}_refined"] = value
        frame.loc[ok, f"{label}_refined_err"] = error
        frame.loc[ok, f"{label}_refined_err_formal"] = formal[:, k]
        frame.loc[ok, f"{label}_combined"], frame.loc[ok, f"{label}_combined_err"] = \
            cal.combine(network[:, k], network_err[:, k], np.where(trusted, value, np.nan),
                        error, c["combination"]["rho"])
    frame.loc[ok, "refine_chi2_red"] = chi2
    frame.loc[ok, "refine_converged"] = res.converged
    frame.loc[ok, "refine_unlike_training"] = unlike
    frame.loc[ok, "refine_n_iter"] = res.n_iter.astype(np.int32)
    frame.loc[ok, "refine_rv"] = res.rv
