"""The Gaia-ESO convolutional network for stellar labels (Ambrosch et al. 2023; group template
of Nepal et al. 2023): three 1-D convolutions, two max-pools, three dense layers, linear output.

The spectrum arrives continuum-normalised (continuum = 1). The network sees ``flux - 1`` so that
the continuum is zero and absorption lines are negative: zero-padding-free 'valid' convolutions
then respond only to spectral features, and masked pixels (set to 1.0 upstream) contribute nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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


class GaiaEsoCNN(nn.Module):
    """Conv1D(8,10) → LReLU → Pool2 → Conv1D(6,15) → LReLU → Pool2 → Conv1D(4,10) → LReLU →
    Dropout → Flatten → Dense 64 → 128 → 32 (LReLU + Dropout each) → Dense(n_labels).

    Input: flux of shape (batch, n_pixels), continuum-normalised. Output: (batch, n_labels) labels
    in the min–max scaled units the trainer uses.
    """

    def __init__(self, n_pixels: int, n_labels: int, *, conv_channels: Sequence[int],
                 kernel_sizes: Sequence[int], pool_sizes: Sequence[int],
                 dense_units: Sequence[int], dropout: float, negative_slope: float) -> None:
        super().__init__()
        if len(conv_channels) != len(kernel_sizes):
            raise ValueError(f"conv_channels {list(conv_channels)} and kernel_sizes "
                             f"{list(kernel_sizes)} must have the same length")
        if len(pool_sizes) > len(conv_channels):
            raise ValueError(f"more pool_sizes ({len(pool_sizes)}) than convolutions "
                             f"({len(conv_channels)})")
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        self.n_pixels = int(n_pixels)
        self.n_labels = int(n_labels)
        # Everything needed to rebuild this network besides n_pixels/n_labels, as plain values,
        # so a model folder records the architecture actually used.
        self.architecture = {
            "conv_channels": [int(c) for c in conv_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "pool_sizes": [int(p) for p in pool_sizes],
            "dense_units": [int(u) for u in dense_units],
            "dropout": float(dropout),
            "negative_slope": float(negative_slope),
        }

        conv_layers: list[nn.Module] = []
        in_channels = 1
        for i, (channels, kernel) in enumerate(zip(conv_channels, kernel_sizes)):
            conv_layers += [nn.Conv1d(in_channels, int(channels), int(kernel)),
                            nn.LeakyReLU(negative_slope)]
            if i < len(pool_sizes):
                conv_layers.append(nn.MaxPool1d(int(pool_sizes[i])))
            in_channels = int(channels)
        # The template drops out once after the last convolution, before flattening.
        conv_layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*conv_layers)

        self.flattened_size = in_channels * conv_output_length(n_pixels, kernel_sizes, pool_sizes)
        dense_layers: list[nn.Module] = [nn.Flatten()]
        width = self.flattened_size
        for units in dense_units:
            dense_layers += [nn.Linear(width, int(units)), nn.LeakyReLU(negative_slope),
                             nn.Dropout(dropout)]
            width = int(units)
        dense_layers.append(nn.Linear(width, self.n_labels))
        self.head = nn.Sequential(*dense_layers)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        if flux.ndim != 2 or flux.shape[1] != self.n_pixels:
            raise ValueError(f"expected flux of shape (batch, {self.n_pixels}), "
                             f"got {tuple(flux.shape)}")
        # Continuum at zero: lines are negative excursions, masked pixels (1.0) become exactly 0.
        x = (flux - 1.0).unsqueeze(1)
        return self.head(self.features(x))
