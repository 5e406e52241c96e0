"""Training the emulator on the cleaned training stars: which pixels each censored abundance
ratio may move, the untrained model of the configured kind, and the training itself.

**Latent nuisances.** A spectrum depends on more than the catalogue's labels: microturbulence,
rotation and macroturbulence change line depths and widths, and the catalogue gives none of
them. An emulator of the labels alone averages over them, and a fit then moves the labels to
mimic them (on demo_ges, seed 1234's run at 2471ab0, refined [Fe/H] errors correlated with the
true microturbulence at ρ = 0.39 and log g's with the rotation at ρ = 0.31). With
``latent_nuisances`` = M the emulator learns M more inputs: a first emulator of the labels
alone is trained, the training stars' residuals from it (whitened by σ² + s²_λ) are
decomposed into principal components, and each star's scores on the first M become its
latent values (unit variance); the final emulator is trained on labels and latents together.
The per-star fit frees the latents like the other nuisances (start 0, the training stars'
mean). On that run the first component followed the S/N (ρ 0.34), the second and third the
true microturbulence and rotation (|ρ| 0.25–0.59), none a label (|ρ| ≤ 0.07).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..labels import ELEMENT_RATIOS, LABEL_ELEMENTS
from .emulator import (Emulator, build_emulator, chi2_red, history_frame,
                       pixel_weights, train_payne, train_quadratic)

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


def latent_names(n_latent: int) -> list[str]:
    """The emulator's names of its latent nuisance inputs (after the labels)."""
    return [f"latent_{j}" for j in range(int(n_latent))]


def latent_scores(emulator: Emulator, flux: torch.Tensor, ivar: torch.Tensor, x: torch.Tensor,
                  n_latent: int, clip_sigma: float) -> tuple[torch.Tensor, list[float]]:
    """Each training star's scores (N, M) on the first ``n_latent`` principal components of its
    whitened residual from ``emulator`` at its scaled labels ``x``, scaled to unit variance,
    and the share of the residuals' variance each component holds. Residuals beyond
    ``clip_sigma`` (defects the clean stage kept) are clipped so one star cannot make a
    component its own; each component's sign puts its largest loading positive."""
    with torch.no_grad():
        model = torch.cat([emulator(x[i:i + 1024]) for i in range(0, len(x), 1024)])
        white = ((flux - model) * pixel_weights(ivar, emulator.s2).sqrt()).clamp(-clip_sigma,
                                                                            clip_sigma)
        white = (white - white.mean(0)).double()
        # the leading components from the eigenvectors of the smaller Gram matrix: on demo_ges
        # (1 926 stars × 7 852 pixels, one thread) the full SVD took 20 of the emulator's 57 s
        # of training, this 3 s, with the same components
        if white.shape[0] <= white.shape[1]:
            power, vectors = torch.linalg.eigh(white @ white.T)
            power, u = power.flip(0)[:n_latent], vectors.flip(1)[:, :n_latent]
            vt = (u.T @ white) / power.clamp_min(1e-300).sqrt()[:, None]
        else:
            power, vectors = torch.linalg.eigh(white.T @ white)
            power, vt = power.flip(0)[:n_latent], vectors.flip(1)[:, :n_latent].T
            u = (white @ vt.T) / power.clamp_min(1e-300).sqrt()
        sign = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True))).squeeze(1)
        scores = u * sign * float(np.sqrt(len(x)))
        share = (power / (white ** 2).sum()).tolist()
    return scores.float(), [float(v) for v in share]


def train_emulator(train: TrainingSet, valid: TrainingSet | None, cfg: Mapping[str, Any], *,
                   labels: Sequence[str], wavelength: np.ndarray, lines: pd.DataFrame | None,
                   log: Log = print) -> tuple[Emulator, pd.DataFrame, dict[str, Any]]:
    """Train the emulator of ``cfg`` (the ``refine`` section's ``emulator`` block) on ``train``;
    ``valid`` spectra, never trained on, give the validation χ² at their catalogue labels (and
    latents 0). With ``latent_nuisances`` > 0 the emulator's inputs are the labels and then
    the latents (module docstring).

    Returns (the emulator in eval mode, its history, a summary for the side-car)."""
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    censored = censored_pixels(labels, wavelength, lines, cfg["line_half_width"]) \
        if cfg["censor"] and lines is not None else {}
    start = time.perf_counter()
    n_latent = int(cfg["latent_nuisances"])
    first = dict(cfg, pretrain_epochs=cfg["latent_first_pretrain_epochs"]) if n_latent else cfg
    emulator, history = _train_once(train.flux, train.ivar, train.labels, train.errors, first,
                                    list(labels), censored, generator, log)
    latent_share: list[float] = []
    if n_latent:
        scores, latent_share = latent_scores(emulator, train.flux, train.ivar,
                                             emulator.scale(train.labels), n_latent,
                                             cfg["clip_sigma"])
        log(f"emulator: {n_latent} latent nuisances from the residuals of the labels' emulator "
            f"(shares of the residual variance {', '.join(f'{v:.3f}' for v in latent_share)})")
        errors = None if train.errors is None else \
            torch.cat([train.errors, torch.zeros_like(scores)], dim=1)
        earlier = [dict(h, phase=f"labels_only_{h['phase']}") for h in history]
        emulator, history = _train_once(train.flux, train.ivar,
                                        torch.cat([train.labels, scores], dim=1), errors, cfg,
                                        [*labels, *latent_names(n_latent)], censored,
                                        generator, log)
        history = earlier + history
    valid_chi2 = float("nan")
    if valid is not None and len(valid.labels):
        # latents 0: the training stars' mean nuisances
        inputs = torch.cat([valid.labels, torch.zeros((len(valid.labels), n_latent),
                                                      device=valid.labels.device)], dim=1)
        valid_chi2 = float(chi2_red(emulator, valid.flux, valid.ivar,
                                    emulator.scale(inputs)).median())
    rows = [dict(h, valid_chi2_red_median=float("nan")) for h in history]
    rows[-1]["valid_chi2_red_median"] = valid_chi2
    seconds = time.perf_counter() - start
    log(f"emulator: validation median χ²/pixel at the catalogue labels {valid_chi2:.3f}; "
        f"trained in {seconds:.1f} s")
    summary = {"train_seconds": seconds, "valid_chi2_red_median": valid_chi2,
               "train_chi2_red_median": rows[-1]["train_chi2_red_median"],
               "median_s": float(emulator.s2.sqrt().median()),
               "censored_pixels": {labels[i]: int(m.sum()) for i, m in censored.items()},
               "latent_variance_share": latent_share}
    return emulator, history_frame(rows), summary


def _train_once(flux: torch.Tensor, ivar: torch.Tensor, inputs: torch.Tensor,
                errors: torch.Tensor | None, cfg: Mapping[str, Any], names: Sequence[str],
                censored: Mapping[int, np.ndarray], generator: torch.Generator, log: Log
                ) -> tuple[Emulator, list[dict]]:
    """One emulator of ``inputs`` (physical labels, then latents), trained and in eval mode."""
    low = inputs.min(0).values.double().cpu().numpy()
    high = inputs.max(0).values.double().cpu().numpy()
    emulator = build_for_training(cfg, names, flux.shape[1], low, high, censored)
    emulator = emulator.to(flux.device)
    x = emulator.scale(inputs)
    emulator.train()
    if emulator.kind == "quadratic":
        variance = None
        if cfg["deconvolve_label_errors"] and errors is not None:
            variance = (errors / emulator.label_half_range) ** 2
        history = train_quadratic(emulator, flux, ivar, x, cfg, log, variance)
    else:
        history = train_payne(emulator, flux, ivar, x, cfg, generator, log)
    emulator.eval()
    emulator.requires_grad_(False)
    return emulator, history
