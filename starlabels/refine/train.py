"""Training the emulator on the cleaned training stars: which pixels each censored abundance
ratio may move, the untrained model of the configured kind, and the training itself."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..labels import ELEMENT_RATIOS, LABEL_ELEMENTS
from .emulator import (Emulator, build_emulator, chi2_red, history_frame, train_payne,
                       train_quadratic)

Log = Callable[[str], Any]


@dataclass
class TrainingSet:
    """Spectra (N, P), their inverse variances and labels (N, K) with catalogue errors."""
    flux: torch.Tensor
    ivar: torch.Tensor
    labels: torch.Tensor
    errors: torch.Tensor | None = None


def censored_pixels(labels: Sequence[str], wavelength: np.ndarray, lines: pd.DataFrame,
                    half_width: float) -> dict[int, np.ndarray]:
    """Pixels (boolean (P,)) within ``half_width`` Å of the lines of each abundance ratio's
    element, by label index; labels whose element has no line on the grid are left out (the
    spectrum says nothing about them, and the fit will say so)."""
    out = {}
    for i, label in enumerate(labels):
        if label not in ELEMENT_RATIOS:
            continue
        centres = lines.loc[lines["element"].isin(LABEL_ELEMENTS[label]),
                            "wavelength_air"].to_numpy()
        near = np.zeros(len(wavelength), dtype=bool)
        for w0 in centres:
            near |= np.abs(wavelength - w0) <= half_width
        if near.any():
            out[i] = near
    return out


def build_for_training(cfg: Mapping[str, Any], labels: Sequence[str], n_pixels: int,
                       low: np.ndarray, high: np.ndarray,
                       censored: Mapping[int, np.ndarray]) -> Emulator:
    """An untrained emulator of ``cfg``'s kind, with the censored labels' pixels."""
    k = len(labels)
    if cfg["kind"] == "payne":
        main = [i for i in range(k) if i not in censored]
        blocks = [{"labels": main, "n_basis": cfg["n_basis"]}]
        blocks += [{"labels": main + [c], "n_basis": cfg["element_basis"]} for c in censored]
        architecture = {"hidden": cfg["hidden"], "blocks": blocks,
                        "pixel_masks": [None, *censored.values()]}
    else:
        architecture = {"label_pixels": dict(censored)}
    return build_emulator(cfg["kind"], k, n_pixels, low, high, architecture)


def train_emulator(train: TrainingSet, valid: TrainingSet | None, cfg: Mapping[str, Any], *,
                   labels: Sequence[str], wavelength: np.ndarray, lines: pd.DataFrame | None,
                   log: Log = print) -> tuple[Emulator, pd.DataFrame, dict[str, Any]]:
    """Train the emulator of ``cfg`` (the ``refine`` section's ``emulator`` block) on ``train``;
    ``valid`` spectra, never trained on, give the validation χ² at their catalogue labels.

    Returns (the emulator in eval mode, its history, a summary for the side-car)."""
    device = train.flux.device
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    low = train.labels.min(0).values.double().cpu().numpy()
    high = train.labels.max(0).values.double().cpu().numpy()
    censored = censored_pixels(labels, wavelength, lines, cfg["line_half_width"]) \
        if cfg["censor"] and lines is not None else {}
    emulator = build_for_training(cfg, labels, train.flux.shape[1], low, high, censored)
    emulator = emulator.to(device)
    start = time.perf_counter()
    x = emulator.scale(train.labels)
    emulator.train()
    if emulator.kind == "quadratic":
        variance = None
        if cfg["deconvolve_label_errors"] and train.errors is not None:
            variance = (train.errors / emulator.label_half_range) ** 2
        history = train_quadratic(emulator, train.flux, train.ivar, x, cfg, log, variance)
    else:
        history = train_payne(emulator, train.flux, train.ivar, x, cfg, generator, log)
    emulator.eval()
    emulator.requires_grad_(False)
    valid_chi2 = float("nan")
    if valid is not None and len(valid.labels):
        valid_chi2 = float(chi2_red(emulator, valid.flux, valid.ivar,
                                    emulator.scale(valid.labels)).median())
    rows = [dict(h, valid_chi2_red_median=float("nan")) for h in history]
    rows[-1]["valid_chi2_red_median"] = valid_chi2
    seconds = time.perf_counter() - start
    log(f"emulator: validation median χ²/pixel at the catalogue labels {valid_chi2:.3f}; "
        f"trained in {seconds:.1f} s")
    summary = {"train_seconds": seconds, "valid_chi2_red_median": valid_chi2,
               "train_chi2_red_median": rows[-1]["train_chi2_red_median"],
               "median_s": float(emulator.s2.sqrt().median()),
               "censored_pixels": {labels[i]: int(m.sum()) for i, m in censored.items()}}
    return emulator, history_frame(rows), summary
