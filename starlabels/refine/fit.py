"""Per-star likelihood fit of the emulator to observed spectra: batched Levenberg–Marquardt,
vectorised over stars in torch (CPU or GPU).

For each star, minimise

    χ² = Σ_λ (model_λ − flux_λ)² / (σ²_λ + s²_λ)  [+ Σ_k (x_k − μ_k)² / τ_k² with a prior]

over the labels, the emulator's latent nuisances when it has them (:mod:`.train`; they start at 0,
the training stars' mean, without a prior), and optionally two more:

* a continuum correction, model = emulator × (1 + Σ c_j P_j) with Legendre polynomials P_j up to
  ``continuum_order`` per grid segment (what the normalize stage's continuum left);
* a radial-velocity shift v (km/s), to first order: model = f − (v/c) λ ∂f/∂λ, ∂f/∂λ by central
  differences within each segment (the residual shifts after normalize are a fraction of a pixel).

Masked pixels (ivar 0) carry no weight. Each iteration solves (JᵀWJ + λ diag JᵀWJ) δ = JᵀW r per
star; a step is kept where it lowers χ², and stars leave the batch as they converge, so the cost
follows the stars still moving. The formal covariance is (JᵀWJ)⁻¹ at the solution (the prior's
curvature included when there is one), its label block marginalised over the nuisances.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..spectral import C_KMS
from .emulator import Emulator, pixel_weights


@dataclass
class Nuisances:
    """The grid the emulator's flux lives on and the nuisances fitted with the labels."""
    wavelength: torch.Tensor          # (P,) air Å
    continuum: torch.Tensor           # (n_c, P) Legendre terms, zero outside their segment
    shift_scale: torch.Tensor         # (P,) −(λ/c) / (λ_right − λ_left) of the difference
    edges: tuple[tuple[int, int, int], ...]   # (pixel, left, right) where a segment starts/ends
    rv: bool

    @classmethod
    def build(cls, wavelength: np.ndarray, segment_slices: Sequence[slice],
              continuum_order: int | None, rv: bool, device: torch.device) -> "Nuisances":
        wavelength = np.asarray(wavelength, dtype=np.float64)
        n = wavelength.size
        terms, left, right = [], np.arange(n), np.arange(n)
        for sl in segment_slices:
            idx = np.arange(sl.start, sl.stop)
            if idx.size < 2:
                raise ValueError(f"grid segment {sl} has fewer than 2 pixels")
            left[idx] = np.maximum(idx - 1, sl.start)
            right[idx] = np.minimum(idx + 1, sl.stop - 1)
            if continuum_order is not None:
                t = np.linspace(-1.0, 1.0, idx.size)
                vander = np.polynomial.legendre.legvander(t, int(continuum_order))
                for j in range(vander.shape[1]):
                    row = np.zeros(n)
                    row[idx] = vander[:, j]
                    terms.append(row)
        continuum = np.array(terms, dtype=np.float32).reshape(len(terms), n)
        scale = -(wavelength / C_KMS) / (wavelength[right] - wavelength[left])
        # pixels whose neighbours are not p ± 1 (first and last of each segment)
        edges = tuple((int(p), int(left[p]), int(right[p])) for p in range(n)
                      if left[p] != p - 1 or right[p] != p + 1)
        as_t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        return cls(as_t(wavelength, torch.float32), as_t(continuum, torch.float32),
                   as_t(scale, torch.float32), edges, bool(rv))

    @property
    def n_continuum(self) -> int:
        return int(self.continuum.shape[0])

    def n_params(self, n_labels: int) -> int:
        return n_labels + self.n_continuum + int(self.rv)

    def shift_derivative(self, flux: torch.Tensor) -> torch.Tensor:
        """∂model/∂v for model = f(λ(1 − v/c)): −(λ/c) ∂f/∂λ (B, P), central differences
        within each segment (slices, not gathers: this runs every iteration)."""
        diff = torch.empty_like(flux)
        diff[:, 1:-1] = flux[:, 2:] - flux[:, :-2]
        for p, lo, hi in self.edges:
            diff[:, p] = flux[:, hi] - flux[:, lo]
        return diff * self.shift_scale


@dataclass
class FitResult:
    """Per star: labels (physical units), their covariance, nuisances, χ² and the model."""
    labels: np.ndarray          # (B, K)
    covariance: np.ndarray      # (B, K, K), physical units, marginalised over nuisances
    continuum: np.ndarray       # (B, n_c)
    rv: np.ndarray              # (B,) km/s (0 when not fitted)
    chi2: np.ndarray            # (B,)
    n_pixels: np.ndarray        # (B,) pixels with weight
    n_params: int
    n_iter: np.ndarray          # (B,)
    converged: np.ndarray       # (B,) bool
    at_bound: np.ndarray        # (B,) bool: a label ended on the emulator's allowed edge
    model: np.ndarray           # (B, P) float32 best-fit model spectra

    @property
    def chi2_red(self) -> np.ndarray:
        dof = self.n_pixels - self.n_params
        return np.where(dof > 0, self.chi2 / np.maximum(dof, 1), np.nan)

    @property
    def errors(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diagonal(self.covariance, axis1=1, axis2=2), 0, None))


def _evaluate(emulator: Emulator, nuis: Nuisances, params: torch.Tensor, n_labels: int,
              root_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model (B, P) and weighted Jacobian √w ∂model/∂params (B, n_params, P) at ``params``
    (scaled labels, continuum coefficients, v); JᵀWJ is then one batched product of it with
    itself.

    The label columns leave out v·∂²f/∂λ∂x (the derivative shifted by a fraction of a pixel):
    it changes only the path to the minimum, not where it is."""
    flux, jac = emulator.flux_and_jacobian(params[:, :n_labels])
    out = torch.empty((flux.shape[0], nuis.n_params(n_labels), flux.shape[1]),
                      dtype=flux.dtype, device=flux.device)
    shifted, scale = flux, root_weight
    if nuis.rv:
        dshift = nuis.shift_derivative(flux)
        shifted = flux + params[:, -1:] * dshift
    if nuis.n_continuum:
        cont = 1.0 + params[:, n_labels:n_labels + nuis.n_continuum] @ nuis.continuum
        model = shifted * cont
        scale = cont * root_weight
        torch.mul((shifted * root_weight)[:, None, :], nuis.continuum[None],
                  out=out[:, n_labels:n_labels + nuis.n_continuum])
    else:
        model = shifted
    torch.mul(jac, scale[:, None, :], out=out[:, :n_labels])
    if nuis.rv:
        torch.mul(dshift, scale, out=out[:, -1])
    return model, out


def _padded(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) physical inputs: ``labels`` and zeros for the latents after them."""
    out = torch.zeros((labels.shape[0], k), dtype=labels.dtype, device=labels.device)
    out[:, :labels.shape[1]] = labels
    return out


def fit_spectra(emulator: Emulator, flux: torch.Tensor, ivar: torch.Tensor,
                start: torch.Tensor, nuis: Nuisances, *, max_iterations: int,
                chi2_tolerance: float, label_margin: float,
                prior_mean: torch.Tensor | None = None,
                prior_sigma: torch.Tensor | None = None) -> FitResult:
    """Fit every spectrum (rows of ``flux`` / ``ivar``, on the emulator's device) from ``start``
    (physical labels, (B, K)); see the module docstring.

    ``label_margin``: labels may leave the training range by this fraction of its half-width
    (the emulator extrapolates poorly beyond); a star that ends on that edge is not converged.
    A star converges when an accepted step lowers χ² by less than ``chi2_tolerance`` times
    max(1, χ²/pixel) (a poor fit's χ² surface is that much flatter); ``prior_mean`` /
    ``prior_sigma`` (physical, (B, K)) add a Gaussian prior on the labels. An emulator with
    latent inputs after its K labels frees them too; labels and covariance are returned for
    the K labels, marginalised over the latents.
    """
    device = flux.device
    n_stars = flux.shape[0]
    k = emulator.n_labels                      # the emulator's inputs: labels, then latents
    n_labels = start.shape[1]
    n_par = nuis.n_params(k)
    with torch.no_grad():
        weight = pixel_weights(ivar, emulator.s2)
        root = weight.sqrt()
        n_used = (weight > 0).sum(1)
        limit = 1.0 + float(label_margin)
        params = torch.zeros((n_stars, n_par), device=device)
        # latents start at 0, the training stars' mean
        params[:, :k] = emulator.scale(_padded(start.to(device), k)).clamp(-limit, limit)
        prior_curv = torch.zeros((n_stars, n_par, n_par), dtype=torch.float64, device=device)
        if prior_mean is not None:
            mu = emulator.scale(_padded(prior_mean.to(device), k))[:, :n_labels]
            tau = (prior_sigma.to(device) / emulator.label_half_range[:n_labels]).clamp_min(1e-6)
            prior_curv[:, range(n_labels), range(n_labels)] = (1.0 / tau ** 2).double()

        def penalty(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if prior_mean is None:
                return torch.zeros(len(rows), device=device)
            return (((p[:, :n_labels] - mu[rows]) / tau[rows]) ** 2).sum(1)

        def normal(wjac: torch.Tensor, wres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ((wjac @ wjac.transpose(1, 2)).double(),
                    (wjac @ wres[:, :, None]).squeeze(-1).double())

        everyone = torch.arange(n_stars, device=device)
        model, wjac = _evaluate(emulator, nuis, params, k, root)
        wres = (flux - model) * root
        chi2 = (wres * wres).sum(1) + penalty(params, everyone)
        # JᵀWJ and JᵀWr at each star's current parameters (no prior, no damping)
        curvature, gradient = normal(wjac, wres)
        del wjac, wres
        damping = torch.full((n_stars,), 1e-3, device=device)
        n_iter = torch.zeros(n_stars, dtype=torch.long, device=device)
        converged = torch.zeros(n_stars, dtype=torch.bool, device=device)
        active = everyone
        f_act, r_act = flux, root              # the active stars' rows, compacted as they leave
        for _ in range(int(max_iterations)):
            if active.numel() == 0:
                break
            a = curvature[active] + prior_curv[active]
            g = gradient[active].clone()
            if prior_mean is not None:
                g[:, :n_labels] -= ((params[active, :n_labels] - mu[active])
                                    / tau[active] ** 2).double()
            diag = a.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
            step = torch.linalg.solve(a + torch.diag_embed(damping[active, None].double() * diag),
                                      g[:, :, None]).squeeze(-1).float()
            trial = params[active] + step
            trial[:, :k] = trial[:, :k].clamp(-limit, limit)
            m_new, wjac = _evaluate(emulator, nuis, trial, k, r_act)
            wres = (f_act - m_new) * r_act
            chi_new = (wres * wres).sum(1) + penalty(trial, active)
            ok = torch.isfinite(chi_new) & (chi_new < chi2[active])
            gain = torch.where(ok, chi2[active] - chi_new, torch.zeros_like(chi_new))
            keep = active[ok]
            if keep.numel():
                # the normal equations of every trial, then the kept ones' rows: cheaper than
                # gathering the kept rows of the (stars, parameters, pixels) Jacobian first
                curv_new, grad_new = normal(wjac, wres)
                params[keep] = trial[ok]
                model[keep] = m_new[ok]
                chi2[keep] = chi_new[ok]
                curvature[keep], gradient[keep] = curv_new[ok], grad_new[ok]
            del m_new, wjac, wres
            damping[active] = torch.where(ok, damping[active] / 3, damping[active] * 10)
            n_iter[active] += 1
            scale = (chi2[active] / n_used[active].clamp_min(1)).clamp_min(1.0)
            done = ok & (gain < chi2_tolerance * scale)
            converged[active[done]] = True
            still = ~(done | (damping[active] > 1e8))
            if not bool(still.all()):
                active, f_act, r_act = active[still], f_act[still], r_act[still]
        # formal covariance at the solution (undamped), nuisances marginalised
        cov = torch.linalg.pinv(curvature + prior_curv, hermitian=True)
        half = emulator.label_half_range[:n_labels].double()
        label_cov = cov[:, :n_labels, :n_labels] * half[None, :, None] * half[None, None, :]
        at_bound = (params[:, :k].abs() >= limit - 1e-6).any(1)
        labels = emulator.unscale(params[:, :k])[:, :n_labels]
        chi2_data = chi2 - penalty(params, everyone)
    return FitResult(
        labels=labels.double().cpu().numpy(), covariance=label_cov.cpu().numpy(),
        continuum=params[:, k:k + nuis.n_continuum].cpu().numpy(),
        rv=(params[:, -1] if nuis.rv else torch.zeros(n_stars)).cpu().numpy(),
        chi2=chi2_data.double().cpu().numpy(), n_pixels=n_used.cpu().numpy(), n_params=n_par,
        n_iter=n_iter.cpu().numpy(), converged=(converged & ~at_bound).cpu().numpy(),
        at_bound=at_bound.cpu().numpy(), model=model.float().cpu().numpy())


def nuisances_for_grid(grid_cfg: Mapping, continuum_order: int | None, rv: bool,
                       device: torch.device) -> Nuisances:
    """:class:`Nuisances` of an experiment's ``grid`` section."""
    from ..grid import WavelengthGrid

    grid = WavelengthGrid.from_config(grid_cfg["segments"])
    return Nuisances.build(grid.wavelength_air, list(grid.segment_slices.values()),
                           continuum_order, rv, device)
