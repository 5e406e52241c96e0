"""Spectral numerics shared by the simulator, normalize and synthesize stages.

- vacuum ↔ air wavelengths (IAU standard, Morton 2000 / Ciddor 1996, as used by VALD and SDSS),
- Doppler shifts,
- flux-conserving resampling onto a new pixel grid (overlap integration of pixel bins),
- Gaussian line-spread-function convolution at constant resolving power R (FWHM = λ/R),
- continuum fitting by an iteratively sigma-clipped Chebyshev polynomial, and the continuum
  normalisation of one grid segment that the normalize and synthesize stages share.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
from numpy.polynomial import chebyshev

from .batch import RejectSpectrum
from .grid import WavelengthGrid, pixel_edges

C_KMS = 299_792.458
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
# Masked pixels look like continuum to the network: no line signal, and ivar 0 says "no data".
MASKED_FLUX = 1.0


# ------------------------------------------------------------------ air / vacuum

def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Air wavelength (Å) from vacuum wavelength (Å); Morton (2000) eq. 3, valid above 2000 Å."""
    w = np.asarray(wavelength_vacuum, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return w / n


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Vacuum wavelength (Å) from air wavelength (Å); the inverse by N. Piskunov (VALD)."""
    w = np.asarray(wavelength_air, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = (1.0 + 0.00008336624212083 + 0.02408926869968 / (130.1065924522 - s2)
         + 0.0001599740894897 / (38.92568793293 - s2))
    return w * n


def doppler_shift(wavelength: np.ndarray, rv_kms: float) -> np.ndarray:
    """Wavelengths seen by an observer for a source receding at ``rv_kms`` (relativistic)."""
    beta = rv_kms / C_KMS
    return np.asarray(wavelength, dtype=np.float64) * np.sqrt((1.0 + beta) / (1.0 - beta))


# ------------------------------------------------------------------ resampling

def resample_flux(wavelength_in: np.ndarray, flux_in: np.ndarray, wavelength_out: np.ndarray,
                  ivar_in: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux-conserving resampling by exact overlap of pixel bins.

    Each output pixel gets the overlap-weighted mean flux of the input pixels it covers, so the
    integral of flux over wavelength is conserved (what matters for line strengths). Inverse
    variances are propagated for the weighted mean. Output pixels not fully covered by the input
    get coverage < 1; callers mask those.

    Returns (flux_out, ivar_out, coverage) on ``wavelength_out``.
    """
    w_in = np.asarray(wavelength_in, dtype=np.float64)
    f_in = np.asarray(flux_in, dtype=np.float64)
    iv_in = np.ones_like(f_in) if ivar_in is None else np.asarray(ivar_in, dtype=np.float64)
    edges_in = pixel_edges(w_in)
    edges_out = pixel_edges(np.asarray(wavelength_out, dtype=np.float64))

    good = np.isfinite(f_in) & np.isfinite(iv_in) & (iv_in > 0)
    f0 = np.where(good, f_in, 0.0)
    # Cumulative integrals over the input bins let every output bin's overlap be computed by
    # interpolation at its two edges: O(n) and exact for piecewise-constant input pixels.
    width = np.diff(edges_in)
    cum_f = np.concatenate([[0.0], np.cumsum(f0 * width)])
    cum_w = np.concatenate([[0.0], np.cumsum(good * width)])
    # Σ overlap·σ² accumulates like the flux (σ² spread uniformly over each input pixel)
    var = np.where(good, 1.0 / np.where(good, iv_in, 1.0), 0.0)
    cum_v = np.concatenate([[0.0], np.cumsum(var * width)])

    def at(cum, x):
        return np.interp(x, edges_in, cum)

    lo, hi = edges_out[:-1], edges_out[1:]
    wsum = at(cum_w, hi) - at(cum_w, lo)
    fsum = at(cum_f, hi) - at(cum_f, lo)
    vsum = at(cum_v, hi) - at(cum_v, lo)     # ≈ Σ overlap·width·σ²
    out_width = hi - lo
    coverage = np.clip(wsum / out_width, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_out = np.where(wsum > 0, fsum / wsum, np.nan)
        # Var(mean) = Σ (o_i σ_i)² / (Σ o_i)² with o_i ≤ w_i; approximating o_i·w_i by Σ o_i σ_i²·w
        # is exact when whole input pixels fall in the bin (→ σ²/k for k pixels) and, when
        # up-sampling, spreads the noise per unit wavelength so copies are not counted twice.
        mean_w = np.interp(0.5 * (lo + hi), w_in, width)
        var_out = vsum * mean_w / np.where(wsum > 0, wsum, np.inf) ** 2
        ivar_out = np.where((wsum > 0) & (var_out > 0), 1.0 / var_out, 0.0)
    outside = (hi <= edges_in[0]) | (lo >= edges_in[-1])
    flux_out[outside] = np.nan
    ivar_out[outside] = 0.0
    coverage[outside] = 0.0
    return flux_out, ivar_out, coverage


# ------------------------------------------------------------------ line-spread function

def log_lambda_grid(w_min: float, w_max: float, resolution_sampling: float) -> np.ndarray:
    """A grid uniform in ln λ with step 1/resolution_sampling (constant velocity pixels)."""
    n = int(np.ceil(np.log(w_max / w_min) * resolution_sampling)) + 1
    return w_min * np.exp(np.arange(n) / resolution_sampling)


def gaussian_kernel(sigma_pixels: float, truncate: float = 4.0) -> np.ndarray:
    half = max(1, int(np.ceil(truncate * sigma_pixels)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_pixels) ** 2)
    return k / k.sum()


def convolve_resolution(wavelength: np.ndarray, flux: np.ndarray, resolution: float,
                        resolution_in: float | None = None) -> np.ndarray:
    """Convolve ``flux`` with a Gaussian LSF of FWHM = λ/R (constant resolving power R).

    Works on any monotonic grid: the spectrum is interpolated onto a uniform ln λ grid (where a
    constant-R kernel has constant width), convolved, and interpolated back. If the input already
    has a finite resolution ``resolution_in``, the kernel is the quadrature difference so the
    result has resolution R. ``flux`` may be 2-D (rows = spectra on the same grid).
    """
    w = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    fwhm_v = 1.0 / resolution
    if resolution_in:
        fwhm_v = np.sqrt(max(fwhm_v ** 2 - (1.0 / resolution_in) ** 2, 0.0))
    if fwhm_v <= 0:
        return f.copy()
    # sample so the kernel has ≥ 4 pixels per σ, and not coarser than the input grid
    dlnw_in = np.median(np.diff(np.log(w)))
    dlnw = min(dlnw_in, fwhm_v * FWHM_TO_SIGMA / 4.0)
    lgrid = log_lambda_grid(w[0], w[-1], 1.0 / dlnw)
    kernel = gaussian_kernel(fwhm_v * FWHM_TO_SIGMA / dlnw)
    rows = np.atleast_2d(f)
    out = np.empty_like(rows)
    pad = kernel.size // 2
    for i, row in enumerate(rows):
        on_log = np.interp(lgrid, w, row)
        # edge padding keeps the continuum level at the ends instead of dragging it to zero
        padded = np.pad(on_log, pad, mode="edge")
        conv = np.convolve(padded, kernel, mode="valid")
        out[i] = np.interp(w, lgrid, conv)
    return out[0] if f.ndim == 1 else out


def convolve_variable_resolution(wavelength: np.ndarray, flux: np.ndarray,
                                 resolution: np.ndarray) -> np.ndarray:
    """Convolve with a Gaussian LSF whose resolving power ``resolution`` (one value per pixel of
    ``wavelength``) changes slowly along the spectrum.

    The spectrum is mapped onto u = ∫ R d ln λ, in which the LSF has FWHM 1 everywhere, convolved
    there with one kernel and mapped back: exact as long as R changes little over a kernel width,
    which holds for spectrograph resolution varying along a detector.
    """
    w = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    r = np.asarray(resolution, dtype=np.float64)
    lnw = np.log(w)
    u = np.concatenate([[0.0], np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(lnw))])
    # ≥ 4 samples per σ of the unit-FWHM kernel, and not coarser than the input pixels
    du = min(float(np.min(np.diff(u))), FWHM_TO_SIGMA / 4.0)
    ugrid = np.arange(0.0, u[-1] + 0.5 * du, du)
    kernel = gaussian_kernel(FWHM_TO_SIGMA / du)
    on_u = np.interp(ugrid, u, f)
    pad = kernel.size // 2
    conv = np.convolve(np.pad(on_u, pad, mode="edge"), kernel, mode="valid")
    return np.interp(u, ugrid, conv)


def rotation_kernel(vsini_kms: float, step_kms: float, limb_darkening: float) -> np.ndarray:
    """Rotational broadening profile (Gray, *The Observation and Analysis of Stellar
    Photospheres*, eq. 18.14) sampled every ``step_kms``, normalised to unit sum.

    G(v) ∝ 2(1 − ε)√(1 − x²) + (πε/2)(1 − x²), x = v / v sin i, with linear limb darkening ε.
    Each sample is the profile's mean over its bin (trapezoids on a 16× finer grid), so a v sin i
    of a few km/s on a 1 km/s grid keeps its width.
    """
    if vsini_kms <= 0:
        return np.ones(1)
    half = int(np.ceil(vsini_kms / step_kms))
    fine = np.linspace(-(half + 0.5) * step_kms, (half + 0.5) * step_kms, (2 * half + 1) * 16 + 1)
    x2 = np.clip(1.0 - (fine / vsini_kms) ** 2, 0.0, None)
    profile = 2.0 * (1.0 - limb_darkening) * np.sqrt(x2) + 0.5 * np.pi * limb_darkening * x2
    edges = np.arange(2 * half + 2) * 16
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (profile[1:] + profile[:-1]))])
    kernel = np.diff(cum[edges])
    return kernel / kernel.sum()


def macroturbulence_kernel(vmac_kms: float, step_kms: float) -> np.ndarray:
    """Isotropic Gaussian macroturbulence, exp(−(v/ζ)²), sampled every ``step_kms`` (unit sum)."""
    if vmac_kms <= 0:
        return np.ones(1)
    return gaussian_kernel(vmac_kms / np.sqrt(2.0) / step_kms)


def broaden_velocity(flux: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve a spectrum on a grid uniform in ln λ with a velocity kernel (edges padded with
    the end values, so the continuum stays level)."""
    if kernel.size == 1:
        return np.asarray(flux, dtype=np.float64)
    pad = kernel.size // 2
    return np.convolve(np.pad(flux, pad, mode="edge"), kernel[::-1], mode="valid")


# ------------------------------------------------------------------ continuum

def fit_continuum(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *,
                  order: int = 3, sigma_low: float = 2.0, sigma_high: float = 3.0,
                  iterations: int = 5, mask: np.ndarray | None = None) -> np.ndarray:
    """Iteratively sigma-clipped weighted Chebyshev fit of the continuum.

    Absorption lines sit below the continuum, so the lower clip is tighter than the upper one:
    each iteration rejects pixels more than ``sigma_low`` below or ``sigma_high`` above the fit
    (σ = robust scatter of the residuals) and refits. Returns the continuum on ``wavelength``;
    all-NaN if fewer than ``order + 2`` usable pixels remain.
    """
    w = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    use = np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    if mask is not None:
        use &= ~np.asarray(mask, dtype=bool)
    if use.sum() < order + 2:
        return np.full_like(w, np.nan)
    x = (w - w[0]) / (w[-1] - w[0]) * 2.0 - 1.0 if w[-1] > w[0] else np.zeros_like(w)
    weights = np.sqrt(np.where(use, iv, 0.0))
    cont = np.full_like(w, np.nan)
    base = use.copy()
    for _ in range(max(1, iterations)):
        coef = chebyshev.chebfit(x[use], f[use], order, w=weights[use])
        cont = chebyshev.chebval(x, coef)
        resid = f - cont
        r = resid[use]
        scale = 1.4826 * np.median(np.abs(r - np.median(r)))
        if not np.isfinite(scale) or scale <= 0:
            break
        # re-select from all usable pixels each time: the first fit is pulled down by the lines,
        # and continuum pixels clipped as "high" then must be able to come back, or the fit
        # settles ~1% low in line-rich segments
        new_use = base & (resid > -sigma_low * scale) & (resid < sigma_high * scale)
        if new_use.sum() < order + 2 or np.array_equal(new_use, use):
            break
        use = new_use
    return cont


# ------------------------------------------------------------------ one grid segment's continuum

def check_continuum_config(continuum: Mapping[str, Any]) -> None:
    """Refuse a continuum sub-config this module cannot honour (a config error, not bad data)."""
    if continuum["method"] != "chebyshev":
        raise ValueError(f"continuum.method {continuum['method']!r} is not supported "
                         f"(only 'chebyshev')")
    if int(continuum["order"]) < 0 or int(continuum["iterations"]) < 1:
        raise ValueError("continuum.order must be ≥ 0 and continuum.iterations ≥ 1")
    if not (continuum["sigma_low"] > 0 and continuum["sigma_high"] > 0):
        raise ValueError("continuum.sigma_low and continuum.sigma_high must be > 0")


@functools.lru_cache(maxsize=16)
def grid_segments(grid: WavelengthGrid) -> tuple[tuple[str, np.ndarray, slice], ...]:
    """(name, wavelength, columns) per grid segment, computed once per grid (grids are frozen)."""
    slices = grid.segment_slices
    out = []
    for segment in grid.segments:
        wavelength = segment.wavelength_air
        wavelength.setflags(write=False)    # shared by every call: nobody may edit it
        out.append((segment.name, wavelength, slices[segment.name]))
    return tuple(out)


def normalize_segment(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                      usable: np.ndarray, continuum: Mapping[str, Any],
                      segment_name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Divide one segment by its continuum; flux → flux / c, ivar → ivar · c².

    The continuum is the ivar-weighted, sigma-clipped Chebyshev fit over the ``usable`` pixels.
    Unusable pixels come back as the masked convention (flux 1.0, ivar 0). Raises
    :class:`RejectSpectrum` when the fit fails (too few pixels, or a continuum ≤ 0 where there
    is data, which would flip or blow up the normalised flux).
    """
    usable = np.asarray(usable, dtype=bool)
    cont = fit_continuum(wavelength, flux, ivar, order=int(continuum["order"]),
                         sigma_low=float(continuum["sigma_low"]),
                         sigma_high=float(continuum["sigma_high"]),
                         iterations=int(continuum["iterations"]), mask=~usable)
    where = f" in segment {segment_name}" if segment_name else ""
    good_cont = np.isfinite(cont) & (cont > 0)
    if not usable.any() or not good_cont[usable].all():
        raise RejectSpectrum(f"continuum fit failed{where}")
    safe = np.where(usable, cont, 1.0)
    flux_norm = np.where(usable, flux / safe, MASKED_FLUX)
    ivar_norm = np.where(usable, ivar * safe ** 2, 0.0)
    return flux_norm, ivar_norm

