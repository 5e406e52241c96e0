"""Put abundance ratios that no reference star anchors onto the solar-type dwarfs' scale.

The reference-star scale (:mod:`starlabels.reference_scale`) corrects the labels the reference
stars have literature values of; the Gaia FGK benchmark table gives Teff, log g and [Fe/H], not
[Mg/Fe] or [Al/Fe]. The catalogue labels the network learns carry their pipeline's abundance
systematics all the same: ratios that drift with gravity and temperature, so that the giants'
[X/Fe] sits above or below the dwarfs' at the same [Fe/H]. Surveys without abundance anchors
calibrate them on their own stars, assuming that in the field, at fixed [Fe/H], giants and dwarfs
share one [X/Fe] distribution (APOGEE DR17 zero-points [X/M] separately for giants and dwarfs on
solar-neighbourhood stars; GALAH DR3 takes [X/Fe] = 0 for solar-type stars at solar [Fe/H]). Per
label, over the catalogue's spectra outside the trained splits:

    [X/Fe]_pred = Σ_{k ≤ d} p_k [Fe/H]^k + Σ_t c_t (x_t − pivot_t) / unit_t,   x_t ∈ terms

by least squares with iterated clipping at ``clip_sigma`` robust σ (a chemically distinct
population, such as Al-rich, Mg-poor giants, is clipped rather than fitted), inside
``fe_h_range`` (by default near solar, where the thin disc dominates: the predicted [Fe/H]
selects and conditions, and its errors would otherwise lend the giants some of the metal-poor
stars' chemistry). The polynomial carries the Galaxy's chemistry; the c_t are the trend with
evolutionary state, which :func:`starlabels.reference_scale.apply_reference_scale` subtracts
(the record has the same form as a reference-star trend with a constant of zero): stars at the
pivot (the Sun) keep the catalogue's zero point, which nothing here can check. The trend's
uncertainty at each star goes to ``<label>_err_scale``.

The assumption fails where the giants and dwarfs of a sample truly differ in [X/Fe] at fixed
[Fe/H] (a magnitude-limited survey whose giants reach a population its dwarfs do not); the fitted
coefficients and their errors are in the record, and validate reports them beside the truth.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .reference_scale import MAX_CONDITION, TRAINED_SPLITS, design
from .scoring import robust_spread

#: clipping rounds (the fit stops earlier when the set of used spectra no longer changes)
MAX_CLIP_ROUNDS = 10


def fit_trend(values: np.ndarray, fe_h: np.ndarray, x: np.ndarray, degree: int,
              fe_h_range: Sequence[float], clip_sigma: float, min_spectra: int
              ) -> dict[str, Any]:
    """One label's trend (module docstring) from its predicted ``values``, the predicted
    ``fe_h`` and the reference-scale design ``x`` (a column of ones, then the scaled terms):
    the term coefficients with a zero constant, their covariance (the constant's row and column
    zero), the polynomial, the number of spectra used and the robust σ of the residuals. ``applied`` is False (with ``reason``) when
    fewer than ``min_spectra`` spectra remain."""
    values = np.asarray(values, dtype=np.float64)
    fe_h = np.asarray(fe_h, dtype=np.float64)
    poly = np.column_stack([fe_h ** k for k in range(int(degree) + 1)])
    full = np.column_stack([poly, x[:, 1:]])
    inside = (np.isfinite(values) & np.all(np.isfinite(full), axis=1)
              & (fe_h >= fe_h_range[0]) & (fe_h <= fe_h_range[1]))
    need = max(int(min_spectra), full.shape[1] + 1)
    used = inside.copy()
    for _ in range(MAX_CLIP_ROUNDS):
        if used.sum() < need:
            break
        coef, *_ = np.linalg.lstsq(full[used], values[used], rcond=None)
        residual = values - full @ coef
        spread = robust_spread(residual[used])
        keep = inside & (np.abs(np.where(inside, residual, np.inf)) <= clip_sigma * spread)
        if np.array_equal(keep, used):
            break
        used = keep
    if used.sum() < need:
        return {"applied": False, "n_used": int(used.sum()),
                "reason": f"{int(used.sum())} spectra inside the [Fe/H] range, {need} needed"}
    condition = float(np.linalg.cond(x[used]))
    if condition > MAX_CONDITION:
        # as for the reference stars: predicted terms that span too little (an untrained
        # network's) would extrapolate any trend wildly
        return {"applied": False, "n_used": int(used.sum()),
                "reason": f"the predicted terms span too little for a trend (condition number "
                          f"{condition:.3g} > {MAX_CONDITION:g})"}
    coef, *_ = np.linalg.lstsq(full[used], values[used], rcond=None)
    residual = values[used] - full[used] @ coef
    dof = max(int(used.sum()) - full.shape[1], 1)
    cov_full = np.linalg.inv(full[used].T @ full[used]) * float(residual @ residual) / dof
    n_poly = poly.shape[1]
    n_terms = x.shape[1] - 1
    coefficients = np.concatenate([[0.0], coef[n_poly:]])
    covariance = np.zeros((n_terms + 1, n_terms + 1))
    covariance[1:, 1:] = cov_full[n_poly:, n_poly:]
    return {"applied": True, "coefficients": coefficients.tolist(),
            "covariance": covariance.tolist(),
            "fe_h_polynomial": coef[:n_poly].tolist(), "n_used": int(used.sum()),
            "n_inside": int(inside.sum()), "residual_sigma": robust_spread(residual)}


def fit_abundance_trends(pred: pd.DataFrame, labels: Sequence[str], cfg: Mapping[str, Any],
                         terms: Sequence[str], pivot: Mapping[str, float],
                         skip: Sequence[str] = (), log: Callable[[str], Any] = print
                         ) -> dict[str, dict[str, Any]]:
    """The trend of every label of ``cfg['labels']`` (the ``reference_scale.abundance_trends``
    section) that is predicted and not in ``skip`` (those the reference stars anchor), from the
    predictions ``pred`` (split, the labels) outside the trained splits, in the reference
    scale's ``terms`` about its ``pivot``."""
    rows = pred[~pred["split"].astype(str).isin(TRAINED_SPLITS)]
    x = design(rows, terms, pivot)
    out: dict[str, dict[str, Any]] = {}
    for label in cfg["labels"]:
        if label not in labels or label in skip:
            continue
        reason = ("[Fe/H] is not predicted: no polynomial to condition on"
                  if "fe_h" not in labels else
                  "reference_scale.terms is empty: no trend with evolutionary state to fit"
                  if not terms else None)
        if reason:
            out[label] = {"applied": False, "reason": reason}
            log(f"abundance_trends: {label}: not applied: {out[label]['reason']}")
            continue
        fit = fit_trend(rows[label].to_numpy(), rows["fe_h"].to_numpy(), x,
                        cfg["fe_h_degree"], cfg["fe_h_range"], cfg["clip_sigma"],
                        cfg["min_spectra"])
        if fit["applied"]:
            errors = np.sqrt(np.diag(fit["covariance"]))[1:]
            shown = ", ".join(f"{t} {c:+.4g} ± {e:.2g}" for t, c, e in
                              zip(terms, fit["coefficients"][1:], errors))
            log(f"abundance_trends: {label}: {fit['n_used']} of {fit['n_inside']} spectra "
                f"inside [Fe/H] {list(cfg['fe_h_range'])} (the rest clipped); trend per unit "
                f"of each term: {shown}; residual robust σ {fit['residual_sigma']:.4g}")
        else:
            log(f"abundance_trends: {label}: not applied: {fit['reason']}")
        out[label] = fit
    return out
