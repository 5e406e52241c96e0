"""The physical limit: Cramér–Rao lower bounds (CRLB) on stellar labels from the simulator.

For a known forward model F(labels) and independent Gaussian pixel noise σ_i, no unbiased
estimator can beat

    bound = sqrt(diag(F⁻¹)),   F = Jᵀ diag(1/σ²) J,   J = ∂F/∂labels   (over unmasked pixels)

(Ting et al. 2017 used it for survey design). The simulated surveys have exactly such a model,
so a measured σ(predicted − true) can be set beside what the data allow.

Noise model: the simulator's photon noise on a normalised spectrum at per-pixel S/N s is
σ_i = sqrt(f_i)/s (continuum pixels have S/N s, line cores fewer photons); the blaze shape, which
varies S/N slowly along a setup, is neglected here.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .simulate.physics import DEFAULT_STEPS, ForwardModel, LABEL_ORDER


def fisher_matrix(jacobian: np.ndarray, sigma: np.ndarray,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """F = Jᵀ diag(1/σ²) J over pixels where mask is False; J has shape (n_pixels, n_labels)."""
    jacobian = np.asarray(jacobian, dtype=np.float64)
    weight = 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    if mask is not None:
        weight = np.where(np.asarray(mask, dtype=bool), 0.0, weight)
    return jacobian.T @ (jacobian * weight[:, None])


def crlb_from_jacobian(jacobian: np.ndarray, sigma: np.ndarray,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """sqrt(diag(F⁻¹)) per label; inf for labels the pixels carry no information on."""
    fisher = fisher_matrix(jacobian, sigma, mask)
    try:
        cov = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(fisher)
        cov[np.isclose(np.diag(fisher), 0.0), :] = np.inf
    diag = np.diag(cov)
    return np.sqrt(np.where(diag > 0, diag, np.inf))


def photon_sigma(flux: np.ndarray, snr: float) -> np.ndarray:
    """σ of normalised flux with photon noise and S/N ``snr`` at the continuum."""
    return np.sqrt(np.clip(np.asarray(flux, dtype=np.float64), 0.01, None)) / float(snr)


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
