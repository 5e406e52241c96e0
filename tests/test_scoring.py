"""The scores validate reports: intervals that bracket the truth, coverage that reads nominal for
honest errors, regression toward the mean found where it is, the α-rich share counted."""
from __future__ import annotations

import numpy as np
import pytest

from starlabels import scoring
from starlabels.validate import target_report


def test_sigma_interval_brackets_the_true_sigma():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(40):
        block = scoring.sigma_ci(rng.normal(0, 2.0, 300))
        lo, hi = block["sigma_ci95"]
        hits += lo <= 2.0 <= hi
        assert lo < block["sigma"] < hi
    assert hits >= 34                     # ~95 % of 40, with room for chance


def test_honest_errors_cover_at_the_nominal_rates_and_understated_ones_do_not():
    rng = np.random.default_rng(1)
    n = 6000
    true = rng.normal(size=n)
    err = rng.uniform(0.5, 2.0, n)
    pred = true + err * rng.normal(size=n)
    snr = rng.uniform(10, 200, n)
    report = scoring.uncertainty_report(pred, err, true, snr, raw=err / 3, members=err / 10)
    for level in (50, 68, 90, 95):
        assert report[f"coverage{level}"] == pytest.approx(level / 100, abs=0.02)
        lo, hi = report[f"coverage{level}_ci95"]
        assert lo <= level / 100 <= hi
    assert report["z_robust_spread"] == pytest.approx(1.0, abs=0.05)
    assert report["raw"]["coverage68"] < 0.35 and report["members"]["coverage68"] < 0.1
    assert len(report["snr_terciles"]) == 3
    assert all(t["coverage68"] == pytest.approx(0.68, abs=0.05) for t in report["snr_terciles"])
    assert sum(t["n"] for t in report["snr_terciles"]) == n


def test_sigma_falls_with_snr_is_seen_in_the_terciles():
    rng = np.random.default_rng(2)
    n = 3000
    snr = rng.uniform(10, 300, n)
    err = 10.0 / snr
    true = np.zeros(n)
    pred = err * rng.normal(size=n)
    report = scoring.uncertainty_report(pred, err, true, snr)
    assert report["sigma_high_over_low_snr"] < 0.3


def test_regression_toward_the_mean_shows_in_the_bias_bins():
    rng = np.random.default_rng(3)
    true = rng.normal(0, 1, 4000)
    shrunk = 0.7 * true + rng.normal(0, 0.1, true.size)
    bins = scoring.bias_by_label(shrunk, true, n_bins=8)
    assert len(bins) == 8 and sum(b["n"] for b in bins) == true.size
    assert bins[0]["bias"] > 0.3 and bins[-1]["bias"] < -0.3
    assert abs(bins[3]["bias"]) < 0.15


def test_alpha_sequence_counts_true_and_catalogue_shares():
    fe_true = np.array([-0.4, -0.3, -0.35, -0.25, 0.1, -0.45])
    mg_true = np.array([0.3, 0.1, 0.25, 0.05, 0.3, 0.28])
    fe_pred = np.array([-0.4, -0.3, -0.35, -0.1, 0.1, -0.45])     # one star leaves the window
    mg_pred = np.array([0.15, 0.1, 0.25, 0.3, 0.3, 0.1])           # two α-rich stars lost
    seq = scoring.abundance_sequence(fe_true, mg_true, fe_pred, mg_pred, (-0.5, -0.2), 0.2)
    assert seq["true"] == pytest.approx(3 / 5)
    assert seq["catalogue"] == pytest.approx(1 / 4)
    assert seq["true_stars_predicted"] == pytest.approx(2 / 5)
    assert seq["catalogue_minus_true_points"] == pytest.approx(100 * (1 / 4 - 3 / 5))


def test_target_report_reads_bounds_and_ranges():
    result = {"truth": True,
              "precision": {"vs_true": {"teff": {"sigma": 28.0}, "logg": {"sigma": 0.09}}},
              "uncertainty": {"teff": {"coverage68": 0.70, "coverage95": 0.99,
                                       "sigma_high_over_low_snr": 0.6,
                                       "snr_terciles": [{"coverage68": 0.6, "coverage95": 0.95}]}},
              "alpha_sequence": {"mg_fe": {"catalogue_minus_true_points": -6.0}}}
    targets = {"sigma_vs_true": {"teff": 30.0, "logg": 0.08}, "err_coverage68": [0.63, 0.73],
               "err_coverage95": None, "snr_sigma_ratio": {"teff": 0.7},
               "alpha_sequence_points": 5.0}
    report = target_report(result, ["teff", "logg"], targets)
    assert report["sigma_vs_true.teff"]["met"] and not report["sigma_vs_true.logg"]["met"]
    assert report["err_coverage68.teff"]["met"]
    assert not report["err_coverage68.teff.snr_tercile_1"]["met"]
    assert "err_coverage95.teff" not in report             # no target given
    assert report["snr_sigma_ratio.teff"]["met"]
    assert not report["alpha_sequence_points.mg_fe"]["met"]
    assert report["alpha_sequence_points.mg_fe"]["measured"] == 6.0
