"""Train one regression-CNN member: a network mapping normalised flux to min–max scaled labels.

One call of :func:`train_member` is one Snakemake job. It
- picks the training and validation spectra (split column, t-SNE ``keep`` flags, finite labels),
- seeds everything from ``cfg["seed"] + member`` so a member is reproducible bit for bit on CPU,
- trains with Adam on MSE of scaled labels plus an L2 penalty on the convolution kernels,
- stops early on the validation loss and restores the best epoch,
- writes a model folder: ``model.pt`` (weights + plain metadata), ``model.json`` (the same metadata
  plus provenance, written last so its presence means the folder is complete) and ``history.csv``.

On CUDA the training and validation spectra stay resident on the GPU when they fit
(``resident: auto`` compares their size with ``torch.cuda.mem_get_info()``); otherwise they stay
in host memory and each batch is gathered into pinned memory and copied with
``non_blocking=True``. ``compile: true`` wraps the network in ``torch.compile`` for the training
steps on CUDA (skipped, with a log line, on CPU); saved weights always come from the original
module, so their key names never change.

``cfg`` is the experiment's ``train`` section plus its ``method``; the optional keys it leaves out
(placement, compile, schedule, checkpoints) take the configuration schema's defaults.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import artifacts, config
from ..batch import say
from ..labels import check_labels
from ..members import (CHECKPOINT_NAME, RESIDENT_CHOICES, keep_resident, load_checkpoint, plain,
                       save_checkpoint, start_member, to_device_rows, training_inputs,
                       training_precision, training_set_hash, write_model_folder)
from ..models import build_model, conv_l2_penalty

REQUIRED_CONFIG = ("seed", "device", "epochs", "batch_size", "learning_rate", "patience",
                   "conv_l2", "architecture", "method", "min_delta")


# ---------------------------------------------------------------- which spectra

def load_keep(keep_path_or_array: str | os.PathLike | np.ndarray | Sequence[bool],
              n_rows: int) -> np.ndarray:
    """The t-SNE clean stage's keep flags as a boolean array of length ``n_rows``.

    Accepts an array, a ``.npy`` file, or a Parquet table with a boolean ``keep`` column.
    """
    if isinstance(keep_path_or_array, (str, os.PathLike)):
        path = Path(keep_path_or_array)
        if path.suffix == ".parquet":
            keep = artifacts.load_table(path, columns=["keep"])["keep"].to_numpy()
        else:
            keep = np.load(path, allow_pickle=False)
    else:
        keep = np.asarray(keep_path_or_array)
    keep = np.asarray(keep).reshape(-1)
    if keep.dtype != bool:
        # Integer 0/1 flags are unambiguous; anything else (floats, strings) is a wrong file.
        if np.issubdtype(keep.dtype, np.integer) and np.isin(keep, (0, 1)).all():
            keep = keep.astype(bool)
        else:
            raise ValueError(f"keep flags must be boolean, got dtype {keep.dtype}")
    if keep.size != n_rows:
        raise ValueError(f"keep flags have {keep.size} entries but the table has {n_rows} rows")
    return keep


def select_rows(table: pd.DataFrame, keep: np.ndarray, labels: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Matrix rows for training and validation: right split, kept by t-SNE, all labels finite."""
    missing = [name for name in labels if name not in table.columns]
    if missing or "split" not in table.columns:
        raise ValueError(f"table lacks column(s) {missing + ([] if 'split' in table else ['split'])}")
    finite = np.isfinite(table[list(labels)].to_numpy(dtype=np.float64)).all(axis=1)
    split = table["split"].astype(str).to_numpy()
    usable = keep & finite
    train = np.flatnonzero((split == "train") & usable)
    valid = np.flatnonzero((split == "valid") & usable)
    for name, rows in (("train", train), ("valid", valid)):
        if rows.size == 0:
            raise ValueError(
                f"no usable {name!r} spectra: {int((split == name).sum())} rows have split={name!r}, "
                f"{int(((split == name) & keep).sum())} of them kept by t-SNE, "
                f"{int(((split == name) & usable).sum())} also with finite {list(labels)}")
    return train, valid


def _checked_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training config with the optional keys (placement, compile, schedule, checkpoints)
    completed from the schema's ``train`` section; the keys of :data:`REQUIRED_CONFIG` must be
    given, and every value must be usable."""
    missing = [key for key in REQUIRED_CONFIG if key not in cfg]
    if missing:
        raise ValueError(f"training config lacks key(s) {missing}; required: {list(REQUIRED_CONFIG)}")
    cfg = config.section("train", cfg)
    for key in ("epochs", "batch_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"training config: {key} must be >= 1, got {cfg[key]}")
    if int(cfg["patience"]) < 1:
        raise ValueError(f"training config: patience must be >= 1, got {cfg['patience']}")
    if cfg["resident"] not in RESIDENT_CHOICES:
        raise ValueError(f"training config: resident {cfg['resident']!r}: choose one of "
                         f"{list(RESIDENT_CHOICES)}")
    if not isinstance(cfg["compile"], bool):
        raise ValueError(f"training config: compile must be true or false, got "
                         f"{cfg['compile']!r}")
    return cfg


# ---------------------------------------------------------------- evaluation

@torch.inference_mode()
def predict_scaled(model: nn.Module, flux: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Scaled-label predictions in fp32, in eval mode (no dropout), batch by batch.

    No autocast here: a bf16 output carries only ~3 significant digits, i.e. ~0.4 % of the label
    range (≈12 K in Teff) — too coarse for validation losses that decide early stopping.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # host-resident flux (resident: never / too large) moves one slice at a time; a slice of a
    # pinned tensor is pinned, so the copy is asynchronous
    out = [model(flux[start:start + batch_size].to(device, non_blocking=flux.is_pinned())).float()
           for start in range(0, flux.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _valid_loss(model: nn.Module, flux: torch.Tensor, scaled: torch.Tensor,
                batch_size: int) -> tuple[float, np.ndarray]:
    """(MSE over all labels, per-label MSE) on scaled labels."""
    squared = (predict_scaled(model, flux, batch_size) - scaled).pow(2)
    per_label = squared.mean(dim=0).cpu().numpy().astype(np.float64)
    return float(per_label.mean()), per_label


# ---------------------------------------------------------------- training

def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, flux: torch.Tensor,
              scaled_labels: torch.Tensor, batch_size: int, conv_l2: float,
              shuffle_generator: torch.Generator,
              forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
              resident: bool = True) -> float:
    """One pass over the training spectra in a fresh seeded order; returns their mean MSE.

    When the spectra sit on the device as one tensor, a batch is an index gather — no
    DataLoader, no per-spectrum Python work. With ``resident=False`` ``flux`` stays in host
    memory and each batch is gathered there and copied to the labels' device
    (:func:`to_device_rows`); the batches, their order and the arithmetic are the same.
    ``forward`` (default ``model``) runs the network, e.g. a ``torch.compile`` wrapper of it.
    The returned MSE excludes the L2 penalty.
    """
    device = scaled_labels.device
    forward = model if forward is None else forward
    n_train = flux.shape[0]
    model.train()
    order = torch.randperm(n_train, generator=shuffle_generator)
    order_device = order.to(device)
    loss_sum = torch.zeros((), device=device)  # summed on the device: no GPU sync per batch
    for start in range(0, n_train, batch_size):
        batch = order_device[start:start + batch_size]
        x = flux[batch] if resident else \
            to_device_rows(flux, order[start:start + batch_size], device)
        with training_precision(device):
            predicted = forward(x)
        mse = F.mse_loss(predicted.float(), scaled_labels[batch])
        loss = (mse + conv_l2 * conv_l2_penalty(model).float()) if conv_l2 else mse
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += mse.detach() * batch.numel()
    return float(loss_sum) / n_train  # float() waits for the GPU once per epoch


def checkpoint_identity(train_hash: str, cfg: Mapping[str, Any], member: int) -> str:
    """What a checkpoint must match to be resumed: same training set, settings and member."""
    # where the spectra live does not change the arithmetic, and configs written before the
    # compile option existed must keep resuming: neither is part of the identity
    settings = {k: v for k, v in dict(cfg).items()
                if k not in ("checkpoint_every", "threads", "resident")
                and not (k == "compile" and not v)}
    return f"{train_hash}:{artifacts.config_hash(settings)}:{int(member)}"


def train_member(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                 keep_path_or_array: str | os.PathLike | np.ndarray, labels: list[str],
                 member: int, cfg: Mapping[str, Any], out_dir: str | os.PathLike,
                 log: Callable[[str], Any] = print, threads: int | None = None) -> dict[str, Any]:
    """Train ensemble member ``member`` and write its model folder to ``out_dir``.

    Returns the metadata written to ``model.json``.
    """
    cfg = _checked_config(cfg)
    labels = check_labels(list(labels))
    device, seed, shuffle_generator = start_member(cfg, member, threads)

    # ---- which spectra
    table, grid_hash, flux = training_inputs(flux_path, table_path)
    n_pixels = int(flux.shape[1])
    keep = load_keep(keep_path_or_array, len(table))
    train_rows, valid_rows = select_rows(table, keep, labels)
    label_values = table[labels].to_numpy(dtype=np.float64)

    # ---- read the training and validation spectra once (fancy indexing copies from the memmap)
    flux_train = np.ascontiguousarray(flux[train_rows], dtype=np.float32)
    flux_valid = np.ascontiguousarray(flux[valid_rows], dtype=np.float32)
    labels_train, labels_valid = label_values[train_rows], label_values[valid_rows]
    if not (np.isfinite(flux_train).all() and np.isfinite(flux_valid).all()):
        raise ValueError(f"{flux_path}: non-finite flux in training/validation rows; the normalize "
                         f"stage should have set masked pixels to 1.0")
    train_hash = training_set_hash(flux_train, labels_train, labels)

    # ---- min–max label scaling from the training spectra only
    label_min = labels_train.min(axis=0)
    label_max = labels_train.max(axis=0)
    span = label_max - label_min
    if not (span > 0).all():
        flat = [name for name, s in zip(labels, span) if not s > 0]
        raise ValueError(f"label(s) {flat} are constant over the training spectra; "
                         f"min–max scaling (and learning them) is impossible")
    data_bytes = flux_train.nbytes + flux_valid.nbytes
    resident = keep_resident(str(cfg["resident"]), device, data_bytes)
    if resident:
        x_train = torch.from_numpy(flux_train).to(device)
        x_valid = torch.from_numpy(flux_valid).to(device)
    else:
        # host memory: training batches are gathered into pinned buffers and copied
        # asynchronously; the validation set is pinned whole (it is read in contiguous slices)
        x_train = torch.from_numpy(flux_train)
        x_valid = torch.from_numpy(flux_valid)
        if device.type == "cuda":
            x_valid = x_valid.pin_memory()
    y_train = torch.from_numpy(((labels_train - label_min) / span).astype(np.float32)).to(device)
    y_valid = torch.from_numpy(((labels_valid - label_min) / span).astype(np.float32)).to(device)
    del flux_train, flux_valid

    # ---- network and optimiser (built after seeding: initial weights depend on the seed only)
    model = build_model(cfg["method"], n_pixels, len(labels), cfg["architecture"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["learning_rate"]))
    # 'cosine' anneals the rate to ~0 over `epochs` (one half cosine): large early steps, fine
    # late ones, so a fixed epoch budget converges further than a constant rate
    schedule = cfg["lr_schedule"]
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule {schedule!r}: choose 'constant' or 'cosine'")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(cfg["epochs"]))
                 if schedule == "cosine" else None)
    batch_size = int(cfg["batch_size"])
    # Large inference batches help a GPU but hurt a CPU: activations of 8 × n_pixels per spectrum
    # stop fitting in cache (batch 512 predicts ~3× slower than 64 at 8000 pixels on one core).
    eval_batch = batch_size if device.type == "cpu" else max(batch_size, 1024)
    conv_l2 = float(cfg["conv_l2"])
    min_delta = float(cfg["min_delta"])
    patience = int(cfg["patience"])
    max_epochs = int(cfg["epochs"])
    n_train = int(train_rows.size)

    say(log, f"member {member}: {n_train} training / {valid_rows.size} validation spectra, "
              f"{n_pixels} pixels, labels {labels}, device {device}, seed {seed}, "
              f"{torch.get_num_threads()} CPU thread(s)")
    placement = ("resident on the device" if resident else
                 "kept in host memory, each batch gathered and copied over"
                 + (" from pinned memory (non_blocking)" if device.type == "cuda" else ""))
    say(log, f"member {member}: training + validation spectra {data_bytes / 2**30:.2f} GiB, "
              f"{placement} (resident: {cfg['resident']})")
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg["compile"]:
        if device.type == "cuda":
            # the compiled wrapper shares the module's parameters; weights are always saved from
            # `model` itself, so state_dict keys carry no '_orig_mod.' prefix
            forward = torch.compile(model)
            say(log, f"member {member}: torch.compile applied to the training steps")
        else:
            say(log, f"member {member}: compile: true is skipped on {device.type} (CUDA only); "
                     f"training runs uncompiled, exactly as with compile: false")

    best_loss, best_epoch, best_state = float("inf"), 0, None
    epochs_without_improvement = 0
    history: list[dict[str, float]] = []
    start_time = time.perf_counter()
    epoch = 0
    first_epoch = 1
    out_path = Path(out_dir)
    checkpoint_path = out_path / CHECKPOINT_NAME
    checkpoint_every = int(cfg["checkpoint_every"])
    identity = checkpoint_identity(train_hash, cfg, member)
    resumed = load_checkpoint(checkpoint_path, identity, log) if checkpoint_every else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resumed["scheduler"])
        best_state = resumed["best_state"]
        best_loss, best_epoch = float(resumed["best_loss"]), int(resumed["best_epoch"])
        epochs_without_improvement = int(resumed["epochs_without_improvement"])
        history = list(resumed["history"])
        torch.set_rng_state(resumed["torch_rng"])
        shuffle_generator.set_state(resumed["shuffle_rng"])
        if device.type == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"], device)
        first_epoch = int(resumed["epoch"]) + 1
        say(log, f"member {member}: resumed from {checkpoint_path} after epoch "
                 f"{first_epoch - 1} (best {best_loss:.5f} at epoch {best_epoch})")
    for epoch in range(first_epoch, max_epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = run_epoch(model, optimizer, x_train, y_train, batch_size, conv_l2,
                               shuffle_generator, forward=forward, resident=resident)
        if scheduler is not None:
            scheduler.step()
        train_seconds = time.perf_counter() - epoch_start
        if not np.isfinite(train_loss):
            raise RuntimeError(f"member {member}: training loss became {train_loss} at epoch "
                               f"{epoch}; lower learning_rate or check the input flux")

        valid_loss, _ = _valid_loss(model, x_valid, y_valid, eval_batch)
        if valid_loss < best_loss - min_delta:
            best_loss, best_epoch = valid_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        elapsed = time.perf_counter() - start_time
        throughput = n_train / train_seconds if train_seconds > 0 else float("inf")
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                        "best_valid_loss": best_loss, "train_seconds": train_seconds,
                        "spectra_per_s": throughput, "elapsed_s": elapsed})
        say(log, f"member {member} epoch {epoch}/{max_epochs}: train {train_loss:.5f} "
                  f"valid {valid_loss:.5f} best {best_loss:.5f} (epoch {best_epoch}) "
                  f"{throughput:.0f} spectra/s elapsed {elapsed:.1f} s")
        if checkpoint_every and epoch % checkpoint_every == 0 and epoch < max_epochs:
            save_checkpoint(checkpoint_path, {
                "identity": identity, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best_state": best_state, "best_loss": best_loss, "best_epoch": best_epoch,
                "epochs_without_improvement": epochs_without_improvement,
                "history": history, "torch_rng": torch.get_rng_state(),
                "shuffle_rng": shuffle_generator.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            })
        if epochs_without_improvement >= patience:
            say(log, f"member {member}: early stop after epoch {epoch} ({patience} epochs "
                      f"without improvement > {min_delta}); restoring epoch {best_epoch}")
            break

    if best_state is None:  # every validation loss was NaN
        raise RuntimeError(f"member {member}: validation loss never finite; nothing to save")
    model.load_state_dict(best_state)
    best_loss, per_label_mse = _valid_loss(model, x_valid, y_valid, eval_batch)
    valid_rmse = {name: float(np.sqrt(mse) * s) for name, mse, s in zip(labels, per_label_mse, span)}

    meta: dict[str, Any] = {
        "method": str(cfg["method"]),
        "architecture": getattr(model, "architecture", dict(cfg["architecture"])),
        "labels": labels,
        "label_min": [float(v) for v in label_min],
        "label_max": [float(v) for v in label_max],
        "n_pixels": n_pixels,
        "grid_hash": str(grid_hash),
        "training_set_hash": train_hash,
        "n_train": n_train,
        "n_valid": int(valid_rows.size),
        "seed": seed,
        "member": int(member),
        "epochs_run": int(epoch),
        "best_epoch": int(best_epoch),
        "best_valid_loss": float(best_loss),
        "valid_rmse": valid_rmse,
        "device": str(device),
        "threads": int(torch.get_num_threads()),
        "train_seconds": float(time.perf_counter() - start_time),
        "config": plain(cfg),
    }
    meta.update(plain(artifacts.provenance(cfg)))
    write_model_folder(out_dir, model, meta, pd.DataFrame(history))
    # the finished folder supersedes the checkpoint; a rerun must not resume from it
    checkpoint_path.unlink(missing_ok=True)
    say(log, f"member {member}: best epoch {best_epoch}, valid loss {best_loss:.5f}, "
              f"valid RMSE " + ", ".join(f"{k} {v:.4g}" for k, v in valid_rmse.items()))
    return meta


def train_job(*, flux: str | os.PathLike, table: str | os.PathLike, labels: list[str],
              member: int, cfg: Mapping[str, Any], model_dir: str | os.PathLike,
              method_cfg: Mapping[str, Any] | None, variant: str,
              log: Callable[[str], Any], threads: int | None) -> dict[str, Any]:
    """One member of the workflow's train rule: every row of the training set is eligible (the
    trainset stage already applied the clean stage's keep flags). The regression CNN has no
    settings section of its own and no ablation variants."""
    n = len(artifacts.load_table(table, columns=["spectrum_id"]))
    return train_member(flux, table, np.ones(n, dtype=bool), list(labels), int(member), cfg,
                        model_dir, log=log, threads=threads)
