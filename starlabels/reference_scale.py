"""Put the catalogue onto the reference stars' scale, as Gaia-ESO anchors its labels on the Gaia
FGK benchmark stars.

A network learns the survey catalogue's labels, and with them that catalogue's smooth
systematics (a Teff scale that drifts for giants, a log g scale that drifts for cool stars). The
uncertainty calibration on the ``valid`` split cannot see them: its catalogue labels carry the
same offsets as the training labels. Stars with literature labels that no training phase used
(the calibration table's stars outside the ``train`` split) can. Per label, the offset of the
prediction from the literature value is fitted as a linear trend in the predicted labels:

    predicted − literature = c₀ + Σ_k c_k (x_k − pivot_k) / unit_k,   x_k ∈ ``terms``

by weighted least squares (weights 1 / (σ²_pred + σ²_lit)) with iterated clipping of stars
beyond ``clip_sigma`` (in units of their σ times the used stars' robust z spread, where that
exceeds 1) — a star at the edge of the training set, such as a metal-poor dwarf, can be
off by more than any trend). Its parameter covariance is scaled by the reduced χ² where that
exceeds 1. Every spectrum's label then becomes ``raw − trend(raw labels)``; the uncorrected
value stays in ``<label>_raw`` and the trend's own uncertainty at the star goes to
``<label>_err_scale``, beside ``<label>_err`` rather than into it: it is one error shared by
every star of the catalogue (it does not average down over a sample), as Gaia-ESO quotes its
systematic errors apart from the per-star ones.

Abundance ratios the table has no values of ([Mg/Fe], [Al/Fe] for the Gaia FGK benchmarks) get a
trend of the same form from the survey's own stars instead (:mod:`starlabels.abundance_trends`:
giants and dwarfs share one [X/Fe] at fixed [Fe/H]), stored in the same record and applied the
same way.

With a dozen reference stars the fit is only as good as their spread in the term labels; the
stored record says which stars were used and clipped, and gives the leave-one-out residuals
(each star predicted by the trend fitted without it), the out-of-sample check of the correction.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .scoring import robust_spread

#: a Teff term is in units of 1000 K (the others in dex) so the coefficients read per 1000 K
#: and per dex; the fit is the same for any scaling
TEFF_TERM_UNIT = 1000.0


def term_unit(term: str) -> float:
    return TEFF_TERM_UNIT if term == "teff" else 1.0
#: the splits whose stars the networks trained on: their predictions are not out of sample
TRAINED_SPLITS = ("train",)
#: clipping rounds of the fit (it stops earlier when the set of used stars no longer changes)
MAX_CLIP_ROUNDS = 10
#: largest condition number of the reference stars' design matrix a trend is fitted on: above
#: it their predicted term labels span too little (a network that has not learnt them predicts
#: nearly one value; the 2-member, 3-epoch test ensemble gave 5 000 with coefficients of
#: 10⁵ K) and the trend would be extrapolated wildly; the demo's 12 benchmark stars give 2.7
MAX_CONDITION = 100.0


def design(frame: pd.DataFrame | Mapping[str, np.ndarray], terms: Sequence[str],
           pivot: Mapping[str, float]) -> np.ndarray:
    """The fit's design matrix: a column of ones, then (x − pivot) / unit per term label."""
    n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values())))
    columns = [np.ones(n)]
    for term in terms:
        columns.append((np.asarray(frame[term], dtype=np.float64) - float(pivot[term]))
                       / term_unit(term))
    return np.column_stack(columns)


def _weighted_fit(x: np.ndarray, y: np.ndarray, sigma: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares: coefficients, their covariance (scaled by the reduced χ² where
    that exceeds 1) and the reduced χ²."""
    w = 1.0 / sigma ** 2
    normal = x.T @ (x * w[:, None])
    coef = np.linalg.solve(normal, x.T @ (w * y))
    dof = max(len(y) - x.shape[1], 1)
    chi2_red = float(np.sum(w * (y - x @ coef) ** 2) / dof)
    cov = np.linalg.inv(normal) * max(chi2_red, 1.0)
    return coef, cov, chi2_red


def fit_label(delta: np.ndarray, sigma: np.ndarray, x: np.ndarray, clip_sigma: float,
              min_stars: int) -> dict[str, Any]:
    """The trend of one label's offsets ``delta`` (predicted − literature, errors ``sigma``)
    over the design ``x``: coefficients, covariance, which stars were used, the reduced χ² and
    each used star's leave-one-out residual. ``applied`` is False (with ``reason``) when fewer
    than ``min_stars`` stars remain or their design is degenerate (:data:`MAX_CONDITION`)."""
    n_params = x.shape[1]
    need = max(int(min_stars), n_params + 1)
    used = np.isfinite(delta) & np.isfinite(sigma) & (sigma > 0) & np.all(np.isfinite(x), 1)
    if used.sum() < need:
        return {"applied": False, "used": used.tolist(),
                "reason": f"{int(used.sum())} reference stars with this label, {need} needed"}
    for _ in range(MAX_CLIP_ROUNDS):
        if np.linalg.cond(x[used]) > MAX_CONDITION:
            break
        coef, cov, chi2_red = _weighted_fit(x[used], delta[used], sigma[used])
        z = (delta - x @ coef) / sigma
        # the spread of the used stars' z, robustly (one far star inflates the χ² it is judged by)
        z = z / max(_robust_sigma(z[used]), 1.0)
        keep = np.abs(np.where(np.isfinite(z), z, np.inf)) <= clip_sigma
        if keep.sum() < need or np.array_equal(keep, used):
            break
        used = keep
    condition = float(np.linalg.cond(x[used]))
    if condition > MAX_CONDITION:
        return {"applied": False, "used": used.tolist(),
                "reason": f"the reference stars' predicted terms span too little for a trend "
                          f"(condition number {condition:.3g} > {MAX_CONDITION:g})"}
    coef, cov, chi2_red = _weighted_fit(x[used], delta[used], sigma[used])
    loo = np.full(len(delta), np.nan)
    for i in np.flatnonzero(used):
        others = used.copy()
        others[i] = False
        if others.sum() <= n_params:
            continue
        c, _, _ = _weighted_fit(x[others], delta[others], sigma[others])
        loo[i] = delta[i] - x[i] @ c
    return {"applied": True, "coefficients": coef.tolist(), "covariance": cov.tolist(),
            "chi2_red": chi2_red, "used": used.tolist(), "n_used": int(used.sum()),
            "loo_residual": [None if not np.isfinite(v) else float(v) for v in loo]}


def _robust_sigma(values: np.ndarray) -> float:
    return robust_spread(values[np.isfinite(values)])


def reference_rows(pred: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """The predicted spectra of the calibration table's stars outside the trained splits, with
    the literature values beside them (``<label>_lit``, ``e_<label>_lit``)."""
    lit = calibration.drop_duplicates("star_id").set_index("star_id")
    rows = pred[pred["star_id"].isin(lit.index)
                & ~pred["split"].astype(str).isin(TRAINED_SPLITS)].copy()
    for column in lit.columns:
        rows[f"{column}_lit"] = lit.loc[rows["star_id"], column].to_numpy()
    return rows.reset_index(drop=True)


def fit_reference_scale(pred: pd.DataFrame, calibration: pd.DataFrame, labels: Sequence[str],
                        cfg: Mapping[str, Any], log: Callable[[str], Any] = print
                        ) -> dict[str, Any]:
    """The per-label trends (module docstring) from predictions ``pred`` (star_id, split, the
    labels and ``<label>_err``) and the calibration table; ``cfg`` is the ``reference_scale``
    section. Labels the table has no values of are left out with the reason; the abundance
    ratios of ``cfg['abundance_trends']`` no reference star anchors get the trend of
    :mod:`starlabels.abundance_trends` in the same record (``method`` says which)."""
    terms = list(cfg["terms"])
    pivot = dict(cfg["pivot"])
    rows = reference_rows(pred, calibration)
    record: dict[str, Any] = {"terms": terms, "pivot": {t: float(pivot[t]) for t in terms},
                              "term_units": {t: term_unit(t) for t in terms},
                              "clip_sigma": float(cfg["clip_sigma"]),
                              "stars": rows["star_id"].astype(str).tolist(),
                              "names": (rows["name_lit"].astype(str).tolist()
                                        if "name_lit" in rows else
                                        rows["star_id"].astype(str).tolist()),
                              "labels": {}}
    missing_terms = [t for t in terms if t not in pred]
    if missing_terms:
        raise ValueError(f"reference_scale.terms {missing_terms} are not predicted labels "
                         f"({list(labels)})")
    x = design(rows, terms, pivot)
    for label in cfg["labels"]:
        if label not in labels:
            continue
        if label not in calibration.columns:
            record["labels"][label] = {"applied": False, "method": "reference_stars",
                                       "reason": "the calibration table has no such column"}
            log(f"reference_scale: {label}: not calibrated, the table has no literature values")
            continue
        predicted = rows[label].to_numpy(dtype=float)
        literature = rows[f"{label}_lit"].to_numpy(dtype=float)
        e_pred = rows[f"{label}_err"].to_numpy(dtype=float)
        e_lit = (np.nan_to_num(rows[f"e_{label}_lit"].to_numpy(dtype=float))
                 if f"e_{label}_lit" in rows else np.zeros(len(rows)))
        delta = predicted - literature
        fit = fit_label(delta, np.sqrt(e_pred ** 2 + e_lit ** 2), x, cfg["clip_sigma"],
                        cfg["min_stars"])
        fit["offset"] = [None if not np.isfinite(v) else float(v) for v in delta]
        if fit["applied"]:
            used = np.asarray(fit["used"])
            loo = np.array([np.nan if v is None else v for v in fit["loo_residual"]])
            fit["before"] = {"bias": float(np.median(delta[used])),
                             "sigma": _robust_sigma(delta[used])}
            fit["after_loo"] = {"bias": float(np.nanmedian(loo)), "sigma": _robust_sigma(loo)}
            coef = ", ".join(f"{c:+.4g}" for c in fit["coefficients"])
            log(f"reference_scale: {label}: {fit['n_used']} of {len(delta)} stars "
                f"(clipped {len(delta) - fit['n_used']}), coefficients [1, "
                f"{', '.join(terms)}] = [{coef}], χ²/dof {fit['chi2_red']:.2f}; offset bias / "
                f"robust σ {fit['before']['bias']:+.4g} / {fit['before']['sigma']:.4g} before, "
                f"{fit['after_loo']['bias']:+.4g} / {fit['after_loo']['sigma']:.4g} after "
                f"(leave-one-out)")
        else:
            log(f"reference_scale: {label}: not calibrated: {fit['reason']}")
        record["labels"][label] = dict(fit, method="reference_stars")
    from .abundance_trends import fit_abundance_trends

    anchored = [label for label, fit in record["labels"].items() if fit["applied"]]
    trends = fit_abundance_trends(pred, labels, cfg["abundance_trends"], terms, pivot,
                                  skip=anchored, log=log)
    for label, fit in trends.items():
        record["labels"][label] = dict(fit, method="abundance_trend")
    record["abundance_trends"] = dict(cfg["abundance_trends"])
    return record


def apply_reference_scale(values: Mapping[str, np.ndarray], record: Mapping[str, Any]
                          ) -> dict[str, np.ndarray]:
    """Corrected columns from the predicted ones (``values``: the labels): ``<label>``,
    ``<label>_raw`` and ``<label>_err_scale`` for every label the record calibrates; the trend
    is evaluated at the uncorrected labels, as it was fitted."""
    out: dict[str, np.ndarray] = {}
    fitted = {label: fit for label, fit in record["labels"].items() if fit.get("applied")}
    if not fitted:
        return out
    x = design(values, record["terms"], record["pivot"])
    for label, fit in fitted.items():
        if label not in values:
            continue
        coef = np.asarray(fit["coefficients"])
        cov = np.asarray(fit["covariance"])
        shift = x @ coef
        var = np.einsum("ij,jk,ik->i", x, cov, x)
        raw = np.asarray(values[label], dtype=np.float64)
        out[f"{label}_raw"] = raw
        out[label] = raw - shift
        out[f"{label}_err_scale"] = np.sqrt(var)
    return out
