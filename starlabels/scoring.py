"""Scores of a catalogue against known labels, each with the interval a reader needs to trust it.

Used by the validate stage for the figures in ``metrics.json`` (and so in the README):

* :func:`sigma_ci` — σ of the residuals with a bootstrap 95 % interval;
* :func:`uncertainty_report` — how well ``<label>_err`` describes the real error: coverage of the
  50/68/90/95 % Gaussian intervals (with bootstrap intervals), the robust spread of
  z = residual/err, the same per S/N tercile, and σ per tercile;
* :func:`bias_by_label` — mean residual in bins of the true label (regression toward the mean
  shows as a positive bias at the low end and a negative one at the high end);
* :func:`abundance_sequence` — the share of α-rich stars in a metallicity window, from the truth
  and from the catalogue alone (the thick-disc sequence of [Mg/Fe] vs [Fe/H]).

Bootstraps resample stars with replacement from a fixed seed, so the intervals are reproducible.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.stats import norm

#: central intervals whose coverage is reported
COVERAGE_LEVELS = (0.50, 0.68, 0.90, 0.95)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 20231


def bootstrap_interval(values: Sequence[np.ndarray], statistic: Callable[..., float],
                       n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
                       ) -> list[float]:
    """2.5th and 97.5th percentiles of ``statistic`` over bootstrap resamples of the rows of
    ``values`` (arrays of equal length, resampled together)."""
    n = len(values[0])
    if n < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        draws[b] = statistic(*(v[pick] for v in values))
    return [float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5))]


def _finite(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a)
    return ok


def _sigma(residual: np.ndarray) -> float:
    return float(np.std(residual, ddof=1)) if residual.size > 1 else float("nan")


def sigma_ci(residual: np.ndarray) -> dict[str, Any]:
    """σ of the finite residuals and its bootstrap 95 % interval."""
    r = np.asarray(residual, dtype=np.float64)
    r = r[np.isfinite(r)]
    return {"n": int(r.size), "sigma": _sigma(r), "sigma_ci95": bootstrap_interval([r], _sigma)}


def coverage(z: np.ndarray, level: float) -> float:
    """Share of |z| inside the central ``level`` interval of a unit Gaussian."""
    return float(np.mean(np.abs(z) <= norm.ppf(0.5 + level / 2))) if z.size else float("nan")


def robust_spread(z: np.ndarray) -> float:
    """1.4826 × the median absolute deviation: the σ of the bulk, blind to a few outliers."""
    return float(1.4826 * np.median(np.abs(z - np.median(z)))) if z.size else float("nan")


def snr_tercile_edges(snr: np.ndarray) -> list[float]:
    """The two S/N values splitting ``snr`` into thirds."""
    snr = np.asarray(snr, dtype=np.float64)
    return [float(q) for q in np.quantile(snr[np.isfinite(snr)], [1 / 3, 2 / 3])]


def _coverage_block(z: np.ndarray, with_ci: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(z.size), "z_robust_spread": robust_spread(z)}
    for level in COVERAGE_LEVELS:
        key = f"coverage{round(level * 100)}"
        out[key] = coverage(z, level)
        if with_ci:
            out[f"{key}_ci95"] = bootstrap_interval([z], lambda x, lv=level: coverage(x, lv))
    return out


def coverage_report(z: np.ndarray) -> dict[str, Any]:
    """Coverage of the normalised residuals ``z`` at each of :data:`COVERAGE_LEVELS`, with
    bootstrap 95 % intervals, and their robust spread."""
    return _coverage_block(np.asarray(z, dtype=np.float64), with_ci=True)


def uncertainty_report(pred: np.ndarray, err: np.ndarray, true: np.ndarray, snr: np.ndarray,
                       raw: np.ndarray | None = None, members: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """How well one label's uncertainty ``err`` describes the real error ``pred − true``.

    Overall: coverage at each of :data:`COVERAGE_LEVELS` with bootstrap intervals, and the robust
    spread of z. Per S/N tercile (edges from these stars' S/N): σ with its interval, coverage at
    68 and 95 %. ``raw`` and ``members`` (the uncalibrated total and the members' scatter) get the
    overall coverage too, so a reader sees what calibration changed."""
    pred, err, true, snr = (np.asarray(a, dtype=np.float64) for a in (pred, err, true, snr))
    ok = _finite(pred, err, true) & (err > 0)
    residual = pred - true
    z = residual[ok] / err[ok]
    out: dict[str, Any] = _coverage_block(z, with_ci=True)
    out["median_err"] = float(np.median(err[ok])) if ok.any() else float("nan")
    for name, other in (("raw", raw), ("members", members)):
        if other is not None:
            other = np.asarray(other, dtype=np.float64)
            good = ok & np.isfinite(other) & (other > 0)
            out[f"{name}"] = _coverage_block(residual[good] / other[good], with_ci=False)
    edges = snr_tercile_edges(snr[ok]) if ok.sum() >= 3 else [np.nan, np.nan]
    bounds = [-np.inf, *edges, np.inf]
    terciles = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sel = ok & (snr >= lo) & (snr < hi)
        block = sigma_ci(residual[sel])
        zt = residual[sel] / err[sel]
        block.update(snr_lo=float(lo), snr_hi=float(hi), coverage68=coverage(zt, 0.68),
                     coverage95=coverage(zt, 0.95), median_err=float(np.median(err[sel]))
                     if sel.any() else float("nan"))
        terciles.append(block)
    out["snr_terciles"] = terciles
    lo_sigma, hi_sigma = terciles[0]["sigma"], terciles[-1]["sigma"]
    out["sigma_high_over_low_snr"] = float(hi_sigma / lo_sigma) if lo_sigma > 0 else float("nan")
    return out


def bias_by_label(pred: np.ndarray, true: np.ndarray, n_bins: int = 8) -> list[dict[str, float]]:
    """Mean and σ of ``pred − true`` in equal-count bins of the true label."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    ok = _finite(pred, true)
    if ok.sum() < n_bins:
        return []
    edges = np.quantile(true[ok], np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, true[ok], side="right") - 1, 0, n_bins - 1)
    residual = pred[ok] - true[ok]
    return [{"true_lo": float(edges[b]), "true_hi": float(edges[b + 1]),
             "n": int((which == b).sum()), "bias": float(residual[which == b].mean()),
             "sigma": _sigma(residual[which == b])} for b in range(n_bins)]


def abundance_sequence(true_fe_h: np.ndarray, true_ratio: np.ndarray, pred_fe_h: np.ndarray,
                       pred_ratio: np.ndarray, window: Sequence[float], threshold: float
                       ) -> dict[str, Any]:
    """The share of stars with [X/Fe] > ``threshold`` among those with ``window[0]`` < [Fe/H] <
    ``window[1]``: truly (true labels), in the catalogue (the catalogue's own labels select and
    count — what a reader of the catalogue sees), and for the truly-in-window stars counted with
    their predicted ratio. Each with a bootstrap interval."""
    tf, tr, pf, pr = (np.asarray(a, dtype=np.float64) for a in
                      (true_fe_h, true_ratio, pred_fe_h, pred_ratio))
    lo, hi = float(window[0]), float(window[1])

    def share(fe_h: np.ndarray, ratio: np.ndarray) -> float:
        inside = (fe_h > lo) & (fe_h < hi) & np.isfinite(ratio)
        return float(np.mean(ratio[inside] > threshold)) if inside.any() else float("nan")

    def same_stars(fe_h: np.ndarray, ratio: np.ndarray) -> float:
        return share(fe_h, ratio)

    out: dict[str, Any] = {"window_fe_h": [lo, hi], "threshold": float(threshold)}
    for name, (fe_h, ratio) in (("true", (tf, tr)), ("catalogue", (pf, pr)),
                                ("true_stars_predicted", (tf, pr))):
        out[name] = share(fe_h, ratio)
        out[f"{name}_ci95"] = bootstrap_interval([fe_h, ratio], same_stars)
        out[f"n_{name}"] = int(((fe_h > lo) & (fe_h < hi)).sum())
    out["catalogue_minus_true_points"] = 100.0 * (out["catalogue"] - out["true"])
    return out


def targets_met(measured: Mapping[str, float], targets: Mapping[str, Sequence[float] | float],
                ) -> dict[str, Any]:
    """Per key: the measured value beside its target (an upper bound, or a [low, high] range)
    and whether it is met."""
    out: dict[str, Any] = {}
    for key, target in targets.items():
        if target is None or key not in measured:
            continue
        value = float(measured[key])
        if isinstance(target, (list, tuple)):
            met = bool(float(target[0]) <= value <= float(target[1]))
        else:
            met = bool(value <= float(target))
        out[key] = {"measured": value, "target": target, "met": met}
    return out
