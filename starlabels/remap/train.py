"""The training recipe of one deep-REMAP member: the phases and what they share.

:func:`run_phase` trains the ResNet for one phase (pre-training on the degraded synthetic spectra
or fine-tuning on the observed stars) with the focal/cost-matrix loss on every label's head plus
the triplet loss on the embedding, a cosine-annealed rate and stochastic weight averaging over
the last epochs (:class:`WeightAverager`), optionally replaying synthetic spectra while
fine-tuning. :class:`MemberCheckpoint` makes a member resumable bit for bit.

``variant`` switches parts off for the ablation study (``no_pretrain``, ``pretrain_only``,
``no_triplet``, ``no_swa``); ``full`` is the whole recipe. The member itself (which rows, the
phases in order, temperature scaling, the model folder) is :mod:`starlabels.remap.member`.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from ..batch import say
from ..members import load_checkpoint, save_checkpoint, to_device_rows, training_precision
from .bins import LabelBins, summarize
from .losses import cost_matrix, focal_cost_loss, triplet_loss

#: ablation variants: what each switches off in the recipe
VARIANTS: dict[str, str] = {
    "full": "pre-training + fine-tuning + triplet loss + SWA + temperature scaling",
    "no_pretrain": "fine-tuning only, from random weights",
    "pretrain_only": "pre-training on synthetic spectra, no fine-tuning",
    "no_triplet": "full recipe with the triplet-loss weight set to 0",
    "no_swa": "full recipe without stochastic weight averaging",
}


def variant_config(cfg: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """The remap config with the parts ``variant`` removes switched off."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown deep-REMAP variant {variant!r}; choose from {sorted(VARIANTS)}")
    cfg = copy.deepcopy(dict(cfg))
    if variant == "no_pretrain":
        cfg["pretrain"] = dict(cfg["pretrain"], enabled=False)
    elif variant == "pretrain_only":
        cfg["finetune"] = dict(cfg["finetune"], enabled=False)
    elif variant == "no_triplet":
        cfg["triplet"] = dict(cfg["triplet"], weight=0.0)
    elif variant == "no_swa":
        cfg["swa"] = dict(cfg["swa"], enabled=False)
    return cfg


# ---------------------------------------------------------------- weight averaging

class WeightAverager:
    """Stochastic weight averaging: an equal-weight running mean of parameter snapshots
    (``torch.optim.swa_utils.AveragedModel``), then BatchNorm statistics recomputed for the
    averaged weights (``update_bn``) — running stats of the snapshots do not describe their mean."""

    def __init__(self, model: nn.Module) -> None:
        self.averaged = AveragedModel(model)
        self.n_snapshots = 0

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        self.n_snapshots += 1

    def finalize(self, batches: Sequence[torch.Tensor],
                 device: torch.device | None = None) -> nn.Module:
        update_bn(batches, self.averaged, device=device)  # host batches are moved to `device`
        return self.averaged.module


# ---------------------------------------------------------------- one training phase

class LabelledSpectra:
    """Flux and label tensors plus the per-label bin geometry.

    Labels always live on ``device`` (they are small). The flux lives there too when
    ``resident``; otherwise it stays in host memory and :meth:`gather` copies each batch over
    through a pinned staging buffer (``non_blocking``), as the regression trainer does.
    """

    def __init__(self, flux: np.ndarray, values: np.ndarray, bins: Sequence[LabelBins],
                 device: torch.device, errors: np.ndarray | None = None,
                 resident: bool = True) -> None:
        self.device = device
        self.resident = resident
        host = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32))
        self.flux = host.to(device) if resident else host
        self.values = torch.from_numpy(values.astype(np.float32)).to(device)
        # catalogue label errors (0 = exact, e.g. synthetic labels)
        err = np.zeros_like(values) if errors is None else np.nan_to_num(errors, nan=0.0)
        self.errors = torch.from_numpy(err.astype(np.float32)).to(device)
        lows = np.array([b.low for b in bins])
        spans = np.array([b.high - b.low for b in bins])
        self.scaled = torch.from_numpy(((values - lows) / spans).astype(np.float32)).to(device)

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """``flux[rows]`` on the device; ``rows`` is a CPU index tensor."""
        if self.resident:
            return self.flux[rows.to(self.device)]
        return to_device_rows(self.flux, rows, self.device)


def _batch_flux(train: LabelledSpectra, replay: LabelledSpectra | None, pick: torch.Tensor | None,
                rows: torch.Tensor) -> torch.Tensor:
    """Flux of one batch of the (training + replayed synthetic) set, on the device.

    ``rows`` (CPU) index the virtual concatenation [train rows, replay rows ``pick``]: the
    batch is filled from both without ever concatenating the flux matrices, so a host-memory
    training set is not copied once per epoch, and resident and host runs do the same arithmetic.
    """
    if replay is None:
        return train.gather(rows)
    n = len(train)
    from_train = rows < n
    if bool(from_train.all()):
        return train.gather(rows)
    out = torch.empty((rows.numel(), train.flux.shape[1]), dtype=torch.float32,
                      device=train.device)
    mask = from_train.to(train.device)
    if bool(from_train.any()):
        out[mask] = train.gather(rows[from_train])
    out[~mask] = replay.gather(pick[rows[~from_train] - n])
    return out


def _phase_loss(forward: Callable[[torch.Tensor], Any], flux: torch.Tensor,
                values: torch.Tensor, scaled: torch.Tensor, errors: torch.Tensor,
                bins: Sequence[LabelBins], centres: Sequence[torch.Tensor],
                costs: Sequence[torch.Tensor], cfg: Mapping[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss, label loss, triplet loss) of one batch, as device tensors (no GPU sync)."""
    with training_precision(flux.device):
        logits, embedding = forward(flux)
    loss_cfg = cfg["loss"]
    deconvolve = bool(loss_cfg["deconvolve_label_errors"])
    label_loss = sum(
        focal_cost_loss(lg.float(), values[:, j], centres[j], bins[j].width,
                        gamma=loss_cfg["focal_gamma"],
                        target_sigma_bins=loss_cfg["target_sigma_bins"],
                        cost_weight=loss_cfg["cost_weight"], cost=costs[j],
                        errors=errors[:, j] if deconvolve else None)
        for j, lg in enumerate(logits)) / len(logits)
    weight = float(cfg["triplet"]["weight"])
    if weight:
        trip = triplet_loss(embedding.float(), scaled, margin=cfg["triplet"]["margin"],
                            mining=cfg["triplet"]["mining"],
                            positive_radius=cfg["triplet"]["positive_radius"],
                            negative_radius=cfg["triplet"]["negative_radius"])
    else:
        trip = torch.zeros((), device=flux.device)
    return label_loss + weight * trip, label_loss.detach(), trip.detach()


@torch.inference_mode()
def predict_logits(model: nn.Module, flux: torch.Tensor, batch_size: int = 256
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-head logits (fp32, eval mode) and embeddings for every row of ``flux``.

    ``flux`` may sit on the model's device or in host memory (moved one slice at a time).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    heads: list[list[torch.Tensor]] = []
    embeddings = []
    for start in range(0, flux.shape[0], batch_size):
        logits, emb = model(flux[start:start + batch_size].to(device))
        heads.append([lg.float() for lg in logits])
        embeddings.append(emb.float())
    model.train(was_training)
    per_head = [torch.cat([h[j] for h in heads]).cpu().numpy() for j in range(len(heads[0]))]
    return per_head, torch.cat(embeddings).cpu().numpy()


def validation_rmse(model: nn.Module, data: LabelledSpectra, bins: Sequence[LabelBins],
                    temperatures: Sequence[float] | None = None) -> dict[str, float]:
    """``rmse_<label>``: RMS of (probability-weighted mean − label) over ``data``."""
    logits, _ = predict_logits(model, data.flux)
    values = data.values.cpu().numpy().astype(np.float64)
    out = {}
    for j, b in enumerate(bins):
        t = 1.0 if temperatures is None else temperatures[j]
        prob = torch.softmax(torch.from_numpy(logits[j]).double() / t, dim=1).numpy()
        mean = summarize(prob, b, quantiles=())["mean"]
        out[f"rmse_{b.name}"] = float(np.sqrt(np.mean((mean - values[:, j]) ** 2)))
    return out


class MemberCheckpoint:
    """Resumable state of one deep-REMAP member, in ``<model folder>/checkpoint.pt``.

    Written (atomically) every ``every`` epochs inside a phase and once at the end of each phase.
    It holds the weights, the optimiser, both learning-rate schedules, the SWA running average,
    the history and every random-number generator the member draws from (the shuffle/replay
    generator, torch's CPU and CUDA generators that drive dropout), so a resumed member ends
    with the same weights as an uninterrupted one: bit for bit on CPU. ``identity`` ties it to
    one training set, configuration, variant and member; a checkpoint of anything else is ignored.
    """

    def __init__(self, path: Path, identity: str, every: int,
                 log: Callable[[str], Any] = print) -> None:
        self.path, self.identity, self.every, self.log = Path(path), identity, int(every), log

    def load(self) -> dict[str, Any] | None:
        return load_checkpoint(self.path, self.identity, self.log) if self.every else None

    def due(self, epoch: int, epochs: int) -> bool:
        return bool(self.every) and epoch % self.every == 0 and epoch < epochs

    def save(self, **state: Any) -> None:
        if not self.every:
            return
        state.update(identity=self.identity, torch_rng=torch.get_rng_state(),
                     cuda_rng=(torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                               else None))
        save_checkpoint(self.path, state)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
    """Put every generator back where the checkpoint left it."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run_phase(name: str, model: nn.Module, train: LabelledSpectra, valid: LabelledSpectra | None,
              bins: Sequence[LabelBins], cfg: Mapping[str, Any], *, epochs: int,
              learning_rate: float, batch_size: int, generator: torch.Generator,
              trainable: Sequence[nn.Parameter], replay: LabelledSpectra | None = None,
              replay_fraction: float | None = None, log: Callable[[str], Any] = print,
              history: list[dict[str, Any]] | None = None,
              checkpoint: MemberCheckpoint | None = None, phase_index: int = 0,
              resume: Mapping[str, Any] | None = None, compile_model: bool = False
              ) -> nn.Module:
    """Train ``model`` for ``epochs`` (cosine annealing; SWA over the last fraction if enabled).

    Returns the trained module: the SWA average (BatchNorm recomputed) when SWA is on, otherwise
    the weights after the last, annealed epoch. ``replay`` spectra (``replay_fraction`` of the
    training set each epoch) are mixed in when given. ``resume`` is a mid-phase checkpoint of this
    phase: the model, optimiser, schedules and SWA average continue from its epoch (the caller
    has restored the weights, random generators and history). ``compile_model`` runs the
    training steps through ``torch.compile`` (CUDA only; weights are shared with ``model``).
    """
    device = train.device
    history = [] if history is None else history
    centres = [torch.as_tensor(b.centres, dtype=torch.float32, device=device) for b in bins]
    costs = [cost_matrix(b.n_bins, cfg["loss"]["cost_sigma_bins"], device) for b in bins]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate,
                                  weight_decay=float(cfg["weight_decay"]))
    swa_cfg = cfg["swa"]
    swa_epochs = (max(1, int(round(epochs * float(swa_cfg["fraction"]))))
                  if swa_cfg["enabled"] else 0)
    anneal_epochs = max(1, epochs - swa_epochs)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=anneal_epochs,
        eta_min=learning_rate * float(swa_cfg["lr_factor"]) if swa_epochs else 0.0)
    swa_scheduler = (SWALR(optimizer, swa_lr=learning_rate * float(swa_cfg["lr_factor"]),
                           anneal_epochs=1) if swa_epochs else None)
    averager = WeightAverager(model) if swa_epochs else None
    first_epoch = 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        cosine.load_state_dict(resume["cosine"])
        if swa_scheduler is not None:
            swa_scheduler.load_state_dict(resume["swa_scheduler"])
            averager.averaged.load_state_dict(resume["averaged"])
            averager.n_snapshots = int(resume["n_snapshots"])
        first_epoch = int(resume["epoch"]) + 1
        say(log, f"{name}: resumed after epoch {first_epoch - 1}/{epochs} from "
                 f"{checkpoint.path if checkpoint else 'a checkpoint'}")
    forward: Callable[[torch.Tensor], Any] = model
    if compile_model and device.type == "cuda":
        forward = torch.compile(model)
    n_replay = int(round(replay_fraction * len(train))) if replay is not None else 0
    start = time.perf_counter()
    for epoch in range(first_epoch, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        values, scaled, errors = train.values, train.scaled, train.errors
        pick = None
        if n_replay:
            pick = torch.randperm(len(replay), generator=generator)[:n_replay]
            pick_device = pick.to(device)
            values = torch.cat([values, replay.values[pick_device]])
            scaled = torch.cat([scaled, replay.scaled[pick_device]])
            errors = torch.cat([errors, replay.errors[pick_device]])
        n_epoch = int(values.shape[0])
        order = torch.randperm(n_epoch, generator=generator)
        order_device = order.to(device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # no GPU sync per batch
        for s in range(0, n_epoch, batch_size):
            rows = order[s:s + batch_size]
            if rows.numel() < 2:   # BatchNorm needs two; a lone leftover spectrum is skipped
                continue
            batch = order_device[s:s + batch_size]
            flux = _batch_flux(train, replay if n_replay else None, pick, rows)
            loss, label_loss, trip = _phase_loss(forward, flux, values[batch], scaled[batch],
                                                 errors[batch], bins, centres, costs, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), label_loss, trip]).double() * rows.numel()
        in_swa = averager is not None and epoch > anneal_epochs
        if in_swa:
            averager.update(model)
            swa_scheduler.step()
        else:
            cosine.step()
        mean_loss, mean_label, mean_trip = (sums / n_epoch).tolist()  # one sync per epoch
        seconds = time.perf_counter() - t0
        row = {"phase": name, "epoch": epoch, "loss": mean_loss, "label_loss": mean_label,
               "triplet_loss": mean_trip, "lr": optimizer.param_groups[0]["lr"], "swa": in_swa,
               "spectra_per_s": n_epoch / max(seconds, 1e-9),
               "elapsed_s": time.perf_counter() - start}
        if valid is not None and (epoch % 5 == 0 or epoch == epochs):
            row.update(validation_rmse(model, valid, bins))
        history.append(row)
        extra = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("rmse_"))
        say(log, f"{name} epoch {epoch}/{epochs}: loss {row['loss']:.4f} (labels "
                 f"{row['label_loss']:.4f}, triplet {row['triplet_loss']:.4f}) lr {row['lr']:.2e}"
                 f"{' swa' if in_swa else ''} {row['spectra_per_s']:.0f} spectra/s {extra}")
        if not np.isfinite(row["loss"]):
            raise RuntimeError(f"{name}: loss became {row['loss']} at epoch {epoch}; lower the "
                               f"learning rate")
        if checkpoint is not None and checkpoint.due(epoch, epochs):
            checkpoint.save(
                phase=name, phase_index=phase_index, epoch=epoch, done=False,
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                cosine=cosine.state_dict(),
                swa_scheduler=swa_scheduler.state_dict() if swa_scheduler else None,
                averaged=averager.averaged.state_dict() if averager else None,
                n_snapshots=averager.n_snapshots if averager else 0,
                history=list(history), generator=generator.get_state())
    if averager is not None:
        batches = [train.flux[s:s + 256] for s in range(0, len(train), 256)]
        model = averager.finalize(batches, device)
        say(log, f"{name}: SWA averaged {averager.n_snapshots} snapshots; BatchNorm statistics "
                 f"recomputed on {len(train)} spectra")
    if checkpoint is not None:
        # the end of a phase is always a resume point: a later kill never repeats this phase
        checkpoint.save(phase=name, phase_index=phase_index, epoch=epochs, done=True,
                        model=model.state_dict(), history=list(history),
                        generator=generator.get_state())
    return model


# ---------------------------------------------------------------- calibration


# ---------------------------------------------------------------- the member


# ---------------------------------------------------------------- ensemble calibration


