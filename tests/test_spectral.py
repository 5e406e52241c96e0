"""Tests of the shared spectral numerics (starlabels.spectral)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from starlabels.grid import pixel_edges
from starlabels.spectral import (C_KMS, air_to_vacuum, convolve_resolution, doppler_shift,
                                 fit_continuum, resample_flux, vacuum_to_air)


def _exact_integral(edges_in: np.ndarray, flux_in: np.ndarray, lo: float, hi: float) -> float:
    """∫ flux dλ over [lo, hi] for piecewise-constant pixels, by explicit overlaps."""
    total = 0.0
    for a, b, f in zip(edges_in[:-1], edges_in[1:], flux_in):
        total += f * max(0.0, min(b, hi) - max(a, lo))
    return total


def gaussian_fwhm(wavelength: np.ndarray, depth_profile: np.ndarray, centre: float) -> float:
    """FWHM of a Gaussian fitted to an absorption depth profile (1 - flux)."""
    def model(w, a, mu, sigma):
        return a * np.exp(-0.5 * ((w - mu) / sigma) ** 2)
    p0 = (depth_profile.max(), centre, 0.1)
    (a, mu, sigma), _ = curve_fit(model, wavelength, depth_profile, p0=p0)
    return 2.0 * np.sqrt(2.0 * np.log(2.0)) * abs(sigma)


# ---------------------------------------------------------------- resampling

def test_resample_flux_conserves_the_flux_integral():
    rng = np.random.default_rng(3)
    # non-uniform input sampling, output grid coarser, not aligned, and fully inside the input
    wavelength_in = 5000.0 + np.cumsum(rng.uniform(0.02, 0.05, 600))
    flux_in = rng.uniform(0.2, 2.0, wavelength_in.size)
    wavelength_out = np.arange(wavelength_in[5], wavelength_in[-5], 0.0731)
    flux_out, ivar_out, coverage = resample_flux(wavelength_in, flux_in, wavelength_out)
    edges_out = pixel_edges(wavelength_out)
    assert np.all(coverage == pytest.approx(1.0, abs=1e-12))
    integral_out = np.sum(flux_out * np.diff(edges_out))
    integral_in = _exact_integral(pixel_edges(wavelength_in), flux_in, edges_out[0], edges_out[-1])
    assert integral_out == pytest.approx(integral_in, rel=1e-10)
    # each output pixel individually is the overlap-weighted mean of its input pixels
    for j in (0, 17, wavelength_out.size - 1):
        lo, hi = edges_out[j], edges_out[j + 1]
        expected = _exact_integral(pixel_edges(wavelength_in), flux_in, lo, hi) / (hi - lo)
        assert flux_out[j] == pytest.approx(expected, rel=1e-10)


def test_resample_ivar_is_k_over_sigma2_for_k_whole_pixels():
    # input pixels of 0.01 Å; output pixels of 0.03 Å aligned so each holds exactly 3 of them
    wavelength_in = 6000.0 + 0.01 * np.arange(300)
    sigma = np.linspace(0.5, 2.0, wavelength_in.size)
    flux_in = np.ones(wavelength_in.size)
    wavelength_out = wavelength_in[1:-1:3]
    flux_out, ivar_out, coverage = resample_flux(wavelength_in, flux_in, wavelength_out,
                                                 ivar_in=1.0 / sigma ** 2)
    groups = sigma[: 3 * wavelength_out.size].reshape(-1, 3)
    expected_var = np.sum(groups ** 2, axis=1) / 9.0      # Var of the mean of 3 pixels
    np.testing.assert_allclose(1.0 / ivar_out, expected_var, rtol=1e-6)
    # equal σ: exactly σ²/k
    _, ivar_equal, _ = resample_flux(wavelength_in, flux_in, wavelength_out,
                                     ivar_in=np.full(wavelength_in.size, 4.0))
    np.testing.assert_allclose(ivar_equal, 3 * 4.0, rtol=1e-6)
    np.testing.assert_allclose(coverage, 1.0)


def test_resample_masked_input_pixel_reduces_coverage_not_flux():
    wavelength_in = 6000.0 + 0.01 * np.arange(30)
    flux_in = np.full(wavelength_in.size, 2.0)
    ivar_in = np.ones(wavelength_in.size)
    flux_in[4], ivar_in[4] = 1e6, 0.0           # a bad pixel: no weight whatever its value
    wavelength_out = wavelength_in[1:-1:3]
    flux_out, ivar_out, coverage = resample_flux(wavelength_in, flux_in, wavelength_out,
                                                 ivar_in=ivar_in)
    assert coverage[1] == pytest.approx(2.0 / 3.0)
    assert flux_out[1] == pytest.approx(2.0)
    assert ivar_out[1] == pytest.approx(2.0)
    assert np.all(coverage[[0, 2, 3]] == pytest.approx(1.0))


def test_resample_outside_input_is_nan_with_zero_coverage():
    wavelength_in = 6000.0 + 0.01 * np.arange(100)
    flux_out, ivar_out, coverage = resample_flux(wavelength_in, np.ones(100),
                                                 np.array([5990.0, 6000.5, 6010.0]))
    assert np.isnan(flux_out[0]) and np.isnan(flux_out[2])
    assert coverage[0] == 0 and coverage[2] == 0 and ivar_out[0] == 0
    assert flux_out[1] == pytest.approx(1.0)


# ---------------------------------------------------------------- air / vacuum, Doppler

def test_air_vacuum_round_trip_below_1e6_angstrom():
    wavelength = np.linspace(3000.0, 11000.0, 20001)
    assert np.max(np.abs(air_to_vacuum(vacuum_to_air(wavelength)) - wavelength)) < 1e-6
    assert np.max(np.abs(vacuum_to_air(air_to_vacuum(wavelength)) - wavelength)) < 1e-6


def test_air_vacuum_known_values():
    shift = 5500.0 - vacuum_to_air(5500.0)
    assert 1.4 < shift < 1.6
    assert 1.4 < air_to_vacuum(5500.0) - 5500.0 < 1.6
    # Hα: 6564.614 Å in vacuum, 6562.801 Å in air (NIST)
    assert vacuum_to_air(6564.614) == pytest.approx(6562.801, abs=0.005)
    # the shift grows towards the blue (n - 1 increases with 1/λ)
    assert 4000.0 - vacuum_to_air(4000.0) < 1.2 < 8500.0 - vacuum_to_air(8500.0) < 2.5


def test_doppler_shift_direction_and_size():
    assert doppler_shift(5000.0, 30.0) == pytest.approx(5000.0 * (1 + 30.0 / C_KMS), rel=1e-8)
    assert doppler_shift(doppler_shift(5000.0, 50.0), -50.0) == pytest.approx(5000.0, abs=1e-9)


# ---------------------------------------------------------------- line-spread function

@pytest.mark.parametrize("resolution", [11_000.0, 20_000.0])
def test_convolve_resolution_gives_fwhm_lambda_over_r_for_a_delta_line(resolution):
    centre = 5500.0
    wavelength = np.arange(5490.0, 5510.0, 0.002)
    flux = np.ones(wavelength.size)
    flux[np.argmin(np.abs(wavelength - centre))] = 0.0     # one-pixel (delta-like) line
    smoothed = convolve_resolution(wavelength, flux, resolution)
    fwhm = gaussian_fwhm(wavelength, 1.0 - smoothed, centre)
    # a 0.002 Å pixel adds < 0.1 % in quadrature
    assert fwhm == pytest.approx(centre / resolution, rel=0.02)
    # the line's equivalent width is conserved by the normalised kernel
    ew = np.sum(1.0 - smoothed) * 0.002
    assert ew == pytest.approx(0.002, rel=0.02)


def test_convolve_resolution_removes_the_input_resolution_in_quadrature():
    centre, resolution_in, resolution = 5500.0, 60_000.0, 15_000.0
    wavelength = np.arange(5490.0, 5510.0, 0.005)
    sigma_in = centre / resolution_in / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    flux = 1.0 - 0.3 * np.exp(-0.5 * ((wavelength - centre) / sigma_in) ** 2)
    smoothed = convolve_resolution(wavelength, flux, resolution, resolution_in=resolution_in)
    assert gaussian_fwhm(wavelength, 1.0 - smoothed, centre) == pytest.approx(
        centre / resolution, rel=0.02)
    # without resolution_in the widths add: FWHM² = (λ/R)² + (λ/R_in)²
    broader = convolve_resolution(wavelength, flux, resolution)
    expected = centre * np.hypot(1 / resolution, 1 / resolution_in)
    assert gaussian_fwhm(wavelength, 1.0 - broader, centre) == pytest.approx(expected, rel=0.02)


# ---------------------------------------------------------------- continuum

def _lined_continuum(seed: int = 11, n_lines: int = 14):
    """A cubic continuum under ``n_lines`` absorption lines (14: ~10 % of pixels), S/N 150."""
    rng = np.random.default_rng(seed)
    wavelength = np.arange(8480.0, 8560.0, 0.05)
    x = (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0]) * 2 - 1
    continuum = 800.0 * (1.0 + 0.25 * x - 0.15 * x ** 2 + 0.08 * x ** 3)
    lines = np.ones(wavelength.size)
    for centre in np.linspace(8485.0, 8555.0, n_lines):
        lines -= 0.6 * np.exp(-0.5 * ((wavelength - centre) / 0.2) ** 2)
    sigma = continuum / 150.0
    flux = continuum * lines + sigma * rng.standard_normal(wavelength.size)
    return wavelength, flux, 1.0 / sigma ** 2, continuum


def test_fit_continuum_recovers_a_polynomial_under_absorption_lines():
    wavelength, flux, ivar, continuum = _lined_continuum()
    fitted = fit_continuum(wavelength, flux, ivar, order=3)
    assert np.max(np.abs(fitted / continuum - 1.0)) < 0.004
    # the un-clipped fit is pulled down by the lines: the clipping is what recovers the truth
    plain = fit_continuum(wavelength, flux, ivar, order=3, iterations=1)
    assert np.median(plain / continuum) < 0.97
    # a single line: nearly unbiased
    wavelength, flux, ivar, continuum = _lined_continuum(n_lines=1)
    fitted = fit_continuum(wavelength, flux, ivar, order=3)
    assert np.max(np.abs(fitted / continuum - 1.0)) < 0.003


@pytest.mark.parametrize("seed", [1, 11])
def test_fit_continuum_is_unbiased_to_a_fraction_of_the_noise_under_many_lines(seed):
    wavelength, flux, ivar, continuum = _lined_continuum(seed)
    fitted = fit_continuum(wavelength, flux, ivar, order=3)
    # noise per pixel is 0.67 %; a 4-parameter fit over 1600 pixels is good to ~0.1 %
    assert np.max(np.abs(fitted / continuum - 1.0)) < 0.004


def test_fit_continuum_honours_mask_and_reports_too_few_pixels():
    wavelength = np.linspace(5000.0, 5100.0, 500)
    flux = np.full(500, 10.0)
    flux[:100] = 1e4                                   # garbage, but masked
    mask = np.zeros(500, bool)
    mask[:100] = True
    fitted = fit_continuum(wavelength, flux, np.ones(500), order=2, mask=mask)
    np.testing.assert_allclose(fitted, 10.0, rtol=1e-6)
    assert np.all(np.isnan(fit_continuum(wavelength, flux, np.zeros(500), order=3)))
