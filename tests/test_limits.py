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
