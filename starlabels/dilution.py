"""Regression dilution: a model trained on noisy catalogue labels comes out shrunk towards the
mean for the labels whose catalogue errors are large against their spread (and whose spectral
information is weak): [Mg/Fe], [Al/Fe]. Its predictions then respond to the true label with a
slope below one, which turns a population's sequence into a smear: the α-rich stars of the thick
disc fall below any threshold that separates them.

On a held-out split with catalogue labels y = true + e (errors e known and independent of the
spectrum), the slope of the predictions on the true labels is

    slope = cov(prediction, y) / (var(y) − ⟨e²⟩),

and ``catalogue_mean + (prediction − prediction_mean) / slope`` puts them back onto the
catalogue's scale (unbiased at every true label, at the price of scatter / slope). Used by the
refine stage's calibration (refined labels) and by the regression CNN's ensemble calibration.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .scoring import robust_spread

#: iterations of the outlier clip of the scale fit
CLIP_PASSES = 3


def label_scale(predicted: np.ndarray, catalogue: np.ndarray, catalogue_err: np.ndarray,
                outlier_sigma: float) -> dict[str, float]:
    """Slope of the predictions on true labels and the two means that map predictions back
    onto the catalogue's scale: true ≈ catalogue_mean + (predicted − predicted_mean) / slope;
    stars further than ``outlier_sigma`` robust σ from that are left out (iterated)."""
    use = np.isfinite(predicted) & np.isfinite(catalogue) & np.isfinite(catalogue_err)
    slope, ref_mean, cat_mean = 1.0, float("nan"), float("nan")
    for _ in range(CLIP_PASSES):
        x, y, e = predicted[use], catalogue[use], catalogue_err[use]
        if x.size < 3:
            break
        ref_mean, cat_mean = float(x.mean()), float(y.mean())
        true_var = float(y.var() - np.mean(e ** 2))
        # a catalogue whose own errors fill its spread cannot tell the scale: keep it
        slope = float(np.mean((x - ref_mean) * (y - cat_mean)) / true_var) if true_var > 0 \
            else 1.0
        if not np.isfinite(slope) or slope <= 0:
            slope = 1.0
        resid = catalogue - (cat_mean + (predicted - ref_mean) / slope)
        spread = robust_spread(resid[use])
        keep = use & (np.abs(resid) <= outlier_sigma * max(spread, 1e-12))
        if keep.sum() == use.sum():
            break
        use = keep
    return {"slope": slope, "predicted_mean": ref_mean, "catalogue_mean": cat_mean,
            "n": int(use.sum())}


def apply_scale(values: np.ndarray, scale: Mapping[str, float]) -> np.ndarray:
    if not np.isfinite(scale["predicted_mean"]):
        return values
    return scale["catalogue_mean"] + (values - scale["predicted_mean"]) / scale["slope"]
