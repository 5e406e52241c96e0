"""Post-hoc calibration of a regression-CNN ensemble's uncertainties on the ``valid`` split.

The ensemble's raw σ (:mod:`starlabels.cnn.ensemble`) comes from heads trained on the same
spectra they are judged on and from a handful of seeds; on demo_ges it is not the real error. One
factor per label and S/N bin, a, turns it into ``err = a · err_raw``. It is fitted on the observed
``valid`` split, which no training phase uses, by maximising the likelihood of the catalogue
labels y given the prediction μ:

    y − μ ~ (1 − ε) N(0, a²σ² + e²) + ε N(0, 900 (a²σ² + e²))

where e is the catalogue's own error of y (deconvolved: the calibrated σ is the error against the
*true* label) and the broad ε component keeps a few stars no σ explains (defects, wrong catalogue
labels) from inflating every uncertainty. One factor per label comes from every valid star; each
S/N bin's factor (equal-count bins of the valid split's S/N) is fitted with a prior holding
ln(a_bin/a_label) near zero, because where the catalogue's errors exceed the network's, ~150
stars pin a factor down to tens of per cent only. The prior's width τ (``snr_prior_width``) is
by default chosen per label by the valid split itself (type-II maximum likelihood: the τ under
which the bins' likelihoods, integrated over the prior, are most probable): bins that agree
within their noise share the label's factor, bins that differ beyond it keep their own. A fixed
τ = 0.25 let the noise of three ~160-star bins set Teff's factors (0.47 / 0.62 / 0.54 on demo_ges
seed 1234, lowest-S/N tercile covered 0.60 against the truth); the fitted τ pools them. The edges
are stored with the factors and predict assigns a spectrum to a bin by its S/N (beyond the outer
edges: the outer bins).

For the labels of ``label_scale.labels`` the ensemble's means are first mapped back onto the
catalogue's scale (:mod:`starlabels.dilution`: a network trained on noisy labels responds to the
true [Mg/Fe] with a slope well below one), and the factors are fitted to the mapped means;
predict applies both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from .. import artifacts
from ..batch import say
from ..dilution import apply_scale, label_scale
from ..members import check_calibration_members, load_ensemble, member_names, plain
from ..scoring import bootstrap_interval
from .ensemble import combine, member_outputs, reads_noise

ENSEMBLE_CALIBRATION = "ensemble_calibration.json"
#: the broad component of the calibration likelihood is this many times wider than the core
OUTLIER_WIDTH = 30.0
#: fitted scale factors are searched in [1/SCALE_BOUND, SCALE_BOUND]
SCALE_BOUND = 30.0
#: fewest stars an S/N bin of the calibration may hold; fewer stars get fewer bins
MIN_BIN_STARS = 30
#: range [lowest, widest] of the S/N prior width τ fitted from the valid split
PRIOR_WIDTH_BOUNDS = (0.01, 2.0)
#: the prior width's integrals run over ln a within this distance of the label's factor: a bin
#: of tens of stars already makes factors e³ ≈ 20 times off the label's negligibly likely
PRIOR_SPAN = 3.0
#: bootstrap resamples of the valid split for the label factors' 95 % intervals (each a fit of
#: a few ms; the interval's ends settle to a few per cent of the factor)
CALIBRATION_BOOTSTRAP = 100
#: spectra per forward pass while predicting the valid split (a few hundred stars in all)
CALIBRATION_BATCH = 256


def usable(residual: np.ndarray, sigma: np.ndarray, catalogue_error: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows the calibration likelihood can use (finite, raw σ > 0), as float64 arrays."""
    r, s, e = (np.asarray(a, dtype=np.float64) for a in (residual, sigma, catalogue_error))
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0) & np.isfinite(e)
    return r[ok], s[ok], e[ok]


def fit_scale(residual: np.ndarray, sigma: np.ndarray, catalogue_error: np.ndarray,
              outlier_fraction: float, prior: tuple[float, float] | None = None) -> float:
    """The factor a maximising the calibration likelihood (module docstring) of ``residual``
    (catalogue label − prediction) given the raw σ and the catalogue errors; with ``prior``
    (centre a₀, width τ) times a Gaussian prior on ln(a / a₀) of width τ."""
    r, s, e = usable(residual, sigma, catalogue_error)
    if r.size == 0:
        raise ValueError("no finite residuals to calibrate on")

    def nll(log_a: float) -> float:
        total = -float(log_likelihood(np.array([log_a]), r, s, e, outlier_fraction)[0])
        if prior is not None:
            total += 0.5 * ((log_a - np.log(prior[0])) / prior[1]) ** 2
        return total

    bound = np.log(SCALE_BOUND)
    best = minimize_scalar(nll, bounds=(-bound, bound), method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))


def log_likelihood(log_a: np.ndarray, residual: np.ndarray, sigma: np.ndarray,
                   catalogue_error: np.ndarray, outlier_fraction: float) -> np.ndarray:
    """The calibration likelihood's logarithm (module docstring) at each ln a of ``log_a``
    (the rows :func:`usable` keeps)."""
    var = np.exp(2 * np.asarray(log_a, dtype=np.float64))[:, None] * sigma[None] ** 2 \
        + catalogue_error[None] ** 2
    core = np.exp(-0.5 * residual ** 2 / var) / np.sqrt(2 * np.pi * var)
    wide_var = OUTLIER_WIDTH ** 2 * var
    wide = np.exp(-0.5 * residual ** 2 / wide_var) / np.sqrt(2 * np.pi * wide_var)
    eps = float(outlier_fraction)
    return np.log((1 - eps) * core + eps * wide + 1e-300).sum(axis=1)


def fit_prior_width(groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    centre: float, outlier_fraction: float) -> float:
    """The width τ of the Gaussian prior on ln(a_bin / ``centre``) under which the S/N bins'
    likelihoods, each integrated over that prior, are most probable (type-II maximum
    likelihood); ``groups`` holds each bin's (residual, raw σ, catalogue error). Bins that agree
    within their noise give τ at its lower bound (one shared factor)."""
    log_centre = np.log(centre)
    # a step (0.0025) far below the smallest τ searched, so every prior of the search is resolved
    grid = np.linspace(log_centre - PRIOR_SPAN, log_centre + PRIOR_SPAN, 2401)
    step = grid[1] - grid[0]
    likelihoods = []
    for group in groups:
        r, s, e = usable(*group)
        if r.size:
            likelihoods.append(log_likelihood(grid, r, s, e, outlier_fraction))
    if len(likelihoods) < 2:
        return PRIOR_WIDTH_BOUNDS[0]

    def negative_evidence(log_tau: float) -> float:
        tau = np.exp(log_tau)
        log_prior = -0.5 * ((grid - log_centre) / tau) ** 2 - np.log(tau * np.sqrt(2 * np.pi)) \
            + np.log(step)
        return -float(sum(logsumexp(ll + log_prior) for ll in likelihoods))

    lo, hi = np.log(PRIOR_WIDTH_BOUNDS[0]), np.log(PRIOR_WIDTH_BOUNDS[1])
    best = minimize_scalar(negative_evidence, bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-3})
    # the bounded search does not try the ends themselves: the lower one is the pooled answer
    return float(np.exp(best.x if best.fun < negative_evidence(lo) else lo))


def snr_edges(snr: np.ndarray, n_bins: int) -> list[float]:
    """Inner edges of ``n_bins`` equal-count S/N bins (fewer when a bin would hold fewer than
    :data:`MIN_BIN_STARS` stars)."""
    snr = np.asarray(snr, dtype=np.float64)
    snr = snr[np.isfinite(snr)]
    n_bins = max(1, min(int(n_bins), snr.size // MIN_BIN_STARS))
    return [float(q) for q in np.quantile(snr, np.arange(1, n_bins) / n_bins)]


def snr_bin(snr: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The calibration bin of each S/N (unknown S/N: the lowest bin, the widest errors)."""
    snr = np.asarray(snr, dtype=np.float64)
    return np.searchsorted(np.asarray(edges, dtype=np.float64),
                           np.where(np.isfinite(snr), snr, -np.inf), side="right")


def calibrated_error(err_raw: np.ndarray, snr: np.ndarray,
                     calibration: Mapping[str, Any] | None, labels: Sequence[str]) -> np.ndarray:
    """``err`` = the calibration's factor for each row's label and S/N bin × ``err_raw``
    ((rows, labels)); no calibration: ``err_raw`` itself."""
    err_raw = np.asarray(err_raw, dtype=np.float64)
    if calibration is None:
        return err_raw.copy()
    missing = [name for name in labels if name not in calibration["scale"]]
    if missing:
        raise ValueError(f"the ensemble calibration has no factors for {missing}")
    which = snr_bin(snr, calibration["snr_edges"])
    factors = np.stack([np.asarray(calibration["scale"][name], dtype=np.float64)[which]
                        for name in labels], axis=1)
    return err_raw * factors


def calibrated_mean(mean: np.ndarray, calibration: Mapping[str, Any] | None,
                    labels: Sequence[str]) -> np.ndarray:
    """The ensemble's means ((rows, labels)) with the calibration's label scales applied (the
    labels it maps back onto the catalogue's scale; the others, or no calibration: as they
    are)."""
    mean = np.asarray(mean, dtype=np.float64)
    scales = (calibration or {}).get("dilution", {})
    if not scales:
        return mean
    out = mean.copy()
    for j, name in enumerate(labels):
        if name in scales:
            out[:, j] = apply_scale(mean[:, j], scales[name])
    return out


def coverage(residual: np.ndarray, sigma: np.ndarray, catalogue_error: np.ndarray,
             level: float = 0.6827) -> float:
    """Share of residuals inside the ``level`` interval of N(0, σ² + e²)."""
    from scipy.stats import norm

    total = np.sqrt(np.asarray(sigma) ** 2 + np.asarray(catalogue_error) ** 2)
    ok = np.isfinite(residual) & np.isfinite(total) & (total > 0)
    if not ok.any():
        return float("nan")
    z = np.abs(np.asarray(residual)[ok]) / total[ok]
    return float(np.mean(z <= norm.ppf(0.5 + level / 2)))


def calibrate_ensemble(flux_path: str | os.PathLike, ivar_path: str | os.PathLike | None,
                       table_path: str | os.PathLike, model_dirs: Sequence[str | os.PathLike],
                       cfg: Mapping[str, Any], out_path: str | os.PathLike,
                       log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fit the factors on the observed ``valid`` rows of a training set (``cfg`` = the
    ``calibration`` section) and write them as JSON beside the members."""
    members = load_ensemble(list(model_dirs), torch.device("cpu"))
    labels = list(members[0][1]["labels"])
    table = artifacts.load_table(table_path)
    observed = table["source"].eq("observed").to_numpy() if "source" in table else \
        np.ones(len(table), dtype=bool)
    values = table[labels].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(table["split"].eq("valid").to_numpy() & observed
                          & np.isfinite(values).all(axis=1))
    if rows.size == 0:
        raise ValueError(f"{table_path}: no observed 'valid' rows with finite {labels} to "
                         f"calibrate on")
    flux = np.ascontiguousarray(artifacts.load_matrix(flux_path)[rows], dtype=np.float32)
    ivar = None
    if reads_noise(members):
        if ivar_path is None:
            raise ValueError("these members read the inverse variances: give the ivar matrix")
        ivar = torch.from_numpy(np.ascontiguousarray(artifacts.load_matrix(ivar_path)[rows],
                                                     dtype=np.float32))
    means, variances = [], []
    for start in range(0, rows.size, CALIBRATION_BATCH):
        stop = start + CALIBRATION_BATCH
        m, v = member_outputs(members, torch.from_numpy(flux[start:stop]),
                              None if ivar is None else ivar[start:stop])
        means.append(m)
        variances.append(v)
    combined = combine(torch.cat(means, dim=1), torch.cat(variances, dim=1))
    errors = np.zeros((rows.size, len(labels)))
    for j, name in enumerate(labels):
        if f"e_{name}" in table:
            e = table[f"e_{name}"].to_numpy(dtype=np.float64)[rows]
            errors[:, j] = np.where(np.isfinite(e) & (e > 0), e, 0.0)
    snr = table["snr"].to_numpy(dtype=np.float64)[rows] if "snr" in table else \
        np.full(rows.size, np.nan)
    edges = snr_edges(snr, int(cfg["snr_bins"]))
    which = snr_bin(snr, edges)
    result: dict[str, Any] = {"method": "cnn_regression", "labels": labels, "n": int(rows.size),
                              "members": member_names(model_dirs, Path(out_path).parent),
                              "snr_edges": edges,
                              "outlier_fraction": float(cfg["outlier_fraction"]),
                              "scale": {}, "scale_overall_ci95": {}, "prior_width": {}, "coverage68": {},
                              "dilution": {}}
    undilute = cfg["label_scale"]
    for j, name in enumerate(labels):
        mean = combined["mean"][:, j]
        if name in undilute["labels"]:
            # the means first go back onto the catalogue's scale (regression dilution, see
            # starlabels.dilution); the error factors below are then fitted to those means, so
            # they carry the 1/slope that stretches the errors with them
            scale = label_scale(mean, values[rows, j], errors[:, j], undilute["outlier_sigma"])
            result["dilution"][name] = scale
            mean = apply_scale(mean, scale)
            say(log, f"calibration {name}: the ensemble's means respond to the true label with "
                     f"slope {scale['slope']:.3g} ({scale['n']} valid stars, catalogue errors "
                     f"deconvolved); mapped back onto the catalogue's scale")
        residual = values[rows, j] - mean
        # one factor for the label from every valid star, then each S/N bin's own, held near it
        # by a prior: a bin of ~150 stars whose catalogue errors exceed the network's own pins
        # its factor down to tens of per cent only
        overall = fit_scale(residual, combined["err_raw"][:, j], errors[:, j],
                            cfg["outlier_fraction"])
        groups = [(residual[which == b], combined["err_raw"][which == b, j],
                   errors[which == b, j]) for b in range(len(edges) + 1)]
        width = cfg["snr_prior_width"]
        if width == "auto":
            width = fit_prior_width(groups, overall, cfg["outlier_fraction"])
        factors = [fit_scale(r, s, e, cfg["outlier_fraction"], prior=(overall, float(width)))
                   for r, s, e in groups]
        result["scale"][name] = factors
        result.setdefault("scale_overall", {})[name] = overall
        # how tightly the valid split pins the factor down: where the catalogue's errors exceed
        # the network's, the calibrated coverage is only as good as this interval
        result["scale_overall_ci95"][name] = bootstrap_interval(
            [residual, combined["err_raw"][:, j], errors[:, j]],
            lambda r, s, e: fit_scale(r, s, e, cfg["outlier_fraction"]),
            n_boot=CALIBRATION_BOOTSTRAP)
        result["prior_width"][name] = float(width)
        calibrated = combined["err_raw"][:, j] * np.asarray(factors)[which]
        result["coverage68"][name] = {
            "before": coverage(residual, combined["err_raw"][:, j], errors[:, j]),
            "after": coverage(residual, calibrated, errors[:, j])}
        low, high = result["scale_overall_ci95"][name]
        say(log, f"calibration {name}: overall factor {overall:.3g} (bootstrap 95 % "
                 f"{low:.3g}–{high:.3g}); per S/N bin (prior width "
                 f"{float(width):.3g}) "
                 + ", ".join(f"{f:.3g}" for f in factors)
                 + f" in S/N bins split at {[round(e, 1) for e in edges]}; 68% coverage of the "
                   f"catalogue labels (errors convolved) on {rows.size} valid stars "
                   f"{result['coverage68'][name]['before']:.2f} → "
                   f"{result['coverage68'][name]['after']:.2f}")
    result.update(plain(artifacts.provenance(cfg)))
    artifacts.save_json(out_path, result)
    return result


def load_calibration(path: str | os.PathLike | None, members: Sequence[str | os.PathLike]
                     ) -> dict[str, Any] | None:
    """The ensemble calibration at ``path``, checked to belong to exactly these members (None:
    no calibration)."""
    if not path:
        return None
    calibration = artifacts.load_json(path)
    check_calibration_members(path, calibration["members"], members)
    return calibration


def calibrate_job(*, flux: str | os.PathLike, ivar: str | os.PathLike | None,
                  table: str | os.PathLike, members: Sequence[str | os.PathLike],
                  cfg: Mapping[str, Any], out: str | os.PathLike,
                  log: Callable[[str], Any]) -> dict[str, Any]:
    """The workflow's calibrate_ensemble job for the regression CNN (``cfg``:
    ``calibration``)."""
    return calibrate_ensemble(flux, ivar, table, members, cfg, out, log=log)
