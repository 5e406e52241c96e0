"""Drop-in layers that train the regression CNN faster on CPU, with the same parameters and outputs.

Measured on the demo_ges network (7 852 pixels, batch 64, one thread, torch 2.13 CPU, AMD EPYC):
oneDNN's convolution backward for these thin 1-D layers (1→8, 8→6, 6→4 channels, kernels 10–15)
takes 4–6× its forward (the 8→6 layer: 68 ms of a 190 ms step), and ``max_pool1d`` runs through
the generic 2-D kernel. Writing both gradients of a stride-1 convolution as forward convolutions
(the input gradient is the output gradient correlated with the flipped kernel, the weight gradient
the input correlated with the output gradient, batch as the channel axis), and the pool as a
reshape and a max, make a training step ≈1.3× faster (four interleaved repeats of 25 steps:
441–608 against 392–425 spectra/s). The deep-REMAP ResNet (batch-normalised, strided, padded)
measured no gain and keeps the stock layers.

Both classes keep ``nn.Conv1d``'s and ``nn.MaxPool1d``'s parameters and state-dict keys, so model
folders written with either load into the other; off the CPU, or outside autograd, they are the
stock layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Stride1Conv1d(torch.autograd.Function):
    """conv1d (stride 1, no dilation, one group, zero padding ``padding``) whose backward is two
    forward convolutions."""

    @staticmethod
    def forward(ctx, flux, weight, bias, padding):  # type: ignore[override]
        ctx.save_for_backward(flux, weight)
        ctx.padding = int(padding)
        ctx.has_bias = bias is not None
        return F.conv1d(flux, weight, bias, padding=ctx.padding)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        flux, weight = ctx.saved_tensors
        pad, kernel = ctx.padding, weight.shape[-1]
        grad_flux = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_flux = F.conv1d(grad, weight.flip(-1).transpose(0, 1), padding=kernel - 1 - pad)
        if ctx.needs_input_grad[1]:
            padded = F.pad(flux, (pad, pad)) if pad else flux
            grad_weight = F.conv1d(padded.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2))
        return grad_flux, grad_weight, grad_bias, None


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` with the faster CPU backward where it applies (stride 1, no dilation, one
    group, zero padding given as a number); the stock layer everywhere else."""

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        if (flux.device.type == "cpu" and torch.is_grad_enabled() and self.stride == (1,)
                and self.dilation == (1,) and self.groups == 1 and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple)):
            return _Stride1Conv1d.apply(flux, self.weight, self.bias, self.padding[0])
        return super().forward(flux)


class MaxPool1d(nn.MaxPool1d):
    """``nn.MaxPool1d(k)`` (stride k, no padding, a trailing partial window dropped) as a reshape
    and a max over the window; the gradient goes to the first maximum, as the stock layer's."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__(int(kernel_size))

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        if flux.device.type != "cpu":
            return super().forward(flux)
        k = int(self.kernel_size)
        usable = flux.shape[-1] // k * k
        return flux[..., :usable].unflatten(-1, (usable // k, k)).max(-1).values
