"""Network architectures for label regression, chosen by the config's ``method``.

``build_model`` builds the network a method's record (:mod:`starlabels.methods`) names, with the
architecture settings completed from the schema, so a saved model folder (method + architecture
in ``model.json``) can always be rebuilt for prediction.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from .. import config, methods
from .gaia_eso_cnn import GaiaEsoCNN, conv_output_length
from .remap_resnet import RemapResNet

__all__ = ["GaiaEsoCNN", "RemapResNet", "build_model", "conv_l2_penalty", "conv_output_length"]


def build_model(method: str, n_pixels: int, n_labels: int,
                architecture: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network for ``method`` with the given architecture settings (keys
    left out take the schema's defaults for the method's architecture section)."""
    record = methods.get(method)
    constructor = record.network.resolve()
    architecture = config.section(record.architecture, architecture)
    accepted = set(inspect.signature(constructor).parameters) - {"self", "n_pixels", "n_labels"}
    unknown = sorted(set(architecture) - accepted)
    if unknown:
        raise ValueError(f"method {method!r}: unknown architecture key(s) {unknown}; "
                         f"accepted keys are {sorted(accepted)}")
    return constructor(n_pixels=int(n_pixels), n_labels=int(n_labels), **architecture)


def conv_l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared convolution kernels (biases excluded), as Keras' ``kernel_regularizer=l2``.

    The trainer multiplies this by the config's ``conv_l2`` weight (0.005 in the paper).
    """
    terms = [m.weight.pow(2).sum() for m in model.modules() if isinstance(m, nn.Conv1d)]
    if not terms:
        param = next(model.parameters())
        return torch.zeros((), device=param.device, dtype=param.dtype)
    return torch.stack(terms).sum()
