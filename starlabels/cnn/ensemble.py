"""A regression-CNN ensemble as one estimator: the members' outputs in label units and their
combination as a deep ensemble (Lakshminarayanan et al. 2017).

For member k with mean μ_k and variance σ²_k (its variance head; 0 without one):

* label            = mean_k μ_k
* ``err_members``  = std_k μ_k (the members' disagreement: the old ensemble "std")
* ``err_raw``      = sqrt(mean_k σ²_k + var_k μ_k): the mixture's total variance, uncalibrated.

The calibrated ``err`` scales ``err_raw`` (:mod:`starlabels.cnn.calibration`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..members import label_scaling
from .train import LOG_VARIANCE_RANGE


def reads_noise(members: Sequence[tuple[nn.Module, Mapping[str, Any]]]) -> bool:
    """Whether any member reads the inverse variances (a noise channel)."""
    return any(getattr(model, "noise_channel", False) for model, _ in members)


@torch.inference_mode()
def member_outputs(members: Sequence[tuple[nn.Module, Mapping[str, Any]]], flux: torch.Tensor,
                   ivar: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, variances) of one batch in label units, float64, shape (members, batch, labels);
    a member without a variance head contributes variance 0. Inference runs in fp32 even on
    CUDA: bf16 outputs would quantise labels to ~0.4 % of their range."""
    means, variances = [], []
    device = flux.device
    for model, meta in members:
        low, span = label_scaling(meta, device)
        mean, log_variance = model.split(model(flux, ivar if model.noise_channel else None))
        means.append(mean.double() * span + low)
        variances.append(torch.zeros_like(means[-1]) if log_variance is None else
                         log_variance.double().clamp(*LOG_VARIANCE_RANGE).exp() * span ** 2)
    return torch.stack(means), torch.stack(variances)


def combine(means: np.ndarray | torch.Tensor, variances: np.ndarray | torch.Tensor
            ) -> dict[str, np.ndarray]:
    """The deep-ensemble combination of (members, rows, labels) arrays: ``mean``,
    ``err_members`` (population std of the member means), ``err_raw`` (sqrt of mean member
    variance + variance of member means)."""
    means = torch.as_tensor(means, dtype=torch.float64)
    variances = torch.as_tensor(variances, dtype=torch.float64)
    spread = means.var(dim=0, correction=0)
    return {"mean": means.mean(dim=0).cpu().numpy(),
            "err_members": spread.sqrt().cpu().numpy(),
            "err_raw": (variances.mean(dim=0) + spread).sqrt().cpu().numpy()}
