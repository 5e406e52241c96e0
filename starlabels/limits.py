"""The physical limit: Cramér–Rao lower bounds (CRLB) on stellar labels from the simulator.

For a known forward model F(θ) and Gaussian pixel noise with covariance C, no unbiased estimator
can beat

    bound = sqrt(diag(F⁻¹)),   F = Jᵀ C⁻¹ J + P,   J = ∂F/∂θ   (over unmasked pixels)

(Ting et al. 2017 used it for survey design), P = diag(1/σ_prior²) for parameters the survey
knows to a prior σ. The simulated surveys have exactly such a model, so a measured
σ(predicted − true) can be set beside what the data allow. Two bounds (:func:`star_bounds`):

* **idealised** — θ = the five labels; continuum, RV, broadening, microturbulence and LSF known;
  independent photon noise σ_i = sqrt(f_i)/s at per-pixel S/N s (continuum pixels have S/N s,
  line cores fewer photons);
* **marginalised** — θ also holds the nuisances a fit must solve for (:class:`Nuisances`):
  continuum polynomial coefficients per segment (the normaliser's order; free), the RV (prior σ:
  what the archive's correction leaves), microturbulence (prior σ: its scatter around the
  relation), line broadening (free), the LSF width per setup (prior σ: fibre-to-fibre scatter)
  and the telluric strength (free); the noise adds read noise and the correlation between
  neighbouring pixels. Inverting the full matrix gives a bound never smaller than the idealised
  one.

Systematics that bias rather than scatter (flat-field ripple, blaze shapes beyond the continuum
order, sky-subtraction residuals, wavelength-solution errors, catalogue offsets) have no place in a
variance bound and are not in either. The blaze shape, which varies S/N slowly along a setup, is
neglected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.polynomial import chebyshev
from scipy.linalg import solveh_banded

from .simulate.instrument import noise_autocorrelation
from .simulate.physics import (DEFAULT_STEPS, Broadening, Exposure, ForwardModel, LABEL_ORDER,
                               as_label_dict, microturbulence_kms)


def fisher_matrix(jacobian: np.ndarray, sigma: np.ndarray, mask: np.ndarray | None = None,
                  correlation: np.ndarray | None = None) -> np.ndarray:
    """F = Jᵀ C⁻¹ J over pixels where mask is False; J has shape (n_pixels, n_parameters).

    C = diag(σ) R diag(σ), R the pixels' noise correlation: ``correlation`` = R at lags 0, 1, …
    (None or [1]: independent pixels). Masked pixels are left out of C, not only of J.
    """
    jacobian = np.asarray(jacobian, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    keep = np.ones(sigma.size, dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
    if correlation is None or np.size(correlation) <= 1:
        scale = 1.0 if correlation is None else float(np.ravel(correlation)[0])
        weight = np.where(keep, 1.0 / (scale * sigma ** 2), 0.0)
        return jacobian.T @ (jacobian * weight[:, None])
    idx = np.flatnonzero(keep)
    whitened = jacobian[idx] / sigma[idx, None]
    band = np.asarray(correlation, dtype=np.float64)
    b = band.size - 1
    # upper banded storage of R restricted to the kept pixels: entry (i, i+u) is R at the lag
    # between the two kept pixels' original positions
    ab = np.zeros((b + 1, idx.size))
    ab[b] = band[0]
    for u in range(1, min(b, idx.size - 1) + 1):
        lag = idx[u:] - idx[:-u]
        ab[b - u, u:] = np.where(lag <= b, band[np.minimum(lag, b)], 0.0)
    solved = solveh_banded(ab, whitened)
    return whitened.T @ solved


def crlb_from_fisher(fisher: np.ndarray, prior_sigma: np.ndarray | None = None) -> np.ndarray:
    """sqrt(diag((F + P)⁻¹)), P = diag(1/prior_sigma²) (inf: no prior); inf for parameters the
    pixels carry no information on."""
    fisher = np.array(fisher, dtype=np.float64)
    if prior_sigma is not None:
        prior = np.asarray(prior_sigma, dtype=np.float64)
        fisher[np.diag_indices_from(fisher)] += np.where(np.isfinite(prior), 1.0 / prior ** 2,
                                                         0.0)
    try:
        cov = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(fisher)
        cov[np.isclose(np.diag(fisher), 0.0), :] = np.inf
    diag = np.diag(cov)
    return np.sqrt(np.where(diag > 0, diag, np.inf))


def crlb_from_jacobian(jacobian: np.ndarray, sigma: np.ndarray,
                       mask: np.ndarray | None = None, correlation: np.ndarray | None = None,
                       prior_sigma: np.ndarray | None = None) -> np.ndarray:
    """sqrt(diag(F⁻¹)) per parameter (see :func:`fisher_matrix`, :func:`crlb_from_fisher`)."""
    return crlb_from_fisher(fisher_matrix(jacobian, sigma, mask, correlation), prior_sigma)


def photon_sigma(flux: np.ndarray, snr: float, read_noise_electrons: float = 0.0) -> np.ndarray:
    """σ of normalised flux with photon (and read) noise and S/N ``snr`` at the continuum.

    As the simulator makes it: the continuum holds n electrons with n²/(n + r²) = S/N², so
    σ_i = sqrt(n f_i + r²)/n (= sqrt(f_i)/S/N without read noise)."""
    f = np.clip(np.asarray(flux, dtype=np.float64), 0.01, None)
    snr = float(snr)
    r2 = float(read_noise_electrons) ** 2
    if r2 == 0:
        return np.sqrt(f) / snr
    n = 0.5 * (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * r2))
    return np.sqrt(n * f + r2) / n


def binned_correlation(sigma_pixels: float, raw_step: float, grid_step: float) -> np.ndarray:
    """Noise covariance of the experiment's grid pixels at lags 0, 1, …, in units of the
    variance normalize reports for them, when the raw pixels' noise is correlated by a Gaussian
    of σ ``sigma_pixels`` raw pixels and each grid pixel averages m = grid/raw step raw pixels
    (normalize assumes independent raw pixels, so lag 0 is > 1: the reported σ is too small)."""
    rho = noise_autocorrelation(sigma_pixels)
    m = max(1, int(round(grid_step / raw_step)))
    if rho.size == 1 and m >= 1:
        return np.ones(1)
    lags = np.arange(0, (rho.size - 1) // m + 2)
    a = np.arange(m)
    diff = lags[:, None, None] * m + a[None, None, :] - a[None, :, None]
    values = np.where(np.abs(diff) < rho.size, rho[np.minimum(np.abs(diff), rho.size - 1)], 0.0)
    out = values.sum(axis=(1, 2)) / m
    return out[: np.flatnonzero(out > 1e-6).max() + 1]


def star_crlb(model: ForwardModel, labels: Mapping[str, float], snr: float,
              label_names: Sequence[str] = LABEL_ORDER,
              steps: Mapping[str, float] | None = None,
              lines: pd.DataFrame | None = None) -> dict[str, float]:
    """CRLB of each label for one star of ``labels`` observed at ``snr`` through ``model``.

    All five simulator labels are estimated jointly (a label not in ``label_names`` is still a
    nuisance parameter of the spectrum), then the requested ones are returned.
    """
    jac = model.jacobian(labels, steps, lines=lines)
    flux = model.flux(labels, lines=lines)
    bound = crlb_from_jacobian(jac, photon_sigma(flux, snr))
    full = dict(zip(LABEL_ORDER, bound))
    return {name: float(full[name]) for name in label_names}


def step_study(model: ForwardModel, labels: Mapping[str, float], label: str,
               factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> pd.DataFrame:
    """|∂flux/∂label| for central-difference steps DEFAULT_STEPS[label] × factor.

    In the flat regime the derivative does not depend on the step; the default step is
    trustworthy when its neighbours agree to a few per cent.
    """
    rows = []
    for factor in factors:
        step = DEFAULT_STEPS[label] * factor
        deriv = model.jacobian(labels, {label: step}, label_names=(label,))[:, 0]
        rows.append({"label": label, "step": step, "norm": float(np.linalg.norm(deriv))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- marginalised bound

@dataclass(frozen=True)
class Nuisances:
    """What a fit of one star must solve for besides the labels, and the noise it meets.

    ``continuum_order``: Chebyshev order of the continuum per grid segment (None: known);
    ``*_sigma``: prior σ of a nuisance the survey knows approximately (0: known exactly, no
    column; inf: free); ``broadening`` / ``telluric``: free columns on or off;
    ``read_noise_electrons``; ``noise_correlation``: per segment name, the grid pixels' noise
    covariance at lags 0, 1, … (:func:`binned_correlation`).
    """
    continuum_order: int | None = None
    rv_sigma_kms: float = 0.0
    vmic_sigma_kms: float = 0.0
    broadening: bool = False
    resolution_sigma: float = 0.0
    telluric: bool = False
    read_noise_electrons: float = 0.0
    noise_correlation: Mapping[str, np.ndarray] | None = None


#: central-difference steps of the nuisance columns
NUISANCE_STEPS = {"rv": 0.5, "vmic": 0.1, "broadening": 0.5, "resolution_scale": 0.01,
                  "telluric_strength": 0.1}


def nuisances_for(simulate_cfg: Mapping[str, Any], continuum_order: int, grid_cfg: Mapping[str, Any],
                  catalogue_rv: bool) -> tuple[Nuisances, Exposure]:
    """The nuisances of a star of the simulated survey ``simulate_cfg`` (the ``simulate``
    section), fitted on the experiment's grid with a continuum of ``continuum_order``;
    ``catalogue_rv``: normalize removes the catalogue's RV (its error adds to the residual).
    Also the typical exposure (median telluric strength, the setups' resolution taper)."""
    stars, observing = simulate_cfg["stars"], simulate_cfg["observing"]
    instrument = simulate_cfg["instrument"]
    rv_error = observing["catalogue_rv_error_kms"] if catalogue_rv else 0.0
    rot, mac = stars["rotation"], stars["macroturbulence"]
    broadening = (rot["slow_mean_kms"] > 0 or rot["fast_mean_kms"] > 0 or mac["scale"] > 0
                  or mac["scatter_kms"] > 0)
    tel = observing["telluric"]
    steps = {s["name"]: float(s["step"]) for s in simulate_cfg["setups"]}
    correlation = {seg["name"]: binned_correlation(instrument["noise_correlation_pixels"],
                                                   steps.get(seg["name"], float(seg["step"])),
                                                   float(seg["step"]))
                   for seg in grid_cfg["segments"]}
    nuisances = Nuisances(
        continuum_order=int(continuum_order),
        rv_sigma_kms=float(np.hypot(observing["residual_rv_kms"], rv_error)),
        vmic_sigma_kms=float(stars["microturbulence_scatter_kms"]),
        broadening=bool(broadening),
        resolution_sigma=float(instrument["resolution_fibre_sigma"]),
        telluric=tel["strength"] > 0,
        read_noise_electrons=float(instrument["read_noise_electrons"]),
        noise_correlation=correlation)
    exposure = Exposure(resolution_taper=float(instrument["resolution_taper"]),
                        telluric_strength=float(tel["strength"] * np.mean(tel["airmass"])))
    return nuisances, exposure


def _difference(model: ForwardModel, intrinsic, star: Broadening, exposure: Exposure,
                field: str, step: float, owner: str) -> np.ndarray:
    """Central (forward at a lower bound of 0) difference of the observed flux with respect to
    one field of the star's broadening or of the exposure."""
    def flux(value):
        if owner == "star":
            s = Broadening(**{**star.__dict__, field: value})
            return np.concatenate(model.observe(intrinsic, star=s, exposure=exposure))
        e = Exposure(**{**exposure.__dict__, field: value})
        return np.concatenate(model.observe(intrinsic, star=star, exposure=e))

    value = getattr(star if owner == "star" else exposure, field)
    if value - step < 0:
        return (flux(value + step) - flux(value)) / step
    return (flux(value + step) - flux(value - step)) / (2.0 * step)


def nuisance_jacobian(model: ForwardModel, labels: Mapping[str, float], star: Broadening,
                      exposure: Exposure, nuisances: Nuisances, lines: pd.DataFrame | None = None
                      ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """∂flux/∂nuisance columns at the star's state: (J, column names, prior σ per column)."""
    lab = as_label_dict(labels)
    intrinsic = model.intrinsic_per_setup(lab, lines, star.vmic_kms)
    base = np.concatenate(model.observe(intrinsic, star=star, exposure=exposure))
    sizes = [inst.wavelength.size for inst in model.instruments]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cols, names, prior = [], [], []
    if nuisances.continuum_order is not None:
        # the normaliser divides by a polynomial per segment: a relative continuum error
        # multiplies the flux by (1 + Σ c_k T_k(x))
        for k, inst in enumerate(model.instruments):
            x = np.linspace(-1.0, 1.0, sizes[k])
            for order in range(nuisances.continuum_order + 1):
                col = np.zeros(base.size)
                col[starts[k]:starts[k + 1]] = base[starts[k]:starts[k + 1]] * \
                    chebyshev.chebval(x, np.eye(order + 1)[order])
                cols.append(col)
                names.append(f"continuum_{inst.name}_{order}")
                prior.append(np.inf)
    if nuisances.rv_sigma_kms > 0:
        h = NUISANCE_STEPS["rv"]
        cols.append((np.concatenate(model.observe(intrinsic, h, star=star, exposure=exposure))
                     - np.concatenate(model.observe(intrinsic, -h, star=star, exposure=exposure)))
                    / (2 * h))
        names.append("rv_kms")
        prior.append(nuisances.rv_sigma_kms)
    if nuisances.vmic_sigma_kms > 0:
        h = NUISANCE_STEPS["vmic"]
        vmic = star.vmic_kms
        if vmic is None:
            vmic = microturbulence_kms(lab["teff"], lab["logg"])
        up = model.observe(model.intrinsic_per_setup(lab, lines, vmic + h), star=star,
                           exposure=exposure)
        down = model.observe(model.intrinsic_per_setup(lab, lines, vmic - h), star=star,
                             exposure=exposure)
        cols.append((np.concatenate(up) - np.concatenate(down)) / (2 * h))
        names.append("vmic_kms")
        prior.append(nuisances.vmic_sigma_kms)
    if nuisances.broadening:
        # one column for the line broadening beyond the LSF: the larger of rotation and
        # macroturbulence (at R ≈ 10⁴ the two are nearly degenerate; what matters is the width)
        field = "vsini_kms" if star.vsini_kms > star.vmac_kms else "vmac_kms"
        cols.append(_difference(model, intrinsic, star, exposure, field,
                                NUISANCE_STEPS["broadening"], "star"))
        names.append("broadening_kms")
        prior.append(np.inf)
    if nuisances.resolution_sigma > 0:
        both = _difference(model, intrinsic, star, exposure, "resolution_scale",
                           NUISANCE_STEPS["resolution_scale"], "exposure")
        for k, inst in enumerate(model.instruments):
            col = np.zeros(base.size)
            col[starts[k]:starts[k + 1]] = both[starts[k]:starts[k + 1]]
            cols.append(col)
            names.append(f"resolution_{inst.name}")
            prior.append(nuisances.resolution_sigma)
    if nuisances.telluric and model.telluric is not None:
        col = _difference(model, intrinsic, star, exposure, "telluric_strength",
                          NUISANCE_STEPS["telluric_strength"], "exposure")
        if np.any(col != 0):
            cols.append(col)
            names.append("telluric")
            prior.append(np.inf)
    jac = np.stack(cols, axis=1) if cols else np.zeros((base.size, 0))
    return jac, names, np.asarray(prior, dtype=np.float64)


def _segment_fisher(jacobian: np.ndarray, sigma: np.ndarray, model: ForwardModel,
                    correlation: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Σ over setups of each setup's Fisher matrix (its own noise correlation)."""
    fisher = np.zeros((jacobian.shape[1], jacobian.shape[1]))
    start = 0
    for inst in model.instruments:
        stop = start + inst.wavelength.size
        corr = None if correlation is None else correlation.get(inst.name)
        fisher += fisher_matrix(jacobian[start:stop], sigma[start:stop], correlation=corr)
        start = stop
    return fisher


def star_bounds(model: ForwardModel, labels: Mapping[str, float], snr: float,
                nuisances: Nuisances, label_names: Sequence[str] = LABEL_ORDER, *,
                star: Broadening | None = None, exposure: Exposure | None = None,
                lines: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """Idealised and marginalised CRLB of each label (module docstring) for one star.

    ``star``: the star's broadening (its truth); ``exposure``: the observation the bound is for
    (e.g. :func:`nuisances_for`'s typical one). All five labels are estimated jointly.
    """
    star = star or Broadening()
    exposure = exposure or Exposure()
    jac = model.jacobian(labels, lines=lines, star=star, exposure=exposure)
    flux = model.flux(labels, lines=lines, star=star, exposure=exposure)
    ideal = crlb_from_jacobian(jac, photon_sigma(flux, snr))
    extra, _, prior = nuisance_jacobian(model, labels, star, exposure, nuisances, lines)
    full = np.concatenate([jac, extra], axis=1)
    sigma = photon_sigma(flux, snr, nuisances.read_noise_electrons)
    fisher = _segment_fisher(full, sigma, model, nuisances.noise_correlation)
    marg = crlb_from_fisher(fisher, np.concatenate([np.full(jac.shape[1], np.inf), prior]))
    return {"ideal": {k: float(v) for k, v in zip(LABEL_ORDER, ideal) if k in label_names},
            "marginalised": {k: float(v) for k, v in zip(LABEL_ORDER, marg[:jac.shape[1]])
                             if k in label_names}}
