"""What the atmosphere, the spectrograph and the reduction do to a simulated exposure.

Per exposure (:func:`draw_conditions`): the RV error left after the archive's correction, the
fibre's resolving power, the airmass and water vapour (telluric strength), the sky-subtraction
errors. Per exposure and setup (:func:`detector_effects`): a flat-field ripple and blaze shapes the
continuum polynomial cannot follow, sky emission through the LSF (its photons and the subtraction
residual), read noise and pixel-correlated noise. Per MARVELS plate
(:func:`wavelength_distortion`): a smooth error of the wavelength solution.

The pieces that change the stellar spectrum itself (LSF, tellurics) go through the forward model's
:class:`~starlabels.simulate.physics.Exposure`; the rest act on the detector counts in
:func:`starlabels.simulate.survey.raw_counts`. ``cfg`` is the experiment's ``simulate`` section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from numpy.polynomial import chebyshev

from ..spectral import C_KMS, FWHM_TO_SIGMA, gaussian_kernel
from .. import data
from .physics import Exposure

DEFAULT_SKY_LINES = data.path("sky_lines.csv")


@dataclass(frozen=True)
class Conditions:
    """One exposure's draws (see module docstring)."""
    residual_rv_kms: float = 0.0
    exposure: Exposure = field(default_factory=Exposure)
    sky_scale_error: float = 0.0
    sky_shift_pixels: float = 0.0


@dataclass
class DetectorEffects:
    """What :func:`~starlabels.simulate.survey.raw_counts` adds to the photon-noise model of one
    spectrum; None / 0 = absent. Electrons are per pixel."""
    throughput: np.ndarray | None = None
    sky_electrons: np.ndarray | None = None
    sky_residual_electrons: np.ndarray | None = None
    read_noise_electrons: float = 0.0
    correlation_pixels: float = 0.0

    @property
    def extra_variance(self) -> np.ndarray | float:
        """Variance (electrons²) beyond the star's own photons."""
        sky = 0.0 if self.sky_electrons is None else self.sky_electrons
        return self.read_noise_electrons ** 2 + sky


def load_sky_lines(path: str | Path | None = None) -> pd.DataFrame:
    return data.read_line_table(Path(path) if path else DEFAULT_SKY_LINES,
                                {"wavelength_air", "relative_intensity"}, "sky line")


def draw_conditions(rng: np.random.Generator, cfg: Mapping[str, Any]) -> Conditions:
    """One exposure's residual RV, fibre resolution, telluric strength and sky-subtraction errors
    (a fixed number of draws, whatever the knobs)."""
    observing, instrument = cfg["observing"], cfg["instrument"]
    z = rng.normal(size=5)
    u = rng.random()
    tel, sky = observing["telluric"], observing["sky"]
    lo, hi = tel["airmass"]
    strength = tel["strength"] * (lo + (hi - lo) * u) * np.exp(tel["water_vapour_log_sigma"] * z[2])
    exposure = Exposure(resolution_scale=1.0 + instrument["resolution_fibre_sigma"] * z[1],
                        resolution_taper=float(instrument["resolution_taper"]),
                        telluric_strength=float(strength))
    return Conditions(residual_rv_kms=float(observing["residual_rv_kms"] * z[0]), exposure=exposure,
                      sky_scale_error=float(sky["subtraction_residual"] * z[3]),
                      sky_shift_pixels=float(sky["subtraction_shift_pixels"] * z[4]))


def shape_with_rms(x: np.ndarray, degrees: range, rms: float, rng: np.random.Generator
                   ) -> np.ndarray:
    """A random Chebyshev series in ``degrees`` scaled to RMS ``rms`` over ``x``."""
    coef = np.zeros(max(degrees) + 1)
    coef[list(degrees)] = rng.normal(size=len(degrees))
    shape = chebyshev.chebval(x, coef)
    norm = np.sqrt(np.mean(shape ** 2))
    return shape * (rms / norm) if norm > 0 else shape


def sky_spectrum(wavelength: np.ndarray, resolution: float | np.ndarray, sky_lines: pd.DataFrame,
                 peak_electrons: float) -> np.ndarray:
    """Sky emission (electrons per pixel) on ``wavelength``: each line a Gaussian of the local
    LSF width, its peak ``peak_electrons`` × its relative intensity."""
    wavelength = np.asarray(wavelength, dtype=np.float64)
    out = np.zeros_like(wavelength)
    centres = sky_lines["wavelength_air"].to_numpy()
    intensities = sky_lines["relative_intensity"].to_numpy()
    inside = (centres >= wavelength[0]) & (centres <= wavelength[-1])
    if not inside.any():
        return out
    r = np.broadcast_to(np.asarray(resolution, dtype=np.float64), wavelength.shape)
    sigmas = centres[inside] / np.interp(centres[inside], wavelength, r) * FWHM_TO_SIGMA
    for w0, intensity, sigma in zip(centres[inside], intensities[inside], sigmas):
        lo, hi = np.searchsorted(wavelength, [w0 - 6 * sigma, w0 + 6 * sigma])
        out[lo:hi] += peak_electrons * intensity * np.exp(-0.5 * ((wavelength[lo:hi] - w0)
                                                                  / sigma) ** 2)
    return out


def detector_effects(wavelength: np.ndarray, resolution: float | np.ndarray,
                     conditions: Conditions, cfg: Mapping[str, Any], rng: np.random.Generator,
                     sky_lines: pd.DataFrame) -> DetectorEffects:
    """The exposure's detector-level effects on one setup's pixels (``resolution``: R there)."""
    instrument, sky = cfg["instrument"], cfg["observing"]["sky"]
    x = np.linspace(-1.0, 1.0, wavelength.size)
    ripple_cfg, high = instrument["flat_ripple"], instrument["continuum_high_order"]
    u = rng.random(3)
    throughput = None
    if ripple_cfg["amplitude"] > 0:
        lo, hi = ripple_cfg["period_angstrom"]
        period = lo + (hi - lo) * u[0]
        throughput = 1.0 + ripple_cfg["amplitude"] * u[1] * np.sin(
            2.0 * np.pi * wavelength / period + 2.0 * np.pi * u[2])
    if high["amplitude"] > 0:
        degrees = range(int(high["lowest_degree"]), int(high["max_degree"]) + 1)
        shape = 1.0 + shape_with_rms(x, degrees, high["amplitude"], rng)
        throughput = shape if throughput is None else throughput * shape
    effects = DetectorEffects(throughput=throughput,
                              read_noise_electrons=float(instrument["read_noise_electrons"]),
                              correlation_pixels=float(instrument["noise_correlation_pixels"]))
    if sky["peak_electrons"] > 0:
        emission = sky_spectrum(wavelength, resolution, sky_lines, sky["peak_electrons"])
        if emission.any():
            effects.sky_electrons = emission
            # what subtraction leaves: a scale error and a slight wavelength mismatch (the line's
            # derivative), the P-Cygni-like residuals of real sky-subtracted spectra
            effects.sky_residual_electrons = (conditions.sky_scale_error * emission
                                              + conditions.sky_shift_pixels
                                              * np.gradient(emission))
    return effects


def correlate_noise(white: np.ndarray, sigma_pixels: float, rng: np.random.Generator
                    ) -> np.ndarray:
    """Unit-variance noise with neighbouring pixels correlated by a Gaussian kernel of σ
    ``sigma_pixels`` (normalised so Σk² = 1: each pixel keeps variance 1). The ends are padded
    with fresh draws so the first and last pixels are correlated like the rest."""
    kernel = gaussian_kernel(sigma_pixels)
    kernel = kernel / np.sqrt(np.sum(kernel ** 2))
    pad = kernel.size // 2
    padded = np.concatenate([rng.normal(size=pad), white, rng.normal(size=pad)])
    return np.convolve(padded, kernel, mode="valid")


def noise_autocorrelation(sigma_pixels: float) -> np.ndarray:
    """Correlation of pixel noise at lags 0, 1, … (what :func:`correlate_noise` produces)."""
    if sigma_pixels <= 0:
        return np.ones(1)
    kernel = gaussian_kernel(sigma_pixels)
    kernel = kernel / np.sqrt(np.sum(kernel ** 2))
    full = np.correlate(kernel, kernel, mode="full")
    return full[kernel.size - 1:]


def wavelength_distortion(wavelength: np.ndarray, cfg: Mapping[str, Any],
                          rng: np.random.Generator) -> np.ndarray:
    """The wavelengths a plate's imperfect solution assigns to pixels whose true wavelengths are
    ``wavelength``: λ (1 + δv(x)/c), δv a Chebyshev series of the configured degree scaled to
    the configured RMS (km/s) over the detector."""
    distortion = cfg["instrument"]["plate_wavelength_distortion"]
    x = np.linspace(-1.0, 1.0, wavelength.size)
    dv = shape_with_rms(x, range(0, int(distortion["degree"]) + 1), distortion["amplitude_kms"],
                        rng)
    if distortion["amplitude_kms"] <= 0:
        return wavelength
    return wavelength * (1.0 + dv / C_KMS)
