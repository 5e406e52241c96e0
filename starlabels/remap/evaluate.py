"""How good and how honest are deep-REMAP's distributions on stars it never trained on?

* :func:`ensemble_probabilities` — the members' averaged distributions for chosen rows,
  calibrated (the ensemble's transform, or the members' own temperatures) or not (T = 1), so
  calibration can be judged before and after;
* :func:`heldout_calibration` — per label, σ/bias of the point estimates, 68% (and other)
  interval coverage, ECE and reliability curves, before and after temperature scaling;
* :func:`ablation_table` — σ and bias on the calibration stars for the recipe with parts switched
  off, as Markdown and as a dict for metrics.json.

Reference labels are the simulator's truth when there is one; otherwise the literature/catalogue
labels of the stars table (then the numbers include the reference's own errors; the output says
which was used).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import artifacts
from ..members import load_member
from .bins import LabelBins, bins_from_meta, summarize
from .calibration import expected_calibration_error, interval_coverage, pit, reliability_curve
from .ensemble import EnsembleTransform
from .train import predict_logits


def member_logits(flux: np.ndarray, model_dirs: Sequence[str | os.PathLike]
                  ) -> tuple[list[tuple[list[np.ndarray], dict[str, Any]]], list[LabelBins],
                             list[str]]:
    """Each member's per-head logits for ``flux`` (and its metadata), the bins and labels."""
    x = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32))
    members = []
    for d in model_dirs:
        model, meta = load_member(d, "cpu")
        members.append((predict_logits(model, x)[0], meta))
    meta = members[0][1]
    return members, bins_from_meta(meta), list(meta["labels"])


def average_probabilities(members: Sequence[tuple[list[np.ndarray], dict[str, Any]]],
                          calibrated: bool = True,
                          ensemble: EnsembleTransform | None = None) -> list[np.ndarray]:
    """Average of the members' probabilities per label: uncalibrated (T = 1) unless
    ``calibrated``; calibrated by the ``ensemble``'s transform when given (its temperatures,
    then its dilation), else with each member's own temperatures."""
    sums: list[np.ndarray] | None = None
    for logits, meta in members:
        if not calibrated:
            temps = [1.0] * len(logits)
        else:
            temps = meta["temperatures"] if ensemble is None else list(ensemble.temperatures)
        probs = [torch.softmax(torch.from_numpy(lg).double() / t, dim=1).numpy()
                 for lg, t in zip(logits, temps)]
        sums = probs if sums is None else [s + p for s, p in zip(sums, probs)]
    mean = [s / len(members) for s in sums]
    if calibrated and ensemble is not None:
        mean = ensemble.apply(mean, bins_from_meta(members[0][1]))
    return mean


def ensemble_probabilities(flux: np.ndarray, model_dirs: Sequence[str | os.PathLike],
                           calibrated: bool = True, ensemble: EnsembleTransform | None = None
                           ) -> tuple[list[np.ndarray], list[LabelBins], list[str]]:
    """:func:`average_probabilities` of the members in ``model_dirs`` for ``flux``."""
    members, bins, labels = member_logits(flux, model_dirs)
    return average_probabilities(members, calibrated, ensemble), bins, labels


def reference_labels(table: pd.DataFrame, truth: pd.DataFrame | None,
                     labels: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """Per row of ``table``: the labels to compare with, and what they are ('true' or 'reference')."""
    if truth is not None:
        ref = table[["star_id"]].merge(truth[["star_id", *labels]], on="star_id", how="left")
        return ref[list(labels)].reset_index(drop=True), "true"
    return table[list(labels)].reset_index(drop=True), "reference"


def _stats(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = pred - ref
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return {"sigma": float("nan"), "bias": float("nan"), "n": 0}
    return {"sigma": float(np.std(diff)), "bias": float(np.mean(diff)), "n": int(diff.size)}


def heldout_calibration(flux: np.ndarray, ref: pd.DataFrame, model_dirs: Sequence[str],
                        levels=(0.5, 0.68, 0.9, 0.95),
                        ensemble: EnsembleTransform | None = None) -> dict[str, Any]:
    """Metrics before/after temperature scaling on held-out rows, plus the curves for plots."""
    out: dict[str, Any] = {"n": int(len(flux)), "labels": {}}
    curves: dict[str, dict[str, Any]] = {}
    members, bins, labels = member_logits(flux, model_dirs)  # one forward pass for both
    for tag, calibrated in (("before", False), ("after", True)):
        probs = average_probabilities(members, calibrated, ensemble)
        for j, (name, b) in enumerate(zip(labels, bins)):
            truth = ref[name].to_numpy(dtype=np.float64)
            ok = np.isfinite(truth)
            p, t = probs[j][ok], truth[ok]
            entry = out["labels"].setdefault(name, {})
            s = summarize(p, b)
            entry.update({f"{k}_{tag}": v for k, v in _stats(s["mean"], t).items()})
            pit_values = pit(p, b, t)
            coverage = interval_coverage(pit_values, levels)
            entry[f"coverage68_{tag}"] = coverage["0.68"]
            entry[f"coverage_{tag}"] = coverage
            entry[f"ece_{tag}"] = expected_calibration_error(p, b.index(t))
            curves.setdefault(name, {})[tag] = {
                "reliability": reliability_curve(p, b.index(t)),
                "coverage": coverage}
    return {"metrics": out, "curves": curves}


def ablation_table(flux: np.ndarray, ref: pd.DataFrame, ref_kind: str,
                   variants: Mapping[str, Sequence[str]], descriptions: Mapping[str, str],
                   ensembles: Mapping[str, EnsembleTransform] | None = None
                   ) -> tuple[dict[str, Any], str]:
    """σ, bias and 68% coverage on the given rows for each variant; (dict, Markdown table).
    ``ensembles[variant]`` replaces the members' own temperatures (the ensemble's
    calibration)."""
    results: dict[str, Any] = {}
    for name, dirs in variants.items():
        probs, bins, labels = ensemble_probabilities(
            flux, list(dirs), calibrated=True, ensemble=(ensembles or {}).get(name))
        entry: dict[str, Any] = {"description": descriptions.get(name, ""),
                                 "n_members": len(dirs)}
        for j, (label, b) in enumerate(zip(labels, bins)):
            truth = ref[label].to_numpy(dtype=np.float64)
            ok = np.isfinite(truth)
            s = summarize(probs[j][ok], b)
            stats = _stats(s["mean"], truth[ok])
            stats["coverage68"] = interval_coverage(pit(probs[j][ok], b, truth[ok]),
                                                    (0.68,))["0.68"]
            entry[label] = stats
        results[name] = entry
    labels = [k for k in next(iter(results.values())) if k not in ("description", "n_members")]
    header = "| variant | members | " + " | ".join(
        f"σ {lab} | bias {lab} | cov68 {lab}" for lab in labels) + " |"
    rule = "|" + "---|" * (2 + 3 * len(labels))
    lines = [header, rule]
    for name, entry in results.items():
        cells = []
        for lab in labels:
            fmt = ".0f" if lab == "teff" else ".3f"
            cells += [f"{entry[lab]['sigma']:{fmt}}", f"{entry[lab]['bias']:+{fmt}}",
                      f"{entry[lab]['coverage68']:.2f}"]
        lines.append(f"| {name} | {entry['n_members']} | " + " | ".join(cells) + " |")
    n = next(iter(results.values()))[labels[0]]["n"]
    text = "\n".join([
        "# deep-REMAP ablation",
        "",
        f"σ and bias of the point estimate (probability-weighted mean) minus the {ref_kind} "
        f"labels of {n} calibration stars, and the fraction of {ref_kind} labels inside the "
        "reported 68% interval (cov68). Each variant is one member trained with member 0's seed "
        "and switches one part of the recipe off; `full` is member 0 itself and `ensemble` the "
        "averaged distributions of all members.",
        "",
        *lines,
        "",
        *[f"- **{k}**: {v['description']}" for k, v in results.items()],
        "",
    ])
    return results, text


def load_rows(flux_path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    matrix = artifacts.load_matrix(flux_path)
    return np.asarray(matrix[np.sort(rows)], dtype=np.float32)
