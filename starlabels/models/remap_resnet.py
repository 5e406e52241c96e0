"""deep-REMAP's backbone: a 1-D ResNet with an embedding layer and one classification head per label.

Stem (strided convolution + max-pool) → stages of residual blocks. The first block of a stage is a
projection block (stride-2 convolution, 1×1 strided shortcut) unless the stage keeps length and
width; the rest are identity blocks. Channels grow as the length shrinks, as in the paper's figure.
A 1×1 convolution then narrows the channels and the map is flattened — not globally pooled: a line's
wavelength is what identifies it, and global pooling would throw the position away. A dense layer
gives the embedding (used by the triplet loss and the nearest-neighbour lookup); each label's head
maps it to logits over that label's bins.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, ReLU. Identity shortcut when shape is kept, else 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, pad, bias=False),
            nn.BatchNorm1d(out_channels), nn.ReLU(inplace=True),
            nn.Conv1d(out_channels, out_channels, kernel_size, 1, pad, bias=False),
            nn.BatchNorm1d(out_channels))
        self.projection = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(nn.Conv1d(in_channels, out_channels, 1, stride, bias=False),
                                       nn.BatchNorm1d(out_channels))
                         if self.projection else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class RemapResNet(nn.Module):
    """Input (batch, n_pixels) continuum-normalised flux → (list of per-label logits, embedding)."""

    def __init__(self, n_pixels: int, n_labels: int, *, n_bins: Sequence[int],
                 stem_channels: int, stem_kernel: int, stage_channels: Sequence[int],
                 blocks_per_stage: Sequence[int], kernel_size: int, head_channels: int,
                 embedding_dim: int, dropout: float) -> None:
        super().__init__()
        if len(n_bins) != n_labels:
            raise ValueError(f"n_bins {list(n_bins)} must give one bin count per label "
                             f"({n_labels} labels)")
        if len(stage_channels) != len(blocks_per_stage):
            raise ValueError("stage_channels and blocks_per_stage must have the same length")
        self.n_pixels, self.n_labels = int(n_pixels), int(n_labels)
        self.architecture = {
            "n_bins": [int(b) for b in n_bins], "stem_channels": int(stem_channels),
            "stem_kernel": int(stem_kernel), "stage_channels": [int(c) for c in stage_channels],
            "blocks_per_stage": [int(b) for b in blocks_per_stage],
            "kernel_size": int(kernel_size), "head_channels": int(head_channels),
            "embedding_dim": int(embedding_dim), "dropout": float(dropout)}
        layers: list[nn.Module] = [
            nn.Conv1d(1, stem_channels, stem_kernel, 2, stem_kernel // 2, bias=False),
            nn.BatchNorm1d(stem_channels), nn.ReLU(inplace=True), nn.MaxPool1d(2)]
        channels = stem_channels
        for stage, (width, depth) in enumerate(zip(stage_channels, blocks_per_stage)):
            for block in range(depth):
                # the first stage keeps the stem's length; later stages halve it and widen
                stride = 2 if block == 0 and stage > 0 else 1
                layers.append(ResidualBlock(channels, int(width), kernel_size, stride))
                channels = int(width)
        layers += [nn.Conv1d(channels, head_channels, 1, bias=False),
                   nn.BatchNorm1d(head_channels), nn.ReLU(inplace=True), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(2, 1, self.n_pixels)).shape[1]
        self.embedding = nn.Linear(n_flat, embedding_dim)
        self.head_input = nn.Sequential(nn.GELU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Linear(embedding_dim, int(b)) for b in n_bins)

    def embed(self, flux: torch.Tensor) -> torch.Tensor:
        # flux − 1: continuum at zero, lines negative, masked pixels (set to 1) silent
        return self.embedding(self.features((flux - 1.0).unsqueeze(1)))

    def forward(self, flux: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        embedding = self.embed(flux)
        hidden = self.head_input(embedding)
        return [head(hidden) for head in self.heads], embedding

    def backbone_parameters(self, parts: Sequence[str]) -> list[nn.Parameter]:
        """Parameters of named parts ('stem', 'stage1'…'stageN', 'neck', 'embedding', 'heads'),
        used to freeze layers while fine-tuning."""
        groups = self.parameter_groups()
        unknown = sorted(set(parts) - set(groups))
        if unknown:
            raise ValueError(f"unknown layer group(s) {unknown}; known: {sorted(groups)}")
        return [p for name in parts for p in groups[name]]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        mods = list(self.features)
        groups: dict[str, list[nn.Parameter]] = {"stem": [p for m in mods[:4]
                                                          for p in m.parameters()]}
        i = 4
        for stage, depth in enumerate(self.architecture["blocks_per_stage"], start=1):
            groups[f"stage{stage}"] = [p for m in mods[i:i + depth] for p in m.parameters()]
            i += depth
        groups["neck"] = [p for m in mods[i:] for p in m.parameters()]
        groups["embedding"] = list(self.embedding.parameters())
        groups["heads"] = list(self.heads.parameters())
        return groups
