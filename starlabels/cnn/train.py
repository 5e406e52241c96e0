"""Train one regression-CNN member: a network mapping normalised flux to min–max scaled labels,
and (with the architecture's ``variance_head``) to a log-variance per label.

One call of :func:`train_member` is one Snakemake job. It
- picks the training spectra (split ``train``, t-SNE ``keep`` flags, finite labels); with
  ``holdout_fraction`` > 0 it holds a seeded share of them out for early stopping and member
  selection. The ``valid`` split never decides anything here: the ensemble's uncertainty
  calibration (:mod:`starlabels.cnn.calibration`) is fitted on it afterwards;
- seeds everything from ``cfg["seed"] + member`` so a member is reproducible bit for bit on CPU;
- trains with Adam on the mean squared error of the scaled labels (plus an optional L2 penalty on
  the convolution kernels). With a variance head, the log-variance is fitted at the same time by
  the Gaussian likelihood of the residuals with the mean held fixed (its gradient does not reach
  the mean) and each label's catalogue error added in quadrature: the head learns how far the
  *true* label may be from the prediction, not the catalogue's noise. Fitting the mean by the
  likelihood instead was measured to collapse [Mg/Fe] and [Al/Fe] onto their sample mean on
  demo_ges: a large early variance starves the mean of gradient;
- with ``noise_augmentation`` degrades a share of each batch to a lower S/N;
- writes a model folder: ``model.pt`` (weights + plain metadata), ``model.json`` (the same metadata
  plus provenance, written last so its presence means the folder is complete) and ``history.csv``.

On CUDA the training spectra stay resident on the GPU when they fit (``resident: auto`` compares
their size with ``torch.cuda.mem_get_info()``); otherwise they stay in host memory and each batch
is gathered into pinned memory and copied with ``non_blocking=True``. ``compile: true`` wraps the
network in ``torch.compile`` for the training steps on CUDA (skipped, with a log line, on CPU);
saved weights always come from the original module, so their key names never change.

``cfg`` is the experiment's ``train`` section plus its ``method``; the optional keys it leaves out
take the configuration schema's defaults.
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
#: log-variance (scaled label units) is clamped here: σ from 3e-4 to 7 label spans, so a
#: runaway head can neither divide by zero nor swamp the likelihood
LOG_VARIANCE_RANGE = (-16.0, 4.0)


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
    """Matrix rows of the ``train`` and ``valid`` splits that are kept by t-SNE and have every
    label finite. Training uses the first; the second is only reported on (and calibrated on by
    the ensemble afterwards)."""
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


def holdout_rows(train_rows: np.ndarray, fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(rows trained on, rows held out for early stopping): a ``fraction`` of ``train_rows``
    drawn with the member's seed, both in matrix order. ``fraction`` 0 holds nothing out."""
    n_out = int(round(float(fraction) * train_rows.size))
    if n_out == 0:
        return train_rows, train_rows[:0]
    if n_out >= train_rows.size:
        raise ValueError(f"holdout_fraction {fraction} leaves no training spectra "
                         f"({train_rows.size} rows)")
    picked = np.random.default_rng([int(seed), 0x401D]).choice(train_rows.size, n_out,
                                                                 replace=False)
    out = np.zeros(train_rows.size, dtype=bool)
    out[picked] = True
    return train_rows[~out], train_rows[out]


def label_errors(table: pd.DataFrame, labels: Sequence[str], rows: np.ndarray) -> np.ndarray:
    """The catalogue errors ``e_<label>`` of ``rows`` (0 where a table has none or a value is
    missing: the label is then taken as exact)."""
    errors = np.zeros((rows.size, len(labels)))
    for j, name in enumerate(labels):
        column = f"e_{name}"
        if column in table.columns:
            values = table[column].to_numpy(dtype=np.float64)[rows]
            errors[:, j] = np.where(np.isfinite(values) & (values > 0), values, 0.0)
    return errors


def _checked_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training config with the optional keys completed from the schema's ``train``
    section; the keys of :data:`REQUIRED_CONFIG` must be given, and every value must be usable."""
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
    if not 0.0 <= float(cfg["holdout_fraction"]) < 0.5:
        raise ValueError(f"training config: holdout_fraction must be in [0, 0.5), got "
                         f"{cfg['holdout_fraction']}")
    return cfg


# ---------------------------------------------------------------- noise

def degrade(flux: torch.Tensor, ivar: torch.Tensor, snr: torch.Tensor, fraction: float,
            snr_min: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of a batch in which a ``fraction`` of the spectra carry extra Gaussian noise.

    A chosen spectrum of S/N ``s`` gets a target S/N drawn log-uniformly in [min(snr_min, s), s]
    and noise of σ_add = sqrt(1/target² − 1/s²) per pixel (in continuum units: S/N is per pixel at
    the continuum), so its pixel variances become 1/ivar + σ_add². Masked pixels (ivar 0) stay
    masked and untouched. Every random number comes from ``generator`` (the member's shuffle
    generator), so a member stays reproducible and resumable bit for bit. The draws live on the
    CPU and move to the batch's device.
    """
    n = flux.shape[0]
    pick = torch.rand(n, generator=generator) < float(fraction)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(flux.shape, generator=generator, dtype=torch.float32)
    own = snr.detach().to("cpu", torch.float64).clamp_min(1e-3)
    low = torch.minimum(own, torch.full_like(own, float(snr_min)))
    target = torch.exp(torch.log(low) + u * (torch.log(own) - torch.log(low)))
    add = torch.sqrt((1.0 / target ** 2 - 1.0 / own ** 2).clamp_min(0.0))
    add = torch.where(pick, add, torch.zeros_like(add)).to(torch.float32)
    add = add.to(flux.device)[:, None]
    observed = ivar > 0
    noisy = torch.where(observed, flux + noise.to(flux.device) * add, flux)
    variance = torch.where(observed, 1.0 / ivar.clamp_min(1e-30) + add ** 2, torch.zeros_like(ivar))
    return noisy, torch.where(observed, 1.0 / variance.clamp_min(1e-30), ivar)


# ---------------------------------------------------------------- evaluation

@torch.inference_mode()
def predict_scaled(model: nn.Module, flux: torch.Tensor, batch_size: int,
                   ivar: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled-label predictions (the means) in fp32, in eval mode (no dropout), batch by batch.

    No autocast here: a bf16 output carries only ~3 significant digits, i.e. ~0.4 % of the label
    range (≈12 K in Teff) — too coarse for losses that decide early stopping.
    """
    return predict_scaled_with_variance(model, flux, batch_size, ivar)[0]


@torch.inference_mode()
def predict_scaled_with_variance(model: nn.Module, flux: torch.Tensor, batch_size: int,
                                 ivar: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scaled means, scaled variances or None without a variance head), as
    :func:`predict_scaled`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    means, variances = [], []
    for start in range(0, flux.shape[0], batch_size):
        # host-resident flux (resident: never / too large) moves one slice at a time; a slice of
        # a pinned tensor is pinned, so the copy is asynchronous
        x = flux[start:start + batch_size].to(device, non_blocking=flux.is_pinned())
        v = None if ivar is None else \
            ivar[start:start + batch_size].to(device, non_blocking=ivar.is_pinned())
        mean, log_variance = model.split(model(x, v).float())
        means.append(mean)
        if log_variance is not None:
            variances.append(log_variance.clamp(*LOG_VARIANCE_RANGE).exp())
    model.train(was_training)
    return torch.cat(means), (torch.cat(variances) if variances else None)


def _mean_loss(model: nn.Module, flux: torch.Tensor, ivar: torch.Tensor | None,
               scaled: torch.Tensor, batch_size: int) -> tuple[float, np.ndarray]:
    """(MSE over all labels, per-label MSE) of the means on scaled labels."""
    squared = (predict_scaled(model, flux, batch_size, ivar) - scaled).pow(2)
    per_label = squared.mean(dim=0).cpu().numpy().astype(np.float64)
    return float(per_label.mean()), per_label


# ---------------------------------------------------------------- training

def batch_loss(model: nn.Module, output: torch.Tensor, target: torch.Tensor,
               target_error: torch.Tensor, variance_weight: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimise, the MSE of the means) for one batch of network outputs.

    Without a variance head the loss is the MSE. With one, it adds ``variance_weight`` × the
    Gaussian negative log-likelihood of the residuals under σ² = exp(log-variance) + the
    catalogue error², with the means detached: the likelihood shapes the variance head only.
    """
    mean, log_variance = model.split(output.float())
    mse = F.mse_loss(mean, target)
    if log_variance is None:
        return mse, mse
    variance = log_variance.clamp(*LOG_VARIANCE_RANGE).exp() + target_error.pow(2)
    nll = 0.5 * ((target - mean.detach()).pow(2) / variance + variance.log()).mean()
    return mse + float(variance_weight) * nll, mse


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, flux: torch.Tensor,
              scaled_labels: torch.Tensor, batch_size: int, conv_l2: float,
              shuffle_generator: torch.Generator,
              forward: Callable[..., torch.Tensor] | None = None,
              resident: bool = True, *, ivar: torch.Tensor | None = None,
              label_error: torch.Tensor | None = None, snr: torch.Tensor | None = None,
              augmentation: Mapping[str, float] | None = None,
              variance_weight: float = 0.0) -> float:
    """One pass over the training spectra in a fresh seeded order; returns the means' MSE.

    When the spectra sit on the device as one tensor, a batch is an index gather — no
    DataLoader, no per-spectrum Python work. With ``resident=False`` ``flux`` (and ``ivar``) stay
    in host memory and each batch is gathered there and copied to the labels' device
    (:func:`to_device_rows`); the batches, their order and the arithmetic are the same.
    ``forward`` (default ``model``) runs the network, e.g. a ``torch.compile`` wrapper of it.
    ``ivar`` is needed by a network that reads the noise and by ``augmentation`` (``fraction``,
    ``snr_min``; ``snr`` gives each spectrum's S/N). The returned MSE excludes the L2 penalty
    and the variance term.
    """
    device = scaled_labels.device
    forward = model if forward is None else forward
    n_train = flux.shape[0]
    reads_noise = bool(getattr(model, "noise_channel", False))
    augment = augmentation is not None and float(augmentation["fraction"]) > 0
    if (reads_noise or augment) and ivar is None:
        raise ValueError("this training reads the inverse variances (noise channel or noise "
                         "augmentation), but none were given")
    if label_error is None:
        label_error = torch.zeros_like(scaled_labels)
    model.train()
    order = torch.randperm(n_train, generator=shuffle_generator)
    order_device = order.to(device)
    loss_sum = torch.zeros((), device=device)  # summed on the device: no GPU sync per batch
    for start in range(0, n_train, batch_size):
        batch = order_device[start:start + batch_size]
        host_batch = order[start:start + batch_size]
        x = flux[batch] if resident else to_device_rows(flux, host_batch, device)
        v = None
        if ivar is not None and (reads_noise or augment):
            v = ivar[batch] if resident else to_device_rows(ivar, host_batch, device)
        if augment:
            x, v = degrade(x, v, snr[batch], float(augmentation["fraction"]),
                           float(augmentation["snr_min"]), shuffle_generator)
        with training_precision(device):
            output = forward(x, v if reads_noise else None)
        loss, mse = batch_loss(model, output, scaled_labels[batch], label_error[batch],
                               variance_weight)
        if conv_l2:
            loss = loss + conv_l2 * conv_l2_penalty(model).float()
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


def _place(array: np.ndarray, device: torch.device, resident: bool, pin: bool) -> torch.Tensor:
    """A float32 matrix on the device (resident) or in host memory (pinned when asked)."""
    tensor = torch.from_numpy(array)
    if resident:
        return tensor.to(device)
    return tensor.pin_memory() if pin else tensor


def train_member(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                 keep_path_or_array: str | os.PathLike | np.ndarray, labels: list[str],
                 member: int, cfg: Mapping[str, Any], out_dir: str | os.PathLike,
                 log: Callable[[str], Any] = print, threads: int | None = None,
                 ivar_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ensemble member ``member`` and write its model folder to ``out_dir``.

    ``ivar_path`` (the inverse variances beside ``flux_path``) is needed when the network reads
    the noise or noise augmentation is on. Returns the metadata written to ``model.json``.
    """
    cfg = _checked_config(cfg)
    labels = check_labels(list(labels))
    device, seed, shuffle_generator = start_member(cfg, member, threads)
    augmentation = dict(cfg["noise_augmentation"])
    architecture = config.section("train.architecture", cfg["architecture"])
    needs_ivar = bool(architecture["noise_channel"]) or float(augmentation["fraction"]) > 0
    if needs_ivar and ivar_path is None:
        raise ValueError("this member reads the inverse variances (architecture.noise_channel or "
                         "noise_augmentation.fraction > 0): give the ivar matrix beside the flux")

    # ---- which spectra
    table, grid_hash, flux = training_inputs(flux_path, table_path)
    ivar = artifacts.load_matrix(ivar_path) if needs_ivar else None
    if ivar is not None and ivar.shape != flux.shape:
        raise ValueError(f"{ivar_path}: ivar matrix {ivar.shape} does not match the flux "
                         f"matrix {flux.shape}")
    n_pixels = int(flux.shape[1])
    keep = load_keep(keep_path_or_array, len(table))
    train_rows, valid_rows = select_rows(table, keep, labels)
    fit_rows, stop_rows = holdout_rows(train_rows, float(cfg["holdout_fraction"]), seed)
    label_values = table[labels].to_numpy(dtype=np.float64)

    # ---- read the spectra once (fancy indexing copies from the memmap)
    def rows_of(matrix: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
        return None if matrix is None else np.ascontiguousarray(matrix[rows], dtype=np.float32)

    flux_fit, flux_stop, flux_valid = (rows_of(flux, r) for r in (fit_rows, stop_rows, valid_rows))
    ivar_fit, ivar_stop, ivar_valid = (rows_of(ivar, r) for r in (fit_rows, stop_rows, valid_rows))
    if not all(np.isfinite(m).all() for m in (flux_fit, flux_stop, flux_valid)):
        raise ValueError(f"{flux_path}: non-finite flux in training/validation rows; the normalize "
                         f"stage should have set masked pixels to 1.0")
    labels_fit = label_values[fit_rows]
    train_hash = training_set_hash(flux_fit, labels_fit, labels)

    # ---- min–max label scaling from the spectra trained on only
    label_min = labels_fit.min(axis=0)
    label_max = labels_fit.max(axis=0)
    span = label_max - label_min
    if not (span > 0).all():
        flat = [name for name, s in zip(labels, span) if not s > 0]
        raise ValueError(f"label(s) {flat} are constant over the training spectra; "
                         f"min–max scaling (and learning them) is impossible")

    def scaled(rows: np.ndarray) -> torch.Tensor:
        values = ((label_values[rows] - label_min) / span).astype(np.float32)
        return torch.from_numpy(values).to(device)

    data_bytes = sum(m.nbytes for m in (flux_fit, flux_stop, flux_valid, ivar_fit, ivar_stop,
                                        ivar_valid) if m is not None)
    resident = keep_resident(str(cfg["resident"]), device, data_bytes)
    pin = device.type == "cuda"
    x_fit = _place(flux_fit, device, resident, pin=False)
    v_fit = None if ivar_fit is None else _place(ivar_fit, device, resident, pin=False)
    # held-out and validation sets are read in contiguous slices: pinned whole off the device
    x_stop, x_valid = (_place(m, device, resident, pin) for m in (flux_stop, flux_valid))
    v_stop, v_valid = ((None if m is None else _place(m, device, resident, pin))
                       for m in (ivar_stop, ivar_valid))
    y_fit, y_stop, y_valid = scaled(fit_rows), scaled(stop_rows), scaled(valid_rows)
    e_fit = torch.from_numpy((label_errors(table, labels, fit_rows) / span).astype(np.float32)
                             ).to(device)
    snr_fit = None
    if float(augmentation["fraction"]) > 0:
        if "snr" not in table.columns:
            raise ValueError(f"{table_path}: noise augmentation needs the spectra's S/N (column "
                             f"'snr')")
        snr_fit = torch.from_numpy(table["snr"].to_numpy(dtype=np.float64)[fit_rows]).to(device)
    del flux_fit, flux_stop, flux_valid, ivar_fit, ivar_stop, ivar_valid

    # ---- network and optimiser (built after seeding: initial weights depend on the seed only)
    model = build_model(cfg["method"], n_pixels, len(labels), architecture).to(device)
    reads_noise = bool(getattr(model, "noise_channel", False))
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
    early_stopping = stop_rows.size > 0
    n_train = int(fit_rows.size)

    say(log, f"member {member}: {n_train} training spectra"
              + (f" + {stop_rows.size} held out for early stopping" if early_stopping else
                 f" (no holdout: {max_epochs} epochs, last weights kept)")
              + f"; {valid_rows.size} validation spectra reported on, never trained or stopped "
                f"on; {n_pixels} pixels, labels {labels}, device {device}, seed {seed}, "
                f"{torch.get_num_threads()} CPU thread(s)")
    say(log, f"member {member}: variance head {model.variance_head}, noise channel "
              f"{reads_noise}, noise augmentation {augmentation['fraction']:g} of each batch "
              f"down to S/N {augmentation['snr_min']:g}")
    placement = ("resident on the device" if resident else
                 "kept in host memory, each batch gathered and copied over"
                 + (" from pinned memory (non_blocking)" if device.type == "cuda" else ""))
    say(log, f"member {member}: training spectra {data_bytes / 2**30:.2f} GiB, "
              f"{placement} (resident: {cfg['resident']})")
    forward: Callable[..., torch.Tensor] = model
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
                 f"{first_epoch - 1}" + (f" (best {best_loss:.5f} at epoch {best_epoch})"
                                         if early_stopping else ""))
    for epoch in range(first_epoch, max_epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = run_epoch(model, optimizer, x_fit, y_fit, batch_size, conv_l2,
                               shuffle_generator, forward=forward, resident=resident,
                               ivar=v_fit, label_error=e_fit, snr=snr_fit,
                               augmentation=augmentation,
                               variance_weight=float(cfg["variance_weight"]))
        if scheduler is not None:
            scheduler.step()
        train_seconds = time.perf_counter() - epoch_start
        if not np.isfinite(train_loss):
            raise RuntimeError(f"member {member}: training loss became {train_loss} at epoch "
                               f"{epoch}; lower learning_rate or check the input flux")
        record = {"epoch": epoch, "train_loss": train_loss}
        if early_stopping:
            stop_loss, _ = _mean_loss(model, x_stop, v_stop if reads_noise else None, y_stop,
                                      eval_batch)
            if stop_loss < best_loss - min_delta:
                best_loss, best_epoch = stop_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
                epochs_without_improvement = 0
            else:
                epochs_without_improvement += 1
            record.update(holdout_loss=stop_loss, best_holdout_loss=best_loss)
        else:
            best_epoch = epoch
        elapsed = time.perf_counter() - start_time
        throughput = n_train / train_seconds if train_seconds > 0 else float("inf")
        record.update(train_seconds=train_seconds, spectra_per_s=throughput, elapsed_s=elapsed)
        history.append(record)
        say(log, f"member {member} epoch {epoch}/{max_epochs}: train {train_loss:.5f} "
                  + (f"holdout {record['holdout_loss']:.5f} best {best_loss:.5f} "
                     f"(epoch {best_epoch}) " if early_stopping else "")
                  + f"{throughput:.0f} spectra/s elapsed {elapsed:.1f} s")
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
        if early_stopping and epochs_without_improvement >= patience:
            say(log, f"member {member}: early stop after epoch {epoch} ({patience} epochs "
                      f"without improvement > {min_delta}); restoring epoch {best_epoch}")
            break

    if early_stopping:
        if best_state is None:  # every holdout loss was NaN
            raise RuntimeError(f"member {member}: holdout loss never finite; nothing to save")
        model.load_state_dict(best_state)
    valid_loss, per_label_mse = _mean_loss(model, x_valid, v_valid if reads_noise else None,
                                           y_valid, eval_batch)
    valid_rmse = {name: float(np.sqrt(mse) * s) for name, mse, s in zip(labels, per_label_mse, span)}

    meta: dict[str, Any] = {
        "method": str(cfg["method"]),
        "architecture": getattr(model, "architecture", dict(architecture)),
        "labels": labels,
        "label_min": [float(v) for v in label_min],
        "label_max": [float(v) for v in label_max],
        "n_pixels": n_pixels,
        "grid_hash": str(grid_hash),
        "training_set_hash": train_hash,
        "n_train": n_train,
        "n_holdout": int(stop_rows.size),
        "n_valid": int(valid_rows.size),
        "seed": seed,
        "member": int(member),
        "epochs_run": int(epoch),
        "best_epoch": int(best_epoch),
        # member selection (predict.keep_quantile) ranks by the holdout loss; without a holdout
        # there is nothing to rank by (NaN) and every member is kept
        "selection_loss": float(best_loss) if early_stopping else float("nan"),
        "valid_loss": float(valid_loss),
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
    say(log, f"member {member}: kept epoch {best_epoch}; validation split (reported only) MSE "
              f"{valid_loss:.5f}, RMSE " + ", ".join(f"{k} {v:.4g}" for k, v in valid_rmse.items()))
    return meta


def train_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
              table: str | os.PathLike, labels: list[str], member: int, cfg: Mapping[str, Any],
              model_dir: str | os.PathLike, method_cfg: Mapping[str, Any] | None, variant: str,
              log: Callable[[str], Any], threads: int | None) -> dict[str, Any]:
    """One member of the workflow's train rule: every row of the training set is eligible (the
    trainset stage already applied the clean stage's keep flags). The regression CNN has no
    settings section of its own and no ablation variants."""
    n = len(artifacts.load_table(table, columns=["spectrum_id"]))
    return train_member(flux, table, np.ones(n, dtype=bool), list(labels), int(member), cfg,
                        model_dir, log=log, threads=threads, ivar_path=ivar)
