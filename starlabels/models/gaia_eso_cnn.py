"""The Gaia-ESO convolutional network for stellar labels (Ambrosch et al. 2023; group template
of Nepal et al. 2023): three 1-D convolutions, two max-pools, three dense layers, linear output.

The spectrum arrives continuum-normalised (continuum = 1). The network sees ``flux - 1`` so that
the continuum is zero and absorption lines are negative: zero-padding-free 'valid' convolutions
then respond only to spectral features, and masked pixels (set to 1.0 upstream) contribute nothing.

Two extensions beyond the template, each switched in the architecture settings:

* ``variance_head`` — the output layer gives, per label, a mean and a log-variance (a
  heteroscedastic head): the network says how well it knows each label for each star;
* ``noise_channel`` — a second input channel carries each pixel's noise, so the network can tell
  a noisy or masked pixel from a clean one (see :func:`noise_encoding`).

Dropout goes only where ``dropout_after`` names it (``conv`` = after the convolution stack,
``dense_k`` = after the k-th dense layer); the group's notebook drops out after the convolutions
and after the first two dense layers.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import cpu_layers

#: noise of a masked pixel (ivar 0) in :func:`noise_encoding`: as if σ were the continuum itself
MASKED_SIGMA = 1.0
#: σ of the noise channel's reference level: the encoding is log10(σ / SIGMA_REFERENCE), so a
#: pixel at S/N 100 reads 0 and every decade of S/N one unit
SIGMA_REFERENCE = 0.01


def conv_output_length(n_pixels: int, kernel_sizes: Sequence[int],
                       pool_sizes: Sequence[int]) -> int:
    """Length of the feature map after the convolution stack ('valid' convolutions, stride 1).

    Pool ``i`` follows convolution ``i``; convolutions beyond ``len(pool_sizes)`` are not pooled
    (the template pools after the first two of three). Max-pooling floors, as in Keras.
    """
    length = int(n_pixels)
    for i, kernel in enumerate(kernel_sizes):
        length = length - int(kernel) + 1
        if length < 1:
            raise ValueError(f"n_pixels={n_pixels} is too short for convolution {i + 1} "
                             f"(kernel {kernel}): feature map would be empty")
        if i < len(pool_sizes):
            length = length // int(pool_sizes[i])
            if length < 1:
                raise ValueError(f"n_pixels={n_pixels} is too short for max-pool {i + 1} "
                                 f"(size {pool_sizes[i]}): feature map would be empty")
    return length


def noise_encoding(ivar: torch.Tensor) -> torch.Tensor:
    """Per-pixel noise as the network's second channel: log10(σ / 0.01), with masked pixels
    (ivar 0) at σ = 1 (the whole continuum: no information).

    A logarithm keeps S/N 20 and S/N 300 a few units apart instead of an order of magnitude, and
    the reference level puts typical survey pixels near zero, where the first convolution's
    weights start.
    """
    sigma = torch.where(ivar > 0, ivar.clamp_min(1e-30).rsqrt(), torch.full_like(ivar, MASKED_SIGMA))
    return torch.log10(sigma.clamp(max=MASKED_SIGMA) / SIGMA_REFERENCE)


class GaiaEsoCNN(nn.Module):
    """Conv1D(8,10) → LReLU → Pool2 → Conv1D(6,15) → LReLU → Pool2 → Conv1D(4,10) → LReLU →
    Flatten → Dense 64 → 128 → 32 (LReLU each) → Dense(n_outputs), with dropout where
    ``dropout_after`` says.

    Input: flux of shape (batch, n_pixels), continuum-normalised, and with ``noise_channel`` the
    inverse variance of the same shape. Output: (batch, n_labels) labels in the min–max scaled
    units the trainer uses; with ``variance_head`` (batch, 2·n_labels): the means, then the
    log-variances in the same scaled units (:meth:`split`).
    """

    def __init__(self, n_pixels: int, n_labels: int, *, conv_channels: Sequence[int],
                 kernel_sizes: Sequence[int], pool_sizes: Sequence[int],
                 dense_units: Sequence[int], dropout: float, dropout_after: Sequence[str],
                 negative_slope: float, variance_head: bool, noise_channel: bool) -> None:
        super().__init__()
        if len(conv_channels) != len(kernel_sizes):
            raise ValueError(f"conv_channels {list(conv_channels)} and kernel_sizes "
                             f"{list(kernel_sizes)} must have the same length")
        if len(pool_sizes) > len(conv_channels):
            raise ValueError(f"more pool_sizes ({len(pool_sizes)}) than convolutions "
                             f"({len(conv_channels)})")
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        places = ["conv"] + [f"dense_{k + 1}" for k in range(len(dense_units))]
        unknown = sorted(set(dropout_after) - set(places))
        if unknown:
            raise ValueError(f"dropout_after {unknown}: this network has {places}")
        self.n_pixels = int(n_pixels)
        self.n_labels = int(n_labels)
        self.variance_head = bool(variance_head)
        self.noise_channel = bool(noise_channel)
        # Everything needed to rebuild this network besides n_pixels/n_labels, as plain values,
        # so a model folder records the architecture actually used.
        self.architecture = {
            "conv_channels": [int(c) for c in conv_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "pool_sizes": [int(p) for p in pool_sizes],
            "dense_units": [int(u) for u in dense_units],
            "dropout": float(dropout),
            "dropout_after": [p for p in places if p in set(dropout_after)],
            "negative_slope": float(negative_slope),
            "variance_head": self.variance_head,
            "noise_channel": self.noise_channel,
        }
        drop = {p: float(dropout) if p in set(dropout_after) else 0.0 for p in places}

        conv_layers: list[nn.Module] = []
        in_channels = 2 if self.noise_channel else 1
        for i, (channels, kernel) in enumerate(zip(conv_channels, kernel_sizes)):
            conv_layers += [cpu_layers.Conv1d(in_channels, int(channels), int(kernel)),
                            nn.LeakyReLU(negative_slope)]
            if i < len(pool_sizes):
                conv_layers.append(cpu_layers.MaxPool1d(int(pool_sizes[i])))
            in_channels = int(channels)
        if drop["conv"]:
            conv_layers.append(nn.Dropout(drop["conv"]))
        self.features = nn.Sequential(*conv_layers)

        self.flattened_size = in_channels * conv_output_length(n_pixels, kernel_sizes, pool_sizes)
        dense_layers: list[nn.Module] = [nn.Flatten()]
        width = self.flattened_size
        for k, units in enumerate(dense_units):
            dense_layers += [nn.Linear(width, int(units)), nn.LeakyReLU(negative_slope)]
            if drop[f"dense_{k + 1}"]:
                dense_layers.append(nn.Dropout(drop[f"dense_{k + 1}"]))
            width = int(units)
        dense_layers.append(nn.Linear(width, self.n_labels * (2 if self.variance_head else 1)))
        self.head = nn.Sequential(*dense_layers)

    def forward(self, flux: torch.Tensor, ivar: torch.Tensor | None = None) -> torch.Tensor:
        if flux.ndim != 2 or flux.shape[1] != self.n_pixels:
            raise ValueError(f"expected flux of shape (batch, {self.n_pixels}), "
                             f"got {tuple(flux.shape)}")
        # Continuum at zero: lines are negative excursions, masked pixels (1.0) become exactly 0.
        x = (flux - 1.0).unsqueeze(1)
        if self.noise_channel:
            if ivar is None or ivar.shape != flux.shape:
                raise ValueError(f"this network reads the noise too: expected ivar of shape "
                                 f"{tuple(flux.shape)}, got "
                                 f"{None if ivar is None else tuple(ivar.shape)}")
            x = torch.cat([x, noise_encoding(ivar).unsqueeze(1)], dim=1)
        return self.head(self.features(x))

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(means, log-variances or None) from the network's output."""
        if not self.variance_head:
            return output, None
        return output[:, :self.n_labels], output[:, self.n_labels:]
