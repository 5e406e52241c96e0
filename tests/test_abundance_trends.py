"""Abundance ratios no reference star anchors, put onto the dwarfs' scale by requiring that giants
and dwarfs share one [X/Fe] at fixed [Fe/H] (starlabels.abundance_trends)."""
import numpy as np
import pandas as pd

from starlabels import config
from starlabels.abundance_trends import fit_abundance_trends
from starlabels.reference_scale import apply_reference_scale, fit_reference_scale

LABELS = ["teff", "logg", "fe_h", "mg_fe", "al_fe"]
PIVOT = {"teff": 5772.0, "logg": 4.438}


def _field(n=6000, seed=5, logg_slope=0.02, teff_slope=0.0, rich_fraction=0.02):
    """A field of dwarfs and giants with a thin and a thick disc (the thick share rising towards
    low [Fe/H], independent of the class), whose predicted [Mg/Fe] drifts by ``logg_slope`` per
    dex below the Sun's log g and ``teff_slope`` per 1000 K hotter; a ``rich_fraction`` of
    metal-poor giants with [Mg/Fe] 0.25 dex lower (a population of their own)."""
    rng = np.random.default_rng(seed)
    giant = rng.random(n) < 0.4
    teff = np.where(giant, rng.uniform(4200, 5200, n), rng.uniform(4800, 6600, n))
    logg = np.where(giant, rng.uniform(1.5, 3.2, n), rng.uniform(4.0, 4.6, n))
    fe_h = rng.normal(-0.15, 0.3, n)
    thick = rng.random(n) < np.clip(0.15 - 0.5 * fe_h, 0.02, 0.8)
    true = np.where(thick, 0.28 - 0.1 * np.clip(fe_h + 0.5, 0, None), 0.05 - 0.05 * fe_h)
    true = true + rng.normal(0, 0.03, n)
    rich = giant & (fe_h < -0.3) & (rng.random(n) < rich_fraction / 0.2)
    true = np.where(rich, true - 0.25, true)
    drift = logg_slope * (PIVOT["logg"] - logg) + teff_slope * (teff - PIVOT["teff"]) / 1000
    pred = pd.DataFrame({"star_id": [f"s{k}" for k in range(n)],
                         "split": np.where(rng.random(n) < 0.5, "train", "test"),
                         "teff": teff, "logg": logg, "fe_h": fe_h,
                         "mg_fe": true + drift + rng.normal(0, 0.02, n), "al_fe": true})
    return pred, true, giant, rich


def _cfg(**kw):
    return config.section("reference_scale", {"enabled": True,
                                              "abundance_trends": kw})["abundance_trends"]


def _corrected(pred, fits):
    record = {"terms": ["teff", "logg"], "pivot": PIVOT, "labels": fits}
    return apply_reference_scale({k: pred[k].to_numpy() for k in LABELS}, record)


def test_a_drift_with_gravity_and_temperature_is_recovered_and_removed():
    pred, true, giant, rich = _field(logg_slope=0.02, teff_slope=-0.01)
    fits = fit_abundance_trends(pred, LABELS, _cfg(), ["teff", "logg"], PIVOT,
                                log=lambda s: None)
    mg = fits["mg_fe"]
    assert mg["applied"] and mg["coefficients"][0] == 0.0
    # design columns [1, (teff − 5772)/1000, logg − 4.438]: the drift is −0.01, −0.02
    c, e = np.array(mg["coefficients"][1:]), np.sqrt(np.diag(mg["covariance"]))[1:]
    assert np.all(np.abs(c - [-0.01, -0.02]) < 4 * e), (c, e)
    assert np.all(e < 0.01)
    out = _corrected(pred, fits)
    resid = out["mg_fe"] - true
    keep = ~rich
    before = pred["mg_fe"].to_numpy() - true
    # giants sat 0.03–0.06 dex high; after, no difference between the classes
    assert np.median(before[giant & keep]) - np.median(before[~giant & keep]) > 0.03
    assert abs(np.median(resid[giant & keep]) - np.median(resid[~giant & keep])) < 0.006
    # the metal-poor, Mg-poor giants are clipped, not fitted: they keep their own [Mg/Fe]
    assert np.median(out["mg_fe"][rich]) < np.median(out["mg_fe"][giant & ~rich
                                                                  & (pred["fe_h"] < -0.3)]) - 0.15
    assert np.all(out["mg_fe_err_scale"] > 0) and np.all(out["mg_fe_raw"] == pred["mg_fe"])


def test_no_drift_gives_coefficients_consistent_with_zero():
    pred, true, giant, rich = _field(logg_slope=0.0, rich_fraction=0.0, seed=11)
    fits = fit_abundance_trends(pred, LABELS, _cfg(labels=["mg_fe"]), ["teff", "logg"], PIVOT,
                                log=lambda s: None)
    c = np.array(fits["mg_fe"]["coefficients"][1:])
    e = np.sqrt(np.diag(fits["mg_fe"]["covariance"]))[1:]
    assert np.all(np.abs(c) < 4 * e), (c, e)
    assert "al_fe" not in fits


def test_trained_spectra_do_not_enter_the_fit():
    pred, *_ = _field(logg_slope=0.0, rich_fraction=0.0, seed=2)
    shifted = pred.copy()
    train = shifted["split"] == "train"
    shifted.loc[train, "mg_fe"] += 0.5 * (PIVOT["logg"] - shifted.loc[train, "logg"])
    a = fit_abundance_trends(pred, LABELS, _cfg(), ["teff", "logg"], PIVOT, log=lambda s: None)
    b = fit_abundance_trends(shifted, LABELS, _cfg(), ["teff", "logg"], PIVOT,
                             log=lambda s: None)
    assert a["mg_fe"]["coefficients"] == b["mg_fe"]["coefficients"]


def test_too_few_spectra_or_no_fe_h_leave_the_label_as_it_is_with_the_reason():
    pred, *_ = _field(n=120)
    fits = fit_abundance_trends(pred, LABELS, _cfg(min_spectra=500), ["teff", "logg"], PIVOT,
                                log=lambda s: None)
    assert not fits["mg_fe"]["applied"] and "needed" in fits["mg_fe"]["reason"]
    fits = fit_abundance_trends(pred.drop(columns="fe_h"), ["teff", "logg", "mg_fe"], _cfg(),
                                ["teff", "logg"], PIVOT, log=lambda s: None)
    assert not fits["mg_fe"]["applied"] and "[Fe/H]" in fits["mg_fe"]["reason"]
    fits = fit_abundance_trends(pred, LABELS, _cfg(), [], PIVOT, log=lambda s: None)
    assert not fits["mg_fe"]["applied"] and "terms is empty" in fits["mg_fe"]["reason"]
    assert _corrected(pred, {"mg_fe": fits["mg_fe"]}) == {}


def test_the_reference_scale_record_carries_the_trends_beside_the_reference_star_fits():
    pred, true, giant, rich = _field(logg_slope=0.02)
    pred[[f"{k}_err" for k in LABELS]] = [20.0, 0.05, 0.03, 0.03, 0.04]
    cal = pd.DataFrame({"star_id": ["s0", "s1"], "name": ["a", "b"], "teff": [5000.0, 5500.0],
                        "e_teff": 30.0, "logg": [3.0, 4.0], "e_logg": 0.1,
                        "fe_h": [0.0, -0.2], "e_fe_h": 0.05})
    record = fit_reference_scale(pred, cal, LABELS, config.section(
        "reference_scale", {"enabled": True, "labels": ["teff", "mg_fe"]}), log=lambda s: None)
    assert record["labels"]["teff"]["method"] == "reference_stars"
    assert not record["labels"]["teff"]["applied"]   # two reference stars: too few
    assert record["labels"]["mg_fe"]["method"] == "abundance_trend"   # no table column
    assert record["labels"]["mg_fe"]["applied"] and record["labels"]["al_fe"]["applied"]
    out = apply_reference_scale({k: pred[k].to_numpy() for k in LABELS}, record)
    assert set(out) == {"mg_fe", "mg_fe_raw", "mg_fe_err_scale",
                        "al_fe", "al_fe_raw", "al_fe_err_scale"}


def test_terms_an_untrained_network_barely_varies_refuse_a_trend():
    pred, *_ = _field(seed=4)
    pred["teff"] = 5000.0 + 1e-3 * np.arange(len(pred)) / len(pred)
    fits = fit_abundance_trends(pred, LABELS, _cfg(), ["teff", "logg"], PIVOT,
                                log=lambda s: None)
    assert not fits["mg_fe"]["applied"] and "condition number" in fits["mg_fe"]["reason"]
