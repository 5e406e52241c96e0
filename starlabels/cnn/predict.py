"""Apply a regression-CNN ensemble to a flux matrix: per-shard label catalogues.

- :func:`iter_shard_predictions` streams one shard of a memory-mapped flux matrix (and the ivar
  matrix, for members that read the noise) through every kept member, one batch at a time, and
  yields per label the ensemble mean, the calibrated uncertainty ``<label>_err``, the raw total
  ``<label>_err_raw`` and the members' disagreement ``<label>_err_members``
  (:mod:`starlabels.cnn.ensemble`, :mod:`starlabels.cnn.calibration`) in chunks;
  :func:`write_shard_chunks` writes them to Parquet as they come, so a job's memory is flat in
  the shard size (:func:`predict_shard` gathers them into one frame).
- :func:`point_estimate` is the labels as a function of the flux, in physical units (for the
  network-gradient figure).

Which members predict (:func:`starlabels.members.select_members`) and the shard's inputs are
shared with the other methods (:mod:`starlabels.members`).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import nn

from .. import artifacts
from ..batch import say
from ..members import ModelDir, label_scaling, load_ensemble, open_shard_inputs, shard_rows
from .calibration import calibrated_error, calibrated_mean, load_calibration
from .ensemble import combine, member_outputs, reads_noise


#: rows per streamed chunk (one Parquet row group): bounds a predict job's memory whatever the
#: shard size — a chunk's table is a few MB
CHUNK_ROWS = 65_536
#: the per-label columns of a shard besides the label itself, in order
ERROR_COLUMNS = ("err", "err_raw", "err_members")


def iter_shard_predictions(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                           model_dirs: Sequence[ModelDir], shard: int, n_shards: int,
                           batch_size: int = 512, device: str = "auto",
                           log: Callable[[str], Any] = print, threads: int | None = None,
                           chunk_rows: int = CHUNK_ROWS,
                           ivar_path: str | os.PathLike | None = None,
                           calibration: Mapping[str, Any] | None = None
                           ) -> Iterator[pd.DataFrame]:
    """Ensemble labels for shard ``shard`` of ``n_shards`` (contiguous matrix rows), yielded as
    consecutive chunks of about ``chunk_rows`` rows (at least one chunk, maybe empty).

    Columns: spectrum_id, row, then per label ``<label>`` (ensemble mean; mapped back onto the
    catalogue's scale where the calibration says so), ``<label>_err``
    (``calibration``'s factor × raw; without a calibration, the raw value), ``<label>_err_raw``
    and ``<label>_err_members``, then n_members. Each chunk's ``attrs`` carry grid_hash, labels,
    shard, n_shards, members and whether the errors are calibrated. A chunk is a whole number of
    batches, so the batches — and the numbers — are the same whatever ``chunk_rows`` is.
    """
    device, table, table_grid, flux = open_shard_inputs(flux_path, table_path, shard, n_shards,
                                                        batch_size, device, threads)
    members = load_ensemble(model_dirs, device)
    for d, (_, meta) in zip(model_dirs, members):
        if meta["grid_hash"] != table_grid:
            raise ValueError(f"model {d} was trained on wavelength grid {meta['grid_hash']} but "
                             f"{table_path} is on grid {table_grid}")
        if int(meta["n_pixels"]) != flux.shape[1]:
            raise ValueError(f"model {d} expects {meta['n_pixels']} pixels but {flux_path} has "
                             f"{flux.shape[1]}")
    labels = list(members[0][1]["labels"])
    noise = reads_noise(members)
    if noise and ivar_path is None:
        raise ValueError("these members read the inverse variances: give the ivar matrix")
    snr = None
    if calibration is not None:
        names = pq.read_schema(table_path).names
        snr = (pq.read_table(table_path, columns=["snr"]).column("snr").to_numpy()
               .astype(np.float64) if "snr" in names else np.full(len(table), np.nan))
    attrs = {"grid_hash": table_grid, "labels": labels, "shard": int(shard),
             "n_shards": int(n_shards), "members": [str(d) for d in model_dirs],
             "calibrated": calibration is not None}
    spectrum_ids = table.column("spectrum_id")
    del flux  # rows are read through MatrixRowReader, never through the memory map

    rows = shard_rows(len(table), shard, n_shards)
    n_rows = len(rows)
    per_chunk = max(1, int(chunk_rows) // batch_size) * batch_size
    n_batches = math.ceil(n_rows / batch_size)
    log_every = max(1, n_batches // 10)
    say(log, f"shard {shard}/{n_shards}: {n_rows} spectra (rows {rows.start}..{rows.stop - 1}), "
              f"{len(members)} member(s), device {device}, errors "
              + ("calibrated" if calibration is not None else "uncalibrated"))
    start_time = time.perf_counter()
    batch_index = 0
    with torch.inference_mode(), artifacts.MatrixRowReader(flux_path, batch_size) as reader, \
            (artifacts.MatrixRowReader(ivar_path, batch_size) if noise
             else _NoReader()) as ivar_reader:
        for chunk_start in range(0, max(n_rows, 1), per_chunk):
            chunk_stop = min(chunk_start + per_chunk, n_rows)
            n_chunk = chunk_stop - chunk_start
            out = {key: np.empty((n_chunk, len(labels)), dtype=np.float64)
                   for key in ("mean", "err_raw", "err_members")}
            for start in range(chunk_start, chunk_stop, batch_size):
                stop = min(start + batch_size, chunk_stop)
                # one read per batch into a reused buffer, the only flux held in memory (no
                # memory-map pages accumulate in the job's RSS)
                x = torch.from_numpy(reader.read(rows[start], rows[stop - 1] + 1)).to(device)
                v = (torch.from_numpy(ivar_reader.read(rows[start], rows[stop - 1] + 1))
                     .to(device) if noise else None)
                combined = combine(*member_outputs(members, x, v))
                for key in out:
                    out[key][start - chunk_start:stop - chunk_start] = combined[key]
                batch_index += 1
                if batch_index % log_every == 0 or batch_index == n_batches:
                    elapsed = time.perf_counter() - start_time
                    say(log, f"shard {shard}: {stop}/{n_rows} spectra, "
                              f"{stop / max(elapsed, 1e-9):.0f} spectra/s, {elapsed:.1f} s")
            first = rows.start + chunk_start
            out["mean"] = calibrated_mean(out["mean"], calibration, labels)
            err = calibrated_error(out["err_raw"],
                                   None if snr is None else snr[first:first + n_chunk],
                                   calibration, labels)
            columns: dict[str, Any] = {
                "spectrum_id": spectrum_ids.slice(first, n_chunk).to_numpy(
                    zero_copy_only=False).astype(str),
                "row": np.arange(first, first + n_chunk, dtype=np.int64)}
            for j, name in enumerate(labels):
                columns[name] = out["mean"][:, j]
                columns[f"{name}_err"] = err[:, j]
                columns[f"{name}_err_raw"] = out["err_raw"][:, j]
                columns[f"{name}_err_members"] = out["err_members"][:, j]
            columns["n_members"] = np.full(n_chunk, len(members), dtype=np.int64)
            chunk = pd.DataFrame(columns)
            chunk.attrs.update(attrs)
            yield chunk


class _NoReader:
    """Stands in for the ivar reader when no member reads the noise."""

    def __enter__(self) -> "_NoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def predict_shard(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                  model_dirs: Sequence[ModelDir], shard: int, n_shards: int,
                  batch_size: int = 512, device: str = "auto",
                  log: Callable[[str], Any] = print, threads: int | None = None,
                  ivar_path: str | os.PathLike | None = None,
                  calibration: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The whole shard of :func:`iter_shard_predictions` as one frame (``df.attrs`` carries
    grid_hash, labels, members). The workflow streams the chunks to disk instead
    (:func:`write_shard_chunks`), so a job's memory does not grow with its shard."""
    chunks = list(iter_shard_predictions(flux_path, table_path, model_dirs, shard, n_shards,
                                         batch_size=batch_size, device=device, log=log,
                                         threads=threads, ivar_path=ivar_path,
                                         calibration=calibration))
    df = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    df.attrs = dict(chunks[0].attrs)
    return df


def write_shard_chunks(chunks: Iterator[pd.DataFrame], path: str | os.PathLike,
                       meta: Mapping[str, Any] | None = None) -> int:
    """Stream predicted chunks into one Parquet shard (a row group each), atomically; metadata =
    the chunks' attrs + ``meta``, as :func:`starlabels.members.write_shard`. Returns the number of rows written."""
    first = next(chunks)
    n_rows = len(first)
    with artifacts.open_table_writer(path, {**first.attrs, **dict(meta or {})}) as write:
        write(first)
        for chunk in chunks:
            write(chunk)
            n_rows += len(chunk)
    return n_rows


def point_estimate(model: nn.Module, meta: Mapping[str, Any], device: torch.device
                   ) -> tuple[Callable[..., torch.Tensor], torch.Tensor]:
    """(a function (flux, ivar=None) → (batch, n_labels) scaled label means, the span that
    turns them into label units)."""
    def means(flux: torch.Tensor, ivar: torch.Tensor | None = None) -> torch.Tensor:
        return model.split(model(flux, ivar if model.noise_channel else None))[0]
    return means, label_scaling(meta, device)[1]


def predict_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
                table: str | os.PathLike, members: Sequence[ModelDir], shard: int, n_shards: int,
                batch_size: int, device: str, out: str | os.PathLike, metadata: Mapping[str, Any],
                log: Callable[[str], Any], threads: int | None,
                ensemble_calibration: str | None) -> int:
    """One shard of the workflow's predict rule; returns the rows written. Chunks go to disk as
    they are predicted, so memory does not grow with the shard. With an ensemble calibration
    file its factors turn the raw errors into ``<label>_err``."""
    calibration = load_calibration(ensemble_calibration, members)
    chunks = iter_shard_predictions(flux, table, members, shard, n_shards,
                                    batch_size=batch_size, device=device, log=log,
                                    threads=threads, ivar_path=ivar, calibration=calibration)
    return write_shard_chunks(chunks, out, metadata)
