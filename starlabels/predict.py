"""Apply a trained ensemble to a flux matrix: per-shard label catalogs and network gradients.

- :func:`select_members` keeps the members whose validation loss is within a quantile of all
  (the group's practice: train many, keep those below the 80th percentile).
- :func:`iter_shard_predictions` streams one shard of a memory-mapped flux matrix through every
  kept member, one batch at a time, and yields label = ensemble mean, ``<label>_std`` = scatter
  across members in chunks; :func:`write_shard_chunks` writes them to Parquet as they come, so
  a job's memory is flat in the shard size (:func:`predict_shard` gathers them into one frame).
- :func:`input_gradients` gives the mean |∂label/∂flux| per pixel in physical units — the
  "network gradients" figure that shows which lines the network reads.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from . import artifacts
from .train import META_FILE, load_member, resolve_device, say

ModelDir = str | os.PathLike


def select_members(model_dirs: Sequence[ModelDir], keep_quantile: float = 1.0) -> list[ModelDir]:
    """Members whose ``best_valid_loss`` ≤ the ``keep_quantile`` quantile of all members' losses.

    1.0 keeps every member, 0.8 is the group's 80th-percentile cut, 0.0 keeps the best one(s).
    Members whose loss is not finite are dropped. Input order is preserved.
    """
    if not 0.0 <= float(keep_quantile) <= 1.0:
        raise ValueError(f"keep_quantile must be in [0, 1], got {keep_quantile}")
    if len(model_dirs) == 0:
        raise ValueError("no model folders given")
    losses = np.array([float(artifacts.load_json(Path(d) / META_FILE)["best_valid_loss"])
                       for d in model_dirs])
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError(f"no member has a finite best_valid_loss: {list(map(str, model_dirs))}")
    threshold = np.quantile(losses[finite], float(keep_quantile))
    # The quantile of the losses themselves is always ≥ the smallest, so one member always passes.
    return [d for d, loss, ok in zip(model_dirs, losses, finite) if ok and loss <= threshold]


def _load_ensemble(model_dirs: Sequence[ModelDir], device: torch.device
                   ) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Load every member and check they predict the same labels from the same pixels."""
    if len(model_dirs) == 0:
        raise ValueError("no model folders given")
    members = [load_member(d, device) for d in model_dirs]
    first_dir, (_, first) = model_dirs[0], members[0]
    for d, (_, meta) in zip(model_dirs, members):
        for key in ("labels", "n_pixels", "grid_hash"):
            if meta[key] != first[key]:
                raise ValueError(f"ensemble members disagree on {key}: {d} has {meta[key]!r}, "
                                 f"{first_dir} has {first[key]!r}")
    return members


def _label_scaling(meta: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(label_min, label_max − label_min) as float64 tensors: scaled → physical = min + span·y."""
    low = torch.tensor(meta["label_min"], dtype=torch.float64, device=device)
    span = torch.tensor(meta["label_max"], dtype=torch.float64, device=device) - low
    return low, span


def open_shard_inputs(flux_path: str | os.PathLike, table_path: str | os.PathLike, shard: int,
                      n_shards: int, batch_size: int, device: str, threads: int | None
                      ) -> tuple[torch.device, pa.Table, str | None, np.ndarray]:
    """Checked arguments and opened inputs of one prediction shard, for every method:
    (device, the table's spectrum ids as an Arrow table — compact, sliced without copying —,
    its grid hash, the memory-mapped flux matrix)."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need 0 <= shard < n_shards")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    table = pq.read_table(table_path, columns=["spectrum_id"])
    flux = artifacts.load_matrix(flux_path)
    if flux.ndim != 2 or flux.shape[0] != len(table):
        raise ValueError(f"{flux_path}: flux matrix shape {flux.shape} does not match the table's "
                         f"{len(table)} rows")
    return (resolve_device(device), table, artifacts.table_metadata(table_path).get("grid_hash"),
            flux)


def shard_rows(n_rows: int, shard: int, n_shards: int) -> range:
    """Matrix rows of shard ``shard``: contiguous, sizes differing by at most one (as
    ``np.array_split``)."""
    size, extra = divmod(n_rows, n_shards)
    start = shard * size + min(shard, extra)
    return range(start, start + size + (1 if shard < extra else 0))


#: rows per streamed chunk (one Parquet row group): bounds a predict job's memory whatever the
#: shard size — a chunk's table is a few MB
CHUNK_ROWS = 65_536


def iter_shard_predictions(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                           model_dirs: Sequence[ModelDir], shard: int, n_shards: int,
                           batch_size: int = 512, device: str = "auto",
                           log: Callable[[str], Any] = print, threads: int | None = None,
                           chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Ensemble labels for shard ``shard`` of ``n_shards`` (contiguous matrix rows), yielded as
    consecutive chunks of about ``chunk_rows`` rows (at least one chunk, maybe empty).

    Columns: spectrum_id, row, then ``<label>`` (ensemble mean) and ``<label>_std`` (scatter across
    members, ddof=0) per label, then n_members. Each chunk's ``attrs`` carry grid_hash, labels,
    shard, n_shards and members. A chunk is a whole number of batches, so the batches — and the
    numbers — are the same whatever ``chunk_rows`` is. Inference runs in fp32 even on CUDA: bf16
    outputs would quantise labels to ~0.4 % of their range.
    """
    device, table, table_grid, flux = open_shard_inputs(flux_path, table_path, shard, n_shards,
                                                        batch_size, device, threads)
    members = _load_ensemble(model_dirs, device)
    for d, (_, meta) in zip(model_dirs, members):
        if meta["grid_hash"] != table_grid:
            raise ValueError(f"model {d} was trained on wavelength grid {meta['grid_hash']} but "
                             f"{table_path} is on grid {table_grid}")
        if int(meta["n_pixels"]) != flux.shape[1]:
            raise ValueError(f"model {d} expects {meta['n_pixels']} pixels but {flux_path} has "
                             f"{flux.shape[1]}")
    labels = list(members[0][1]["labels"])
    scalings = [_label_scaling(meta, device) for _, meta in members]
    attrs = {"grid_hash": table_grid, "labels": labels, "shard": int(shard),
             "n_shards": int(n_shards), "members": [str(d) for d in model_dirs]}
    spectrum_ids = table.column("spectrum_id")
    del flux  # rows are read through MatrixRowReader, never through the memory map

    rows = shard_rows(len(table), shard, n_shards)
    n_rows = len(rows)
    per_chunk = max(1, int(chunk_rows) // batch_size) * batch_size
    n_batches = math.ceil(n_rows / batch_size)
    log_every = max(1, n_batches // 10)
    say(log, f"shard {shard}/{n_shards}: {n_rows} spectra (rows {rows.start}..{rows.stop - 1}), "
              f"{len(members)} member(s), device {device}")
    start_time = time.perf_counter()
    batch_index = 0
    with torch.inference_mode(), artifacts.MatrixRowReader(flux_path, batch_size) as reader:
        for chunk_start in range(0, max(n_rows, 1), per_chunk):
            chunk_stop = min(chunk_start + per_chunk, n_rows)
            n_chunk = chunk_stop - chunk_start
            mean = np.empty((n_chunk, len(labels)), dtype=np.float64)
            std = np.empty((n_chunk, len(labels)), dtype=np.float64)
            for start in range(chunk_start, chunk_stop, batch_size):
                stop = min(start + batch_size, chunk_stop)
                # one read per batch into a reused buffer, the only flux held in memory (no
                # memory-map pages accumulate in the job's RSS)
                x = torch.from_numpy(reader.read(rows[start], rows[stop - 1] + 1)).to(device)
                physical = torch.stack([model(x).double() * span + low
                                        for (model, _), (low, span) in zip(members, scalings)])
                mean[start - chunk_start:stop - chunk_start] = physical.mean(dim=0).cpu().numpy()
                std[start - chunk_start:stop - chunk_start] = \
                    physical.std(dim=0, correction=0).cpu().numpy()
                batch_index += 1
                if batch_index % log_every == 0 or batch_index == n_batches:
                    elapsed = time.perf_counter() - start_time
                    say(log, f"shard {shard}: {stop}/{n_rows} spectra, "
                              f"{stop / max(elapsed, 1e-9):.0f} spectra/s, {elapsed:.1f} s")
            first = rows.start + chunk_start
            columns: dict[str, Any] = {
                "spectrum_id": spectrum_ids.slice(first, n_chunk).to_numpy(
                    zero_copy_only=False).astype(str),
                "row": np.arange(first, first + n_chunk, dtype=np.int64)}
            for j, name in enumerate(labels):
                columns[name] = mean[:, j]
                columns[f"{name}_std"] = std[:, j]
            columns["n_members"] = np.full(n_chunk, len(members), dtype=np.int64)
            chunk = pd.DataFrame(columns)
            chunk.attrs.update(attrs)
            yield chunk


def predict_shard(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                  model_dirs: Sequence[ModelDir], shard: int, n_shards: int,
                  batch_size: int = 512, device: str = "auto",
                  log: Callable[[str], Any] = print, threads: int | None = None) -> pd.DataFrame:
    """The whole shard of :func:`iter_shard_predictions` as one frame (``df.attrs`` carries
    grid_hash, labels, members). The workflow streams the chunks to disk instead
    (:func:`write_shard_chunks`), so a job's memory does not grow with its shard."""
    chunks = list(iter_shard_predictions(flux_path, table_path, model_dirs, shard, n_shards,
                                         batch_size=batch_size, device=device, log=log,
                                         threads=threads))
    df = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    df.attrs = dict(chunks[0].attrs)
    return df


def write_shard_chunks(chunks: Iterator[pd.DataFrame], path: str | os.PathLike,
                       meta: Mapping[str, Any] | None = None) -> int:
    """Stream predicted chunks into one Parquet shard (a row group each), atomically; metadata =
    the chunks' attrs + ``meta``, as :func:`write_shard`. Returns the number of rows written."""
    first = next(chunks)
    n_rows = len(first)
    with artifacts.open_table_writer(path, {**first.attrs, **dict(meta or {})}) as write:
        write(first)
        for chunk in chunks:
            write(chunk)
            n_rows += len(chunk)
    return n_rows


def _point_estimate_fn(model: nn.Module, meta: Mapping[str, Any], device: torch.device
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """flux → (batch, n_labels) point estimates: the regression output itself, or for deep_remap
    the probability-weighted mean of each calibrated head (so gradients are in label units)."""
    if meta.get("method") != "deep_remap":
        return model
    centres = [torch.as_tensor(b["low"] + b["width"] * (np.arange(b["n_bins"]) + 0.5),
                               dtype=torch.float32, device=device) for b in meta["bins"]]
    temperatures = [float(t) for t in meta["temperatures"]]

    def expected(x: torch.Tensor) -> torch.Tensor:
        logits, _ = model(x)
        return torch.stack([torch.softmax(lg / t, dim=1) @ c
                            for lg, t, c in zip(logits, temperatures, centres)], dim=1)
    return expected


def input_gradients(model_dirs: Sequence[ModelDir], flux_rows: np.ndarray, device: str = "cpu",
                    batch_size: int = 256) -> np.ndarray:
    """Mean over spectra and members of |∂label/∂flux|, shape (n_labels, n_pixels), physical units.

    The networks output scaled labels y = (label − min)/(max − min), so ∂label/∂flux =
    (max − min)·∂y/∂flux. Evaluated in eval mode (no dropout). Per-spectrum gradients come from the
    gradient of the batch sum, exact because no layer mixes spectra within a batch.
    """
    device = resolve_device(device)
    flux_rows = np.array(flux_rows, dtype=np.float32)  # a writable copy (inputs may be memmaps)
    if flux_rows.ndim == 1:
        flux_rows = flux_rows[None, :]
    members = _load_ensemble(model_dirs, device)
    n_pixels = int(members[0][1]["n_pixels"])
    n_labels = len(members[0][1]["labels"])
    if flux_rows.ndim != 2 or flux_rows.shape[1] != n_pixels or flux_rows.shape[0] == 0:
        raise ValueError(f"flux_rows must have shape (n_spectra>0, {n_pixels}), "
                         f"got {flux_rows.shape}")
    total = torch.zeros((n_labels, n_pixels), dtype=torch.float64, device=device)
    with torch.enable_grad():
        for model, meta in members:
            model.requires_grad_(False)  # gradients with respect to the flux only
            point_estimate = _point_estimate_fn(model, meta, device)
            _, span = _label_scaling(meta, device)
            if meta.get("method") == "deep_remap":
                span = torch.ones_like(span)  # its point estimates are already physical
            for start in range(0, flux_rows.shape[0], batch_size):
                x = torch.from_numpy(flux_rows[start:start + batch_size]).to(device)
                x.requires_grad_(True)
                out = point_estimate(x)
                for j in range(n_labels):
                    (grad,) = torch.autograd.grad(out[:, j].sum(), x,
                                                  retain_graph=j < n_labels - 1)
                    total[j] += grad.abs().sum(dim=0).double() * span[j]
    return (total / (flux_rows.shape[0] * len(members))).cpu().numpy()


def write_shard(df: pd.DataFrame, path: str | os.PathLike,
                meta: Mapping[str, Any] | None = None) -> None:
    """Write a shard table as Parquet; metadata = the frame's attrs (grid, members) + ``meta``."""
    artifacts.save_table(path, df, {**df.attrs, **dict(meta or {})})
