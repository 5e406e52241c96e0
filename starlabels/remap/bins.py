"""Regression as classification: a label's range cut into bins of fixed width.

A bin is identified by its centre. A binned distribution ``p`` (probabilities over the bins)
summarises as the probability-weighted mean, its standard deviation (which includes the bin's own
width, ``w²/12``, so a distribution that puts everything in one bin is not claimed exact), and
quantiles from the piecewise-linear CDF (each bin's mass spread uniformly over its width).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class LabelBins:
    """Bins ``[low + i·width, low + (i+1)·width)`` covering ``[low, high]``."""

    name: str
    low: float
    high: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"bins for {self.name}: width must be > 0, got {self.width}")
        if not self.high > self.low:
            raise ValueError(f"bins for {self.name}: range [{self.low}, {self.high}] is empty")

    @property
    def n_bins(self) -> int:
        # round() guards against 7200-3800 = 3399.9999 style float error
        return max(1, int(np.ceil(round((self.high - self.low) / self.width, 6))))

    @property
    def edges(self) -> np.ndarray:
        return self.low + self.width * np.arange(self.n_bins + 1)

    @property
    def centres(self) -> np.ndarray:
        return self.low + self.width * (np.arange(self.n_bins) + 0.5)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each value; values outside the range go to the first/last bin."""
        idx = np.floor((np.asarray(values, dtype=np.float64) - self.low) / self.width)
        return np.clip(idx, 0, self.n_bins - 1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low": float(self.low), "high": float(self.high),
                "width": float(self.width), "n_bins": self.n_bins}


def label_bins(labels: Sequence[str], cfg: Mapping[str, Any]) -> list[LabelBins]:
    """One :class:`LabelBins` per label from the config's ``bins`` section ``{label: [lo, hi, w]}``."""
    missing = [name for name in labels if name not in cfg]
    if missing:
        raise ValueError(f"remap.bins has no range for label(s) {missing}; give [low, high, width]")
    return [LabelBins(name, float(cfg[name][0]), float(cfg[name][1]), float(cfg[name][2]))
            for name in labels]


def summarize(prob: np.ndarray, bins: LabelBins,
              quantiles: Sequence[float] = (0.16, 0.84)) -> dict[str, np.ndarray]:
    """Mean, standard deviation and quantiles of binned distributions ``prob`` (n, n_bins)."""
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / prob.sum(axis=1, keepdims=True)
    centres = bins.centres
    mean = prob @ centres
    var = prob @ centres**2 - mean**2 + bins.width**2 / 12.0
    out = {"mean": mean, "std": np.sqrt(np.clip(var, 0.0, None))}
    cdf = np.concatenate([np.zeros((len(prob), 1)), np.cumsum(prob, axis=1)], axis=1)
    edges = bins.edges
    for q in quantiles:
        out[f"q{round(q * 100):02d}"] = _cdf_quantile(cdf, edges, q)
    return out


def _cdf_quantile(cdf: np.ndarray, edges: np.ndarray, q: float) -> np.ndarray:
    """Invert the piecewise-linear CDF (values at the bin edges) at probability ``q``, per row."""
    j = np.clip((cdf < q).sum(axis=1) - 1, 0, len(edges) - 2)  # bin where the CDF crosses q
    rows = np.arange(len(cdf))
    lo, hi = cdf[rows, j], cdf[rows, j + 1]
    frac = np.where(hi > lo, (q - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)
    return edges[j] + np.clip(frac, 0.0, 1.0) * (edges[j + 1] - edges[j])


def gaussian_targets(values: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soft targets: a Gaussian of width ``sigma`` (label units) centred on each continuous label,
    evaluated at the bin centres and normalised. Near bins share the mass, far bins get none."""
    z = (centres[None, :] - values[:, None]) / sigma
    weights = torch.exp(-0.5 * z * z)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-30)


def bins_from_meta(meta: Mapping[str, Any]) -> list[LabelBins]:
    """The bins a deep-REMAP member was trained with (its ``model.json``'s ``bins``)."""
    return [LabelBins(b["name"], b["low"], b["high"], b["width"]) for b in meta["bins"]]
