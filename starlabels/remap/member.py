"""One deep-REMAP ensemble member: pre-train → fine-tune → temperature-scale → model folder.

One call of :func:`train_remap_member` is one Snakemake job (a GPU job on a cluster). It
1. pre-trains the ResNet on the synthetic rows of the training set (degraded, augmented PHOENIX
   spectra) and 2. fine-tunes it on the observed labelled stars (some layer groups frozen, a lower
   rate, optionally replaying synthetic spectra so giants — absent from the dwarf sample — are not
   forgotten), each phase with :func:`starlabels.remap.train.run_phase`;
3. fits one temperature per head on the held-out observed ``valid`` split, which no phase trains
   on or selects by, and records ECE and NLL before and after (:func:`calibrate`);
4. embeds the labelled observed stars, the reference set of the "most similar known star" lookup;
5. writes a self-describing model folder (``model.pt`` with weights, temperatures and reference
   embeddings; ``model.json``; ``history.csv``).

``train_cfg`` is the experiment's ``train`` section (members, seed, device, batch size, threads),
``remap_cfg`` its ``remap`` section; keys they leave out take the configuration schema's defaults.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import artifacts, config
from ..batch import say
from ..labels import check_labels
from ..members import (CHECKPOINT_NAME, MODEL_FILE, keep_resident, plain, start_member,
                       training_inputs, training_set_hash, write_model_folder)
from ..models import build_model
from .bins import LabelBins, label_bins
from .calibration import (bin_likelihoods, expected_calibration_error, fit_temperature,
                          interval_coverage, nll, pit)
from .train import (VARIANTS, LabelledSpectra, MemberCheckpoint, predict_logits, restore_rng,
                    run_phase, validation_rmse, variant_config)


# ---------------------------------------------------------------- calibration

def calibrate(model: nn.Module, data: LabelledSpectra, errors: np.ndarray | None,
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

def usable_rows(table: pd.DataFrame, source: str, split: str, labels: Sequence[str]
                ) -> np.ndarray:
    """Rows of ``source`` (synthetic | observed) in ``split`` whose labels are all finite."""
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
    train_cfg = config.section("train", train_cfg)
    cfg = variant_config(config.section("remap", remap_cfg), variant)
    device, seed, generator = start_member(train_cfg, member, threads)
    table, grid_hash, flux = training_inputs(flux_path, table_path)
    bins = label_bins(labels, cfg["bins"])
    values = table[labels].to_numpy(dtype=np.float64)
    rows = {(src, split): usable_rows(table, src, split, labels)
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
    resident = keep_resident(str(train_cfg["resident"]), device, data_bytes)

    def data(key: tuple[str, str]) -> LabelledSpectra | None:
        r = rows[key]
        errors = None if label_errors is None else label_errors[r]
        return LabelledSpectra(flux[r], values[r], bins, device, errors, resident) if r.size else None

    say(log, f"deep_remap member {member} ({variant}: {VARIANTS[variant]}): synthetic "
             f"{rows['synthetic', 'train'].size}/{rows['synthetic', 'valid'].size}, observed "
             f"{rows['observed', 'train'].size}/{rows['observed', 'valid'].size} train/valid; "
             f"{flux.shape[1]} pixels; bins " + ", ".join(f"{b.name} {b.n_bins}" for b in bins)
        + f"; device {device}, seed {seed}, {torch.get_num_threads()} thread(s)")
    say(log, f"deep_remap member {member}: spectra {data_bytes / 2**30:.2f} GiB, "
             + ("resident on the device" if resident else "kept in host memory, each batch "
                "gathered and copied over") + f" (resident: {train_cfg['resident']})")
    compile_model = bool(train_cfg["compile"])
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
        int(train_cfg["checkpoint_every"]), log)
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
    valid_rmse = validation_rmse(model, obs_valid, bins, temperatures)

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
        "config": plain({"train": dict(train_cfg), "remap": cfg}),
    }
    meta.update(plain(artifacts.provenance({"train": dict(train_cfg), "remap": cfg})))
    reference = {"embedding": torch.from_numpy(ref_emb.astype(np.float32)),
                 "star_id": table["star_id"].astype(str).to_numpy()[ref_rows].tolist(),
                 "spectrum_id": table["spectrum_id"].astype(str).to_numpy()[ref_rows].tolist()}
    write_model_folder(out_dir, model, meta, pd.DataFrame(history), {"reference": reference})
    checkpoint.remove()  # the finished folder supersedes it; a rerun must not resume from it
    say(log, f"deep_remap member {member} ({variant}): held-out RMSE vs catalogue labels "
             + ", ".join(f"{k[5:]} {v:.4g}" for k, v in valid_rmse.items())
             + f"; {meta['train_seconds']:.0f} s")
    return meta


def load_reference(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The reference embeddings and ids stored with a deep_remap member."""
    saved = torch.load(Path(model_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
    if "reference" not in saved:
        raise ValueError(f"{model_dir}: no reference embeddings (not a deep_remap model folder)")
    return saved["reference"]


def train_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
              table: str | os.PathLike, labels: list[str], member: int, cfg: Mapping[str, Any],
              model_dir: str | os.PathLike, method_cfg: Mapping[str, Any], variant: str,
              log: Callable[[str], Any], threads: int | None) -> dict[str, Any]:
    """One member (or ablation variant) of the workflow's train rules (``method_cfg``: the
    ``remap`` section). The ResNet reads the flux only: ``ivar`` is not used."""
    return train_remap_member(flux, table, labels, int(member), cfg, method_cfg, model_dir,
                              variant=variant, log=log, threads=threads)
