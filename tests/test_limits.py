"""The CRLB machinery against answers known in closed form, and the simulator's step regime."""
import numpy as np
import pytest

from starlabels.limits import (crlb_from_jacobian, fisher_matrix, photon_sigma, star_crlb,
                               step_study)
from starlabels.simulate.physics import ForwardModel, Instrument, load_linelist


def test_single_gaussian_line_depth_bound_is_analytic():
    # flux = 1 − d·g(x): ∂flux/∂d = −g, so the bound is σ / sqrt(Σ g²)
    x = np.linspace(-10, 10, 2001)
    g = np.exp(-0.5 * (x / 0.7) ** 2)
    sigma = np.full(x.size, 0.01)
    bound = crlb_from_jacobian(-g[:, None], sigma)
    assert bound[0] == pytest.approx(0.01 / np.sqrt(np.sum(g ** 2)), rel=1e-12)
    # masking half the line removes half the information
    half = crlb_from_jacobian(-g[:, None], sigma, mask=x < 0)
    assert half[0] == pytest.approx(0.01 / np.sqrt(np.sum(g[x >= 0] ** 2)), rel=1e-12)


def test_degenerate_labels_inflate_the_bound():
    # two labels with identical derivatives cannot be separated: the joint bound is infinite
    # (or enormous), while either alone is finite
    g = np.exp(-0.5 * np.linspace(-5, 5, 501) ** 2)
    jac = np.stack([g, g + 1e-9 * np.arange(501)], axis=1)
    joint = crlb_from_jacobian(jac, np.full(501, 0.01))
    alone = crlb_from_jacobian(jac[:, :1], np.full(501, 0.01))
    assert joint[0] > 1000 * alone[0]
    f = fisher_matrix(jac, np.full(501, 0.01))
    assert np.allclose(f, f.T)


def test_photon_sigma():
    np.testing.assert_allclose(photon_sigma(np.array([1.0, 0.25]), 100.0), [0.01, 0.005])


@pytest.fixture(scope="module")
def hr21_model():
    return ForwardModel([Instrument("HR21", 16200, np.arange(8700.0, 8820.0, 0.1))],
                        load_linelist())


def test_bound_scales_inversely_with_snr(hr21_model):
    star = dict(teff=5500.0, logg=4.4, fe_h=0.0, mg_fe=0.1, al_fe=0.1)
    b50 = star_crlb(hr21_model, star, 50.0)
    b100 = star_crlb(hr21_model, star, 100.0)
    for label in b50:
        assert b50[label] == pytest.approx(2.0 * b100[label], rel=1e-9)
    # the Mg/Al lines in this window constrain [Mg/Fe] and [Al/Fe] to a few hundredths of a dex
    assert 0 < b100["mg_fe"] < 0.05 and 0 < b100["al_fe"] < 0.1


@pytest.mark.parametrize("label", ["teff", "logg", "fe_h", "mg_fe", "al_fe"])
def test_default_difference_steps_are_in_the_flat_regime(hr21_model, label):
    star = dict(teff=5500.0, logg=4.4, fe_h=0.0, mg_fe=0.1, al_fe=0.1)
    study = step_study(hr21_model, star, label)
    norms = study["norm"].to_numpy()
    default = norms[2]
    # half and double the default step change the derivative by less than 2 %
    assert abs(norms[1] / default - 1) < 0.02 and abs(norms[3] / default - 1) < 0.02


# ---------------------------------------------------------------- marginalised bound

def _gaussian_line(depth=0.4, width=0.7, step=0.01):
    x = np.arange(-12.0, 12.0, step)
    g = np.exp(-0.5 * (x / width) ** 2)
    # f = 1 − d g(x; w): ∂f/∂d = −g, ∂f/∂w = −d g x²/w³
    return x, np.stack([-g, -depth * g * x ** 2 / width ** 3], axis=1)


def test_unknown_line_width_inflates_the_depth_bound_by_the_closed_form_factor():
    # In the continuum limit with pixel step Δ and noise σ: F = (1/σ²Δ) [[√π w, d√π/2],
    # [d√π/2, 3√π d²/(4w)]], so Var(d) = 3σ²Δ/(2√π w) with w free against σ²Δ/(√π w) with w
    # known (a factor sqrt(3/2) in the bound), and Var(w) = 2wσ²Δ/(√π d²).
    depth, width, step, noise = 0.4, 0.7, 0.01, 0.02
    x, jac = _gaussian_line(depth, width, step)
    sigma = np.full(x.size, noise)
    known = crlb_from_jacobian(jac[:, :1], sigma)[0]
    both = crlb_from_jacobian(jac, sigma)
    assert known == pytest.approx(np.sqrt(noise ** 2 * step / (np.sqrt(np.pi) * width)), rel=1e-6)
    assert both[0] == pytest.approx(np.sqrt(1.5 * noise ** 2 * step / (np.sqrt(np.pi) * width)),
                                    rel=1e-6)
    assert both[1] == pytest.approx(np.sqrt(2 * width * noise ** 2 * step
                                            / (np.sqrt(np.pi) * depth ** 2)), rel=1e-6)
    assert both[0] / known == pytest.approx(np.sqrt(1.5), rel=1e-6)


def test_a_prior_on_the_width_interpolates_between_known_and_free():
    depth, width, step, noise = 0.4, 0.7, 0.01, 0.02
    x, jac = _gaussian_line(depth, width, step)
    sigma = np.full(x.size, noise)
    f = fisher_matrix(jac, sigma)
    prior_w = 0.01
    expected = np.sqrt((f[1, 1] + prior_w ** -2) / (f[0, 0] * (f[1, 1] + prior_w ** -2)
                                                    - f[0, 1] ** 2))
    bound = crlb_from_jacobian(jac, sigma, prior_sigma=np.array([np.inf, prior_w]))
    assert bound[0] == pytest.approx(expected, rel=1e-10)
    known = crlb_from_jacobian(jac[:, :1], sigma)[0]
    free = crlb_from_jacobian(jac, sigma)[0]
    assert known < bound[0] < free
    # a tight prior is as good as knowing the width; an infinite one as leaving it free
    assert crlb_from_jacobian(jac, sigma, prior_sigma=np.array([np.inf, 1e-9]))[0] == \
        pytest.approx(known, rel=1e-6)


def test_correlated_noise_shrinks_the_information_of_a_smooth_signal():
    from starlabels.simulate.instrument import noise_autocorrelation

    n, noise = 4000, 0.01
    jac = np.ones((n, 1))                      # a continuum level: smooth on every scale
    rho = noise_autocorrelation(1.5)
    white = fisher_matrix(jac, np.full(n, noise))[0, 0]
    corr = fisher_matrix(jac, np.full(n, noise), correlation=rho)[0, 0]
    assert white == pytest.approx(n / noise ** 2)
    # for a signal smooth over the correlation length, F = N / (σ² Σ_lags ρ)
    assert corr == pytest.approx(n / (noise ** 2 * (1 + 2 * rho[1:].sum())), rel=0.01)
    # masking leaves masked pixels out of the covariance too
    mask = np.zeros(n, dtype=bool)
    mask[: n // 2] = True
    half = fisher_matrix(jac, np.full(n, noise), mask=mask, correlation=rho)[0, 0]
    assert half == pytest.approx(corr / 2, rel=0.01)


def test_binned_correlation_of_independent_and_correlated_raw_pixels():
    from starlabels.limits import binned_correlation
    from starlabels.simulate.instrument import noise_autocorrelation

    np.testing.assert_array_equal(binned_correlation(0.0, 0.05, 0.1), [1.0])
    np.testing.assert_allclose(binned_correlation(0.8, 0.1, 0.1), noise_autocorrelation(0.8)[
        : binned_correlation(0.8, 0.1, 0.1).size])
    rho = noise_autocorrelation(0.8)
    two = binned_correlation(0.8, 0.05, 0.1)
    # averaging two raw pixels: variance (1 + ρ₁)/2 against the 1/2 normalize reports
    assert two[0] == pytest.approx(1 + rho[1])


def test_marginalised_bound_is_never_smaller_and_each_nuisance_costs(hr21_model):
    from starlabels.limits import Nuisances, star_bounds
    from starlabels.simulate.physics import Broadening

    star = dict(teff=5500.0, logg=4.4, fe_h=0.0, mg_fe=0.1, al_fe=0.1)
    broad = Broadening(vmic_kms=1.0, vsini_kms=4.0, vmac_kms=3.0)
    none = star_bounds(hr21_model, star, 80.0, Nuisances(), star=broad)
    assert none["marginalised"] == pytest.approx(none["ideal"], rel=1e-6)
    everything = Nuisances(continuum_order=3, rv_sigma_kms=np.inf, vmic_sigma_kms=np.inf,
                           broadening=True, resolution_sigma=np.inf)
    full = star_bounds(hr21_model, star, 80.0, everything, star=broad)
    for label in star:
        assert full["marginalised"][label] >= full["ideal"][label] * (1 - 1e-9)
    # a free microturbulence costs the abundances most (ξ and abundance both set line strength)
    vmic = star_bounds(hr21_model, star, 80.0, Nuisances(vmic_sigma_kms=np.inf), star=broad)
    assert vmic["marginalised"]["mg_fe"] > 1.05 * vmic["ideal"]["mg_fe"]
    # read noise and correlated pixels only ever cost information
    noisy = star_bounds(hr21_model, star, 30.0, Nuisances(
        read_noise_electrons=10.0, noise_correlation={"HR21": np.array([1.3, 0.6, 0.1])}),
        star=broad)
    assert all(noisy["marginalised"][k] > noisy["ideal"][k] for k in star)
