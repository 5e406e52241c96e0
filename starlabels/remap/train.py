"""Train one deep-REMAP ensemble member: pre-train → fine-tune → temperature-scale.

One call of :func:`train_remap_member` is one Snakemake job (a GPU job on a cluster). It
1. pre-trains the ResNet on the synthetic rows of the training set (degraded, augmented PHOENIX
   spectra), with the focal/cost-matrix loss on every label's head plus the triplet loss on the
   embedding, a cosine-annealed rate and stochastic weight averaging over the last epochs;
2. fine-tunes on the observed labelled stars (some layer groups frozen, a lower rate, optionally
   replaying synthetic spectra so giants — absent from the dwarf sample — are not forgotten),
   again with cosine annealing + SWA;
3. fits one temperature per head on the held-out observed ``valid`` split, which no phase trains
   on or selects by, and records ECE and NLL before and after;
4. embeds the labelled observed stars, the reference set of the "most similar known star" lookup;
5. writes a self-describing model folder (``model.pt`` with weights, temperatures and reference
   embeddings; ``model.json``; ``history.csv``).

``variant`` switches parts off for the ablation study (``no_pretrain``, ``pretrain_only``,
``no_triplet``, ``no_swa``); ``full`` is the whole recipe.
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
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from .. import artifacts
from ..labels import check_labels
from ..models import build_model
from ..train import (CHECKPOINT_NAME, HISTORY_FILE, META_FILE, MODEL_FILE, _plain,
                     _to_device_rows, keep_resident, load_checkpoint, resolve_device,
                     save_checkpoint, say, seed_everything, training_precision,
                     training_set_hash)
from .bins import LabelBins, label_bins, summarize
from .calibration import (bin_likelihoods, expected_calibration_error, fit_temperature, nll,
                          pit, interval_coverage)
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

class _Data:
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
        return _to_device_rows(self.flux, rows, self.device)


def _batch_flux(train: _Data, replay: _Data | None, pick: torch.Tensor | None,
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


def _valid_summary(model: nn.Module, data: _Data, bins: Sequence[LabelBins],
                   temperatures: Sequence[float] | None = None) -> dict[str, float]:
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


def run_phase(name: str, model: nn.Module, train: _Data, valid: _Data | None,
              bins: Sequence[LabelBins], cfg: Mapping[str, Any], *, epochs: int,
              learning_rate: float, batch_size: int, generator: torch.Generator,
              trainable: Sequence[nn.Parameter], replay: _Data | None = None,
              replay_fraction: float = 0.0, log: Callable[[str], Any] = print,
              history: list[dict[str, Any]] | None = None,
              checkpoint: MemberCheckpoint | None = None, phase_index: int = 0,
              resume: Mapping[str, Any] | None = None, compile_model: bool = False
              ) -> nn.Module:
    """Train ``model`` for ``epochs`` (cosine annealing; SWA over the last fraction if enabled).

    Returns the trained module: the SWA average (BatchNorm recomputed) when SWA is on, otherwise
    the weights after the last, annealed epoch. ``resume`` is a mid-phase checkpoint of this
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
            row.update(_valid_summary(model, valid, bins))
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

def calibrate(model: nn.Module, data: _Data, errors: np.ndarray | None,
              bins: Sequence[LabelBins], cfg: Mapping[str, Any],
              log: Callable[[str], Any] = print) -> tuple[list[float], dict[str, Any]]:
    """One temperature per head on the held-out split; ECE, NLL and 68% coverage before/after."""
    logits, _ = predict_logits(model, data.flux)
    values = data.values.cpu().numpy().astype(np.float64)
    eps = float(cfg["outlier_fraction"])
    temperatures, report = [], {}
    for j, b in enumerate(bins):
        err = None if errors is None else errors[:, j]
        like = bin_likelihoods(values[:, j], b, err)
        floor = 1.0 / (b.high - b.low)
        t = (fit_temperature(logits[j], like, outlier_fraction=eps, outlier_density=floor)
             if cfg["temperature_scaling"] else 1.0)
        temperatures.append(t)
        lg = torch.from_numpy(logits[j]).double()
        hard = b.index(values[:, j])
        entry = {"temperature": t, "n": int(len(values))}
        for tag, temp in (("before", 1.0), ("after", t)):
            prob = torch.softmax(lg / temp, dim=1).numpy()
            entry[f"nll_{tag}"] = float(nll(lg, torch.from_numpy(like), temp, eps, floor))
            entry[f"ece_{tag}"] = expected_calibration_error(prob, hard)
            entry[f"coverage68_{tag}"] = interval_coverage(pit(prob, b, values[:, j]),
                                                           (0.68,))["0.68"]
        report[b.name] = entry
        say(log, f"calibration {b.name}: T = {t:.3f}; NLL {entry['nll_before']:.3f} → "
                 f"{entry['nll_after']:.3f}; ECE {entry['ece_before']:.3f} → "
                 f"{entry['ece_after']:.3f}; 68% coverage of the catalogue labels "
                 f"{entry['coverage68_before']:.2f} → {entry['coverage68_after']:.2f}")
    return temperatures, report


# ---------------------------------------------------------------- the member

def _rows(table: pd.DataFrame, source: str, split: str, labels: Sequence[str]) -> np.ndarray:
    finite = np.isfinite(table[list(labels)].to_numpy(dtype=np.float64)).all(axis=1)
    return np.flatnonzero(table["source"].eq(source).to_numpy()
                          & table["split"].eq(split).to_numpy() & finite)


def train_remap_member(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                       labels: Sequence[str], member: int, train_cfg: Mapping[str, Any],
                       remap_cfg: Mapping[str, Any], out_dir: str | os.PathLike, *,
                       variant: str = "full", log: Callable[[str], Any] = print,
                       threads: int | None = None) -> dict[str, Any]:
    """Train member ``member`` (seed = train seed + member) of the deep-REMAP ensemble."""
    labels = check_labels(list(labels))
    cfg = variant_config(remap_cfg, variant)
    if threads is not None:
        torch.set_num_threads(int(threads))
    device = resolve_device(train_cfg["device"])
    seed = int(train_cfg["seed"]) + int(member)
    generator = seed_everything(seed)
    table = artifacts.load_table(table_path)
    grid_hash = artifacts.table_metadata(table_path).get("grid_hash")
    if not grid_hash:
        raise ValueError(f"{table_path}: table metadata has no 'grid_hash'")
    flux = artifacts.load_matrix(flux_path)
    if flux.shape[0] != len(table):
        raise ValueError(f"{flux_path}: {flux.shape[0]} rows but {table_path} has {len(table)}")
    bins = label_bins(labels, cfg["bins"])
    values = table[labels].to_numpy(dtype=np.float64)
    rows = {(src, split): _rows(table, src, split, labels)
            for src in ("synthetic", "observed") for split in ("train", "valid")}
    pretrain, finetune = cfg["pretrain"], cfg["finetune"]
    needs = [("observed", "valid")]
    if pretrain["enabled"]:
        needs.append(("synthetic", "train"))
    if finetune["enabled"]:
        needs.append(("observed", "train"))
    for key in needs:
        if rows[key].size < 2:
            raise ValueError(f"deep_remap ({variant}): {rows[key].size} usable {key[0]} "
                             f"{key[1]!r} spectra in {table_path}; the trainset needs sources "
                             f"[synthetic, observed] and a valid split for calibration")

    error_cols = [f"e_{name}" for name in labels]
    label_errors = (table[error_cols].to_numpy(dtype=np.float64)
                    if all(c in table for c in error_cols) else None)

    # which spectra, exactly: ties the checkpoint and the model folder to this training set
    train_rows = np.sort(np.concatenate([r for r in rows.values()]))
    train_hash = training_set_hash(np.asarray(flux[train_rows]), values[train_rows], labels)
    data_bytes = int(train_rows.size) * int(flux.shape[1]) * 4
    resident = keep_resident(str(train_cfg.get("resident", "auto")), device, data_bytes)

    def data(key: tuple[str, str]) -> _Data | None:
        r = rows[key]
        errors = None if label_errors is None else label_errors[r]
        return _Data(flux[r], values[r], bins, device, errors, resident) if r.size else None

    say(log, f"deep_remap member {member} ({variant}: {VARIANTS[variant]}): synthetic "
             f"{rows['synthetic', 'train'].size}/{rows['synthetic', 'valid'].size}, observed "
             f"{rows['observed', 'train'].size}/{rows['observed', 'valid'].size} train/valid; "
             f"{flux.shape[1]} pixels; bins " + ", ".join(f"{b.name} {b.n_bins}" for b in bins)
        + f"; device {device}, seed {seed}, {torch.get_num_threads()} thread(s)")
    say(log, f"deep_remap member {member}: spectra {data_bytes / 2**30:.2f} GiB, "
             + ("resident on the device" if resident else "kept in host memory, each batch "
                "gathered and copied over") + f" (resident: {train_cfg.get('resident', 'auto')})")
    compile_model = bool(train_cfg.get("compile", False))
    if compile_model and device.type != "cuda":
        say(log, f"deep_remap member {member}: compile: true is skipped on {device.type} (CUDA "
                 f"only); training runs uncompiled, exactly as with compile: false")

    architecture = dict(cfg["architecture"], n_bins=[b.n_bins for b in bins])
    model = build_model("deep_remap", flux.shape[1], len(labels), architecture).to(device)
    batch_size = int(train_cfg["batch_size"])
    history: list[dict[str, Any]] = []
    start = time.perf_counter()

    # ---- resume point: a checkpoint of this very member (training set, settings, variant);
    # where the spectra live and whether the steps are compiled do not change the arithmetic
    identity_settings = {"train": {k: v for k, v in dict(train_cfg).items()
                                   if k not in ("checkpoint_every", "threads", "resident",
                                                "compile")},
                         "remap": cfg, "variant": variant}
    checkpoint = MemberCheckpoint(
        Path(out_dir) / CHECKPOINT_NAME,
        f"{train_hash}:{artifacts.config_hash(identity_settings)}:{int(member)}",
        int(train_cfg.get("checkpoint_every", 0) or 0), log)
    resumed = checkpoint.load()
    resumed_phase, resumed_done = -1, False
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        restore_rng(resumed, generator)
        history = list(resumed["history"])
        resumed_phase, resumed_done = int(resumed["phase_index"]), bool(resumed["done"])
        say(log, f"deep_remap member {member}: resumed from {checkpoint.path} "
                 f"({resumed['phase']} epoch {resumed['epoch']}"
                 f"{', phase complete' if resumed_done else ''})")

    def phase_state(index: int) -> tuple[bool, Mapping[str, Any] | None]:
        """(skip phase ``index``: the checkpoint is past it, mid-phase state to continue)."""
        if resumed_phase > index or (resumed_phase == index and resumed_done):
            return True, None
        return False, resumed if resumed_phase == index else None

    syn_train = data(("synthetic", "train")) if (pretrain["enabled"] or
                                                 finetune["replay_fraction"]) else None
    obs_valid = data(("observed", "valid"))
    common = dict(bins=bins, cfg=cfg, batch_size=batch_size, generator=generator, log=log,
                  history=history, checkpoint=checkpoint, compile_model=compile_model)
    if pretrain["enabled"]:
        skip, resume = phase_state(0)
        if skip:
            say(log, "pretrain: complete in the checkpoint; skipped")
        else:
            model = run_phase("pretrain", model, syn_train, data(("synthetic", "valid")),
                              epochs=int(pretrain["epochs"]),
                              learning_rate=float(pretrain["learning_rate"]),
                              trainable=list(model.parameters()), phase_index=0, resume=resume,
                              **common)
    if finetune["enabled"]:
        frozen = set(finetune["freeze"]) if pretrain["enabled"] else set()
        groups = model.parameter_groups()
        trainable = [p for name, params in groups.items() if name not in frozen for p in params]
        for name in frozen:
            for p in groups[name]:
                p.requires_grad_(False)
        say(log, f"fine-tune: frozen {sorted(frozen) or 'nothing'}")
        skip, resume = phase_state(1)
        if skip:
            say(log, "finetune: complete in the checkpoint; skipped")
        else:
            model = run_phase("finetune", model, data(("observed", "train")), obs_valid,
                              epochs=int(finetune["epochs"]),
                              learning_rate=float(finetune["learning_rate"]),
                              trainable=trainable,
                              replay=syn_train if finetune["replay_fraction"] else None,
                              replay_fraction=float(finetune["replay_fraction"]), phase_index=1,
                              resume=resume, **common)
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()

    errors = None
    if cfg["calibration"]["use_label_errors"] and label_errors is not None:
        errors = label_errors[rows["observed", "valid"]]
    temperatures, calib = calibrate(model, obs_valid, errors, bins, cfg["calibration"], log)
    valid_rmse = _valid_summary(model, obs_valid, bins, temperatures)

    # reference set of the similar-star lookup: the labelled observed stars
    ref_rows = np.sort(np.concatenate([rows["observed", "train"], rows["observed", "valid"]]))
    ref_flux = np.ascontiguousarray(flux[ref_rows], dtype=np.float32)
    _, ref_emb = predict_logits(model, torch.from_numpy(ref_flux))
    # early stopping is not used; the held-out NLL after calibration ranks members instead
    score = float(np.sum([calib[b.name]["nll_after"] for b in bins]))
    meta: dict[str, Any] = {
        "method": "deep_remap", "variant": variant, "architecture": model.architecture,
        "labels": labels, "bins": [b.to_dict() for b in bins],
        "label_min": [b.low for b in bins], "label_max": [b.high for b in bins],
        "temperatures": temperatures, "calibration": calib,
        "n_pixels": int(flux.shape[1]), "grid_hash": str(grid_hash),
        "training_set_hash": train_hash,
        "n_pretrain": int(rows["synthetic", "train"].size) if pretrain["enabled"] else 0,
        "n_finetune": int(rows["observed", "train"].size) if finetune["enabled"] else 0,
        "n_calibration": int(rows["observed", "valid"].size),
        "n_reference": int(ref_rows.size), "seed": seed, "member": int(member),
        "best_valid_loss": score, "valid_rmse": {k[5:]: v for k, v in valid_rmse.items()},
        "device": str(device), "threads": int(torch.get_num_threads()),
        "train_seconds": float(time.perf_counter() - start),
        "config": _plain({"train": dict(train_cfg), "remap": cfg}),
    }
    meta.update(_plain(artifacts.provenance({"train": dict(train_cfg), "remap": cfg})))
    reference = {"embedding": torch.from_numpy(ref_emb.astype(np.float32)),
                 "star_id": table["star_id"].astype(str).to_numpy()[ref_rows].tolist(),
                 "spectrum_id": table["spectrum_id"].astype(str).to_numpy()[ref_rows].tolist()}
    write_remap_folder(out_dir, model, meta, pd.DataFrame(history), reference)
    checkpoint.remove()  # the finished folder supersedes it; a rerun must not resume from it
    say(log, f"deep_remap member {member} ({variant}): held-out RMSE vs catalogue labels "
             + ", ".join(f"{k[5:]} {v:.4g}" for k, v in valid_rmse.items())
             + f"; {meta['train_seconds']:.0f} s")
    return meta


def write_remap_folder(out_dir: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any],
                       history: pd.DataFrame, reference: Mapping[str, Any]) -> None:
    """model.pt (weights + meta + reference embeddings), history.csv, then model.json (last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with artifacts.atomic_path(out_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": state, "meta": _plain(meta), "reference": dict(reference)}, tmp)
    with artifacts.atomic_path(out_dir / HISTORY_FILE) as tmp:
        history.to_csv(tmp, index=False)
    artifacts.save_json(out_dir / META_FILE, meta)


def load_reference(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The reference embeddings and ids stored with a deep_remap member."""
    saved = torch.load(Path(model_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    if "reference" not in saved:
        raise ValueError(f"{model_dir}: no reference embeddings (not a deep_remap model folder)")
    return saved["reference"]


# ---------------------------------------------------------------- ensemble calibration

ENSEMBLE_CALIBRATION = "ensemble_calibration.json"


def calibrate_ensemble(flux_path: str | os.PathLike, table_path: str | os.PathLike,
                       model_dirs: Sequence[str | os.PathLike], cfg: Mapping[str, Any],
                       out_path: str | os.PathLike, log: Callable[[str], Any] = print
                       ) -> dict[str, Any]:
    """One temperature per head for the averaged distribution of all members, on the same
    held-out `valid` split the members were calibrated on (``cfg`` = the remap calibration
    section). Written as JSON; predict uses these instead of the members' own temperatures."""
    from ..train import load_member
    from .calibration import (convolved_pit, fit_ensemble_temperature,
                              fit_temperature_coverage, mixture_nll)
    from .predict import _bins

    members = [load_member(d, "cpu") for d in model_dirs]
    meta = members[0][1]
    labels, bins = list(meta["labels"]), _bins(meta)
    table = artifacts.load_table(table_path)
    rows = _rows(table, "observed", "valid", labels)
    flux = np.ascontiguousarray(artifacts.load_matrix(flux_path)[rows], dtype=np.float32)
    values = table[labels].to_numpy(dtype=np.float64)[rows]
    error_cols = [f"e_{name}" for name in labels]
    errors = (table.loc[rows, error_cols].to_numpy(dtype=np.float64)
              if cfg["use_label_errors"] and all(c in table for c in error_cols) else None)
    logits = [predict_logits(model, torch.from_numpy(flux))[0] for model, _ in members]
    eps = float(cfg["outlier_fraction"])
    result: dict[str, Any] = {"labels": labels, "n": int(rows.size), "temperatures": [],
                              "members": [str(d) for d in model_dirs], "heads": {}}
    for j, b in enumerate(bins):
        like = bin_likelihoods(values[:, j], b, None if errors is None else errors[:, j])
        floor = 1.0 / (b.high - b.low)
        head = [lg[j] for lg in logits]
        err = None if errors is None else errors[:, j]
        if not cfg["temperature_scaling"]:
            t = 1.0
        elif cfg["ensemble_objective"] == "coverage":
            t = fit_temperature_coverage(head, b, values[:, j], err)
        else:
            t = fit_ensemble_temperature(head, like, outlier_fraction=eps, outlier_density=floor)
        stacked = torch.stack([torch.as_tensor(h, dtype=torch.float64) for h in head])
        log_like = torch.as_tensor(like).clamp_min(1e-300).log()
        entry = {"temperature": t, "objective": cfg["ensemble_objective"],
                 "member_temperatures": [m["temperatures"][j] for _, m in members]}
        for tag, temp in (("before", 1.0), ("after", t)):
            entry[f"nll_{tag}"] = float(mixture_nll(stacked, log_like, temp, eps, floor))
            mix = torch.stack([torch.softmax(h / temp, dim=1) for h in stacked]).mean(0).numpy()
            entry[f"coverage68_{tag}"] = float(np.mean(
                np.abs(convolved_pit(mix, b, values[:, j], err) - 0.5) <= 0.34))
        result["temperatures"].append(t)
        result["heads"][b.name] = entry
        say(log, f"ensemble calibration {b.name} ({cfg['ensemble_objective']}): T = {t:.3f} "
                 f"(members " + ", ".join(f"{m['temperatures'][j]:.3f}" for _, m in members)
                 + f"); on {rows.size} held-out stars, NLL of the averaged distribution "
                   f"{entry['nll_before']:.3f} → {entry['nll_after']:.3f}, 68% coverage of the "
                   f"catalogue labels (noise-convolved) {entry['coverage68_before']:.2f} → "
                   f"{entry['coverage68_after']:.2f}")
    result.update(_plain(artifacts.provenance(cfg)))
    artifacts.save_json(out_path, result)
    return result
