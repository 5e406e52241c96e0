"""Calibration of refined labels on the held-out `valid` split, whose catalogue labels carry
known errors e (deconvolved everywhere below):

1. **Label scale.** An emulator trained on noisy catalogue labels responds too weakly to the
   labels whose catalogue errors are large against their spread at fixed other labels
   (regression dilution: [Mg/Fe], [Al/Fe]), so fitted labels come out stretched about the
   mean. Per label, the slope of refined on true labels is cov(refined, catalogue) /
   (var(catalogue) − ⟨e²⟩) (the catalogue noise is independent of the spectrum); refined
   labels are mapped back to the catalogue's scale with it.
2. **Errors.** Formal errors σ (from JᵀWJ) miss the emulator's own errors. Model:
   err² = a² σ² + b², a and b by maximum likelihood of Δ = refined − catalogue ~
   N(0, a²σ² + b² + e²) with outliers clipped. (Matching the 68 % coverage of Δ directly was
   tried and is ill-posed where the catalogue errors exceed the refined ones, as for Teff:
   the valid stars' coverage is then near 0.68 whatever the refined errors are.)
3. **Combination with the network.** The network's and the refined labels err differently (the
   network learns the catalogue's labels from the whole spectrum; the fit weighs each pixel by
   its noise through the emulator), so their precision-weighted mean beats both. The
   correlation ρ of their errors is fitted per label by maximum likelihood of the two
   residuals against the catalogue, whose shared noise e² is deconvolved:
   (Δ_net, Δ_ref) ~ N(0, [[σ_n² + e², ρσ_nσ_r + e²], [ρσ_nσ_r + e², σ_r² + e²]]), σ_n and σ_r the
   calibrated errors. The combined label is w·net + (1 − w)·refined with
   w = (σ_r² − ρσ_nσ_r) / (σ_n² + σ_r² − 2ρσ_nσ_r) clipped to [0, 1], its error
   √(w²σ_n² + (1 − w)²σ_r² + 2w(1 − w)ρσ_nσ_r).
4. **Flag.** A star is unlike the training set when its χ²/pixel exceeds
   exp(median + k · 1.4826 MAD) of log χ²/pixel over the valid stars (robust to the defective
   spectra among them).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import optimize

from ..dilution import apply_scale, label_scale

#: iterations of the outlier clip of the scale and error fits
CLIP_PASSES = 3


def chi2_threshold(chi2_red: np.ndarray, n_mad: float) -> float:
    """exp(median + n_mad · 1.4826 MAD) of log χ²/pixel (finite values)."""
    logs = np.log(chi2_red[np.isfinite(chi2_red) & (chi2_red > 0)])
    if logs.size == 0:
        raise ValueError("no finite χ² to set the flag threshold from")
    med = np.median(logs)
    return float(np.exp(med + n_mad * 1.4826 * np.median(np.abs(logs - med))))


def error_model(delta: np.ndarray, formal: np.ndarray, catalogue_err: np.ndarray,
                outlier_sigma: float) -> dict[str, float]:
    """(a, b) of err² = a² σ² + b² by maximum likelihood of Δ = label − catalogue label ~
    N(0, a² σ² + b² + e²), stars beyond ``outlier_sigma`` left out (iterated)."""
    use = np.isfinite(delta) & np.isfinite(formal) & (formal > 0) & np.isfinite(catalogue_err)
    a, b = 1.0, 0.0
    typical = float(np.median(np.abs(delta[use]))) if use.any() else 1.0
    for _ in range(CLIP_PASSES):
        d, s, e = delta[use], formal[use], catalogue_err[use]
        if d.size < 3:
            break

        def nll(p: np.ndarray) -> float:
            var = np.exp(2 * p[0]) * s ** 2 + (p[1] * typical) ** 2 + e ** 2
            return float(0.5 * np.sum(d ** 2 / var + np.log(var)))

        res = optimize.minimize(nll, x0=[np.log(max(a, 1e-3)), b / max(typical, 1e-12)],
                                method="L-BFGS-B", bounds=[(-5.0, 8.0), (0.0, 100.0)])
        a, b = float(np.exp(res.x[0])), float(res.x[1] * typical)
        z = delta / np.sqrt(a ** 2 * formal ** 2 + b ** 2 + catalogue_err ** 2)
        keep = use & (np.abs(z) <= outlier_sigma)
        if keep.sum() == use.sum():
            break
        use = keep
    d, s, e = np.abs(delta[use]), formal[use], catalogue_err[use]

    def coverage(err: np.ndarray) -> float:
        return float(np.mean(d <= np.sqrt(err ** 2 + e ** 2))) if d.size else float("nan")

    return {"a": a, "b": b, "n": int(use.sum()), "coverage_68_formal": coverage(s),
            "coverage_68": coverage(np.sqrt(a ** 2 * s ** 2 + b ** 2))}


def calibrated_errors(formal: np.ndarray, model: Mapping[str, float], slope: float) -> np.ndarray:
    """err = √(a² (σ/slope)² + b²) for formal errors σ of refined labels before rescaling."""
    s = np.asarray(formal, dtype=np.float64) / slope
    return np.sqrt(model["a"] ** 2 * s ** 2 + model["b"] ** 2)


def fit_correlation(delta_network: np.ndarray, network_err: np.ndarray,
                    delta_refined: np.ndarray, refined_err: np.ndarray,
                    catalogue_err: np.ndarray, outlier_sigma: float) -> dict[str, Any]:
    """ρ of the network's and the refined label's errors by maximum likelihood of their
    residuals against the catalogue (module docstring, item 3); stars beyond ``outlier_sigma``
    in either residual are left out (iterated)."""
    a, b = np.asarray(delta_network, float), np.asarray(delta_refined, float)
    sn, sr, e = (np.asarray(v, float) for v in (network_err, refined_err, catalogue_err))
    use = np.isfinite(a) & np.isfinite(b) & (sn > 0) & (sr > 0) & np.isfinite(e)
    rho = 0.0
    for _ in range(CLIP_PASSES):
        if use.sum() < 3:
            return {"rho": 0.0, "n": int(use.sum())}
        x, y, p, q, v = a[use], b[use], sn[use], sr[use], e[use] ** 2
        va, vb = p ** 2 + v, q ** 2 + v

        def nll(r: float) -> float:
            c = r * p * q + v
            det = va * vb - c ** 2
            return float(np.sum(0.5 * np.log(det) + 0.5 * (vb * x ** 2 - 2 * c * x * y
                                                             + va * y ** 2) / det))

        rho = float(optimize.minimize_scalar(nll, bounds=(-0.99, 0.99), method="bounded").x)
        keep = use & (np.abs(a) <= outlier_sigma * np.sqrt(sn ** 2 + e ** 2)) \
            & (np.abs(b) <= outlier_sigma * np.sqrt(sr ** 2 + e ** 2))
        if keep.sum() == use.sum():
            break
        use = keep
    return {"rho": rho, "n": int(use.sum())}


def combine(network: np.ndarray, network_err: np.ndarray, refined: np.ndarray,
            refined_err: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(label, error) of the precision-weighted mean of the network's and the refined label
    with error correlation ``rho`` (module docstring, item 3); the network's alone where the
    refined label or an error is missing."""
    n, sn = np.asarray(network, float), np.asarray(network_err, float)
    r, sr = np.asarray(refined, float), np.asarray(refined_err, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.clip((sr ** 2 - rho * sn * sr) / (sn ** 2 + sr ** 2 - 2 * rho * sn * sr), 0, 1)
        both = np.isfinite(w) & np.isfinite(r) & np.isfinite(sr)
        value = np.where(both, w * n + (1 - w) * r, n)
        var = np.where(both, w ** 2 * sn ** 2 + (1 - w) ** 2 * sr ** 2
                       + 2 * w * (1 - w) * rho * sn * sr, sn ** 2)
    return value, np.sqrt(np.clip(var, 0, None))


def calibrate(refined: np.ndarray, formal: np.ndarray, chi2_red: np.ndarray,
              converged: np.ndarray, catalogue: np.ndarray, catalogue_err: np.ndarray,
              labels: list[str], cfg: Mapping[str, Any], network: np.ndarray,
              network_err: np.ndarray) -> dict[str, Any]:
    """The calibration of a set of valid stars (arrays (N, K) / (N,)); ``cfg`` is the refine
    section's ``calibration`` block; ``network`` / ``network_err`` the network's labels and
    calibrated errors of the same stars (for the combination). Stars that did not converge or
    are flagged take no part."""
    threshold = chi2_threshold(chi2_red[converged], cfg["flag_mad"])
    use = converged & (chi2_red <= threshold)
    out: dict[str, Any] = {"chi2_red_threshold": threshold, "n_valid": int(len(chi2_red)),
                           "n_converged": int(converged.sum()), "n_used": int(use.sum()),
                           "labels": {}}
    for k, label in enumerate(labels):
        scale = label_scale(refined[use, k], catalogue[use, k], catalogue_err[use, k],
                            cfg["outlier_sigma"])
        if not cfg["rescale_labels"]:
            scale = dict(scale, slope=1.0, predicted_mean=float("nan"),
                         catalogue_mean=float("nan"))
        slope = scale["slope"]
        values = apply_scale(refined[use, k], scale)
        errors = error_model(values - catalogue[use, k], formal[use, k] / slope,
                             catalogue_err[use, k], cfg["outlier_sigma"])
        combination = fit_correlation(
            network[use, k] - catalogue[use, k], network_err[use, k],
            values - catalogue[use, k], calibrated_errors(formal[use, k], errors, slope),
            catalogue_err[use, k], cfg["outlier_sigma"])
        out["labels"][label] = {"scale": scale, "errors": errors, "combination": combination}
    return out
