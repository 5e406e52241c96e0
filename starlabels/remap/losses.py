"""The deep-REMAP training losses.

* :func:`focal_cost_loss` — focal cross-entropy against Gaussian-smoothed targets, plus the
  expected cost under a cost matrix that grows with the distance between predicted and true bin.
  Plain cross-entropy on a hard bin cannot tell a confident near miss from a confident far miss
  (both put ~0 on the true bin); the cost term can, so near misses are cheaper.
* :func:`triplet_loss` — pulls the embeddings of stars with similar labels together and pushes
  stars with different labels apart (batch-hard or semi-hard mining), which is what makes the
  embedding usable for "most similar known star" lookups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .bins import gaussian_targets


def cost_matrix(n_bins: int, sigma_bins: float, device: torch.device | None = None) -> torch.Tensor:
    """C[t, k] = 1 − exp(−(k − t)² / 2σ²): 0 on the diagonal, → 1 for bins far from the truth."""
    if sigma_bins <= 0:
        raise ValueError(f"cost_sigma_bins must be > 0, got {sigma_bins}")
    k = torch.arange(n_bins, dtype=torch.float32, device=device)
    return 1.0 - torch.exp(-0.5 * ((k[None, :] - k[:, None]) / sigma_bins) ** 2)


def focal_cost_loss(logits: torch.Tensor, values: torch.Tensor, centres: torch.Tensor,
                    width: float, *, gamma: float = 2.0, target_sigma_bins: float = 1.0,
                    cost_weight: float = 1.0, cost_sigma_bins: float = 2.0,
                    cost: torch.Tensor | None = None,
                    errors: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of focal CE(soft target) + ``cost_weight`` · E_p[C[true bin, ·]].

    ``logits`` (n, K) for one label; ``values`` (n,) its true continuous values; ``centres`` (K,)
    the bin centres; ``width`` the bin width. ``gamma`` = 0 gives plain (soft) cross-entropy; larger
    γ down-weights bins the network already gets right, the asymmetric/focal idea for imbalanced
    classes (few metal-poor or hot stars).

    ``errors`` (n,), catalogue σ of noisy labels (0 or NaN = exact): for those rows the focal term
    is on the probability of *observing* the label, P = Σ_k p_k·N(bin k | value, σ²) — the
    network is then fitted to the true label's distribution (deconvolved) rather than learning the
    catalogue's noise as part of every prediction.
    """
    logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    target = gaussian_targets(values.float(), centres, target_sigma_bins * width)
    modulation = (1.0 - p).clamp_min(0.0).pow(gamma) if gamma else 1.0
    focal = -(target * modulation * log_p).sum(dim=1)
    if errors is not None:
        noisy = torch.isfinite(errors) & (errors > 0)
        if noisy.any():
            sigma = torch.where(noisy, errors, torch.ones_like(errors)).float()
            z_hi = (centres[None, :] + width / 2 - values[:, None]) / sigma[:, None]
            z_lo = (centres[None, :] - width / 2 - values[:, None]) / sigma[:, None]
            mass = torch.special.ndtr(z_hi) - torch.special.ndtr(z_lo)
            log_obs = torch.logsumexp(log_p + mass.clamp_min(1e-30).log(), dim=1)
            obs_mod = (1.0 - log_obs.exp()).clamp_min(0.0).pow(gamma) if gamma else 1.0
            focal = torch.where(noisy, -obs_mod * log_obs, focal)
    if not cost_weight:
        return focal.mean()
    if cost is None:
        cost = cost_matrix(logits.shape[1], cost_sigma_bins, logits.device)
    true_bin = torch.clamp(((values - centres[0]) / width).round().long(), 0, logits.shape[1] - 1)
    expected_cost = (p * cost[true_bin]).sum(dim=1)
    return (focal + cost_weight * expected_cost).mean()


def triplet_loss(embedding: torch.Tensor, scaled_labels: torch.Tensor, *, margin: float = 0.2,
                 mining: str = "batch_hard", positive_radius: float = 0.05,
                 negative_radius: float = 0.15) -> torch.Tensor:
    """Triplet margin loss on L2-normalised embeddings, triplets mined inside the batch.

    Positives of an anchor: other stars whose label vector (each label scaled to [0, 1] over its
    bin range) lies within ``positive_radius``; negatives: farther than ``negative_radius``.
    ``batch_hard``: per anchor, the farthest positive against the nearest negative.
    ``semi_hard``: per anchor–positive pair, the nearest negative that is still farther than the
    positive (within the margin); pairs without one fall back to the nearest negative.
    Returns 0 (with a gradient path) when the batch holds no valid triplet.
    """
    if mining not in ("batch_hard", "semi_hard"):
        raise ValueError(f"triplet mining {mining!r}: choose 'batch_hard' or 'semi_hard'")
    emb = F.normalize(embedding.float(), dim=1)
    dist = torch.cdist(emb, emb)
    label_dist = torch.cdist(scaled_labels.float(), scaled_labels.float())
    n = emb.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    positive = (label_dist <= positive_radius) & ~eye
    negative = label_dist > negative_radius
    big = torch.finfo(dist.dtype).max / 4
    if mining == "batch_hard":
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            return emb.sum() * 0.0
        hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).max(dim=1).values
        hardest_neg = torch.where(negative, dist, torch.full_like(dist, big)).min(dim=1).values
        return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    # semi-hard over all anchor–positive pairs
    a_idx, p_idx = torch.nonzero(positive, as_tuple=True)
    keep = negative[a_idx].any(dim=1)
    a_idx, p_idx = a_idx[keep], p_idx[keep]
    if a_idx.numel() == 0:
        return emb.sum() * 0.0
    d_ap = dist[a_idx, p_idx]
    d_an = dist[a_idx]                       # (pairs, n)
    neg = negative[a_idx]
    semi = neg & (d_an > d_ap[:, None]) & (d_an < d_ap[:, None] + margin)
    semi_min = torch.where(semi, d_an, torch.full_like(d_an, big)).min(dim=1).values
    hard_min = torch.where(neg, d_an, torch.full_like(d_an, big)).min(dim=1).values
    d_neg = torch.where(semi.any(dim=1), semi_min, hard_min)
    return F.relu(d_ap - d_neg + margin).mean()
