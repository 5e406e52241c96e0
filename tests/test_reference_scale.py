"""The reference-star scale: trends of predicted − literature fitted on the benchmark stars,
applied to every spectrum (starlabels.reference_scale)."""
import json

import numpy as np
import pandas as pd
import pytest

from starlabels import config
from starlabels.catalog import scaled_columns
from starlabels.reference_scale import (apply_reference_scale, design, fit_label,
                                        fit_reference_scale, reference_rows)

LABELS = ["teff", "logg", "fe_h", "mg_fe", "al_fe"]


def _stars(n=14, seed=3):
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4300.0, 6600.0, n)
    logg = rng.uniform(1.5, 4.7, n)
    fe_h = rng.uniform(-0.6, 0.3, n)
    return teff, logg, fe_h, rng


def _frames(offset_teff, offset_logg, n=14, seed=3, noise=(5.0, 0.01)):
    """Predictions of n reference stars (split calibration) whose Teff and log g are off by the
    given functions of the true labels, plus one trained star that must not be used."""
    teff, logg, fe_h, rng = _stars(n, seed)
    pred = pd.DataFrame({
        "star_id": [f"s{k}" for k in range(n)], "split": "calibration",
        "teff": teff + offset_teff(teff, logg) + rng.normal(0, noise[0], n),
        "logg": logg + offset_logg(teff, logg) + rng.normal(0, noise[1], n),
        "fe_h": fe_h + rng.normal(0, 0.01, n), "mg_fe": 0.0, "al_fe": 0.0,
        "teff_err": noise[0], "logg_err": noise[1], "fe_h_err": 0.01,
        "mg_fe_err": 0.02, "al_fe_err": 0.03})
    trained = pred.iloc[:1].assign(star_id="trained", split="train", teff=1e5)
    cal = pd.DataFrame({"star_id": list(pred["star_id"]) + ["trained"],
                        "name": [f"star {k}" for k in range(n + 1)],
                        "teff": list(teff) + [5000.0], "e_teff": np.nan,
                        "logg": list(logg) + [4.0], "e_logg": 0.0,
                        "fe_h": list(fe_h) + [0.0], "e_fe_h": np.nan})
    return pd.concat([pred, trained], ignore_index=True), cal


def _cfg(**kw):
    return config.section("reference_scale", {"enabled": True, **kw})


def test_schema_defaults_fit_teff_logg_fe_h_on_a_teff_logg_trend_with_solar_pivot():
    cfg = config.section("reference_scale", {})
    assert cfg["enabled"] is False and cfg["labels"] == ["teff", "logg", "fe_h"]
    assert cfg["terms"] == ["teff", "logg"] and cfg["pivot"]["teff"] == 5772.0


def test_a_known_trend_is_recovered_and_removed_from_every_star():
    # the simulator's kind of offset: +25 K per dex below log g 4.438, +0.1 dex per 1000 K cooler
    pred, cal = _frames(lambda t, g: 25.0 * (4.438 - g), lambda t, g: 0.1 * (5772.0 - t) / 1000)
    record = fit_reference_scale(pred, cal, LABELS, _cfg(), log=lambda s: None)
    teff = record["labels"]["teff"]
    # design columns [1, (teff − 5772)/1000, logg − 4.438]
    np.testing.assert_allclose(teff["coefficients"], [0.0, 0.0, -25.0], atol=6.0)
    np.testing.assert_allclose(record["labels"]["logg"]["coefficients"], [0.0, -0.1, 0.0],
                               atol=0.015)
    assert teff["n_used"] == 14 and "trained" not in record["stars"]
    # a field giant far from every reference star is put back onto the true scale
    field = {"teff": np.array([4600.0 + 25.0 * 2.0]), "logg": np.array([2.438 + 0.1172]),
             "fe_h": np.array([0.0])}
    out = apply_reference_scale(field, record)
    assert abs(out["teff"][0] - 4600.0) < 15.0 and abs(out["logg"][0] - 2.438) < 0.04
    np.testing.assert_array_equal(out["teff_raw"], field["teff"])
    assert out["teff_err_scale"][0] > 0 and "mg_fe" not in out


def test_the_scale_uncertainty_is_the_trend_covariance_at_the_star():
    pred, cal = _frames(lambda t, g: 30.0 + 0 * t, lambda t, g: 0 * t, noise=(20.0, 0.05))
    record = fit_reference_scale(pred, cal, LABELS, _cfg(), log=lambda s: None)
    values = {"teff": np.array([5772.0, 4000.0]), "logg": np.array([4.438, 1.0]),
              "fe_h": np.zeros(2)}
    out = apply_reference_scale(values, record)
    x = design(values, record["terms"], record["pivot"])
    cov = np.asarray(record["labels"]["teff"]["covariance"])
    np.testing.assert_allclose(out["teff_err_scale"] ** 2, np.diag(x @ cov @ x.T))
    # at the pivot it is the constant's error; far from the reference stars it grows
    assert out["teff_err_scale"][1] > 2 * out["teff_err_scale"][0]


def test_a_star_far_off_every_trend_is_clipped_and_its_leave_one_out_residual_kept():
    teff, logg, fe_h, rng = _stars(12)
    delta = 20.0 + rng.normal(0, 5.0, 12)
    delta[4] = 400.0                                 # a metal-poor dwarf the network misses
    x = design({"teff": teff, "logg": logg}, ["teff", "logg"], {"teff": 5772.0, "logg": 4.438})
    fit = fit_label(delta, np.full(12, 5.0), x, clip_sigma=3.0, min_stars=8)
    assert fit["applied"] and not fit["used"][4] and fit["n_used"] == 11
    np.testing.assert_allclose(fit["coefficients"][0] + 0 * teff[0], 20.0, atol=8.0)
    # leave-one-out: each used star against the trend fitted without it
    used = np.asarray(fit["used"])
    others = used.copy()
    others[0] = False
    coef = np.linalg.lstsq(x[others], delta[others], rcond=None)[0]
    assert fit["loo_residual"][0] == pytest.approx(delta[0] - x[0] @ coef)
    assert fit["loo_residual"][4] is None


def test_too_few_stars_or_no_literature_column_leave_the_label_uncorrected():
    pred, cal = _frames(lambda t, g: 0 * t, lambda t, g: 0 * t, n=6)
    messages = []
    record = fit_reference_scale(pred, cal.drop(columns=["fe_h", "e_fe_h"]), LABELS,
                                 _cfg(min_stars=8), log=messages.append)
    assert not record["labels"]["teff"]["applied"]
    assert "6 reference stars" in record["labels"]["teff"]["reason"]
    assert record["labels"]["fe_h"] == {"applied": False, "method": "reference_stars",
                                        "reason": "the calibration table has no such column"}
    assert any("not calibrated" in m for m in messages)
    values = {"teff": np.array([5000.0]), "logg": np.array([3.0]), "fe_h": np.array([0.0])}
    assert apply_reference_scale(values, record) == {}


def test_only_stars_outside_the_training_split_are_reference_rows():
    pred, cal = _frames(lambda t, g: 0 * t, lambda t, g: 0 * t)
    rows = reference_rows(pred, cal)
    assert "trained" not in set(rows["star_id"]) and len(rows) == 14
    np.testing.assert_array_equal(rows["teff_lit"], cal["teff"][:14])


def test_a_term_that_is_not_predicted_is_a_config_error():
    pred, cal = _frames(lambda t, g: 0 * t, lambda t, g: 0 * t)
    with pytest.raises(ValueError, match="terms"):
        fit_reference_scale(pred.drop(columns="logg"), cal, ["teff", "fe_h"], _cfg())


def test_catalogue_columns_keep_raw_after_the_label_and_scale_error_after_err():
    pred, cal = _frames(lambda t, g: 40.0 + 0 * t, lambda t, g: 0 * t)
    record = fit_reference_scale(pred, cal, LABELS, _cfg(labels=["teff"]), log=lambda s: None)
    values = {"teff": np.array([5000.0]), "teff_err": np.array([30.0]),
              "teff_err_raw": np.array([35.0]), "logg": np.array([4.0]),
              "logg_err": np.array([0.1])}
    out = scaled_columns(values, record)
    assert list(out) == ["teff", "teff_raw", "teff_err", "teff_err_scale", "teff_err_raw",
                         "logg", "logg_err"]
    assert out["teff"][0] == pytest.approx(5000.0 - 40.0, abs=6.0)
    assert out["teff_err"][0] == 30.0             # the per-star error is left as it was
    assert scaled_columns(values, None) == values


def test_reference_stars_whose_predictions_barely_differ_fit_no_trend():
    # an untrained network predicts nearly one Teff and log g for every star: a trend fitted on
    # those would be extrapolated by orders of magnitude
    pred, cal = _frames(lambda t, g: 0 * t, lambda t, g: 0 * t)
    rng = np.random.default_rng(0)
    pred["teff"] = 5000.0 + rng.normal(0, 5.0, len(pred))
    pred["logg"] = 3.0 + rng.normal(0, 0.005, len(pred))
    record = fit_reference_scale(pred, cal, LABELS, _cfg(), log=lambda s: None)
    for label in ("teff", "logg", "fe_h"):
        assert not record["labels"][label]["applied"]
        assert "span too little" in record["labels"][label]["reason"]
    # a zero point alone is still well defined
    record = fit_reference_scale(pred, cal, LABELS, _cfg(terms=[]), log=lambda s: None)
    assert record["labels"]["teff"]["applied"] and len(record["labels"]["teff"]["coefficients"]) == 1


def test_the_rule_chain_fits_the_scale_and_the_catalogue_applies_it(tmp_path):
    """stages.reference_scale on prediction shards and the calibration table, then
    stages.catalog with its JSON: the FITS and Parquet catalogues carry the corrected labels,
    <label>_raw, <label>_err_scale and the REFSCALE card; the giants' class uses the corrected
    log g."""
    from astropy.io import fits

    from starlabels import artifacts, stages

    labels = ["teff", "logg", "fe_h"]
    pred, cal = _frames(lambda t, g: 25.0 * (4.438 - g), lambda t, g: 0.1 * (5772 - t) / 1000)
    pred = pred[pred["split"] != "train"].reset_index(drop=True)
    field = pd.DataFrame({"star_id": ["f0", "f1"], "split": "test", "teff": [4650.0, 5772.0],
                          "logg": [2.55, 4.438], "fe_h": [0.0, 0.0], "teff_err": 30.0,
                          "logg_err": 0.1, "fe_h_err": 0.03})
    rows = pd.concat([pred[field.columns], field], ignore_index=True)
    rows["spectrum_id"] = rows["star_id"]
    rows["snr"] = 100.0
    rows["n_members"] = 2
    rows["row"] = np.arange(len(rows))
    shard = tmp_path / "shard_0.parquet"
    artifacts.save_table(shard, rows.drop(columns=["star_id", "split", "snr"]))
    stars = rows[["spectrum_id", "star_id", "split", "snr", *labels]].copy()
    artifacts.save_table(tmp_path / "stars.parquet", stars)
    artifacts.save_table(tmp_path / "calibration.parquet", cal[cal["star_id"] != "trained"])
    artifacts.save_table(tmp_path / "clean.parquet", pd.DataFrame(
        {"keep": True, "reason": "", "cleaned": False}, index=range(len(rows))))
    member = tmp_path / "member_0"
    artifacts.save_json(member / "model.json", {"labels": labels, "label_min": [0, -10, -10],
                                                "label_max": [1e5, 10, 10]})
    scale = tmp_path / "reference_scale.json"
    stages.reference_scale(shards=[str(shard)], table=str(tmp_path / "stars.parquet"),
                           calibration=str(tmp_path / "calibration.parquet"), labels=labels,
                           cfg=_cfg(), out=str(scale), log=lambda s: None)
    refined = rows[["spectrum_id", "row"]].copy()
    for label in labels:
        refined[f"{label}_refined"] = rows[label] + (10.0 if label == "teff" else 0.01)
        refined[f"{label}_refined_err"] = 1.0
        refined[f"{label}_combined"] = rows[label] + (5.0 if label == "teff" else 0.005)
        refined[f"{label}_combined_err"] = 0.7
    refined["refine_chi2_red"] = 1.0
    refined["refine_converged"] = True
    refined["refine_unlike_training"] = False
    artifacts.save_table(tmp_path / "refined_0.parquet", refined)
    fits_path, parquet_path = tmp_path / "cat.fits", tmp_path / "cat.parquet"
    out = stages.catalog(shards=[str(shard)], table=str(tmp_path / "stars.parquet"),
                         clean_table=str(tmp_path / "clean.parquet"), model_dirs=[str(member)],
                         labels=labels, cfg={"snr_min": None, "max_err": {}}, experiment="toy",
                         method="cnn_regression", fits_path=str(fits_path),
                         parquet_path=str(parquet_path), reference_scale=str(scale),
                         classes={"giant_logg_max": 3.5, "dwarf_logg_min": 4.0},
                         refined=[str(tmp_path / "refined_0.parquet")], log=lambda s: None)
    giant = out[out["star_id"] == "f0"].iloc[0]
    # the field giant is 25 K per dex too hot and 0.11 dex too high in gravity: put back
    assert giant["teff_raw"] == 4650.0 and abs(giant["teff"] - 4600.0) < 15.0
    assert abs(giant["logg"] - 2.44) < 0.04 and giant["teff_err"] == 30.0
    assert giant["teff_err_scale"] > 0 and giant["evolutionary_class"] == "giant"
    # the refined labels learnt the same catalogue scale: the same trend, at their own values
    record = json.loads(scale.read_text())
    x = design({"teff": np.array([4660.0]), "logg": np.array([2.56])}, record["terms"],
               record["pivot"])
    assert giant["teff_refined"] == pytest.approx(
        4660.0 - (x @ record["labels"]["teff"]["coefficients"])[0])
    assert giant["teff_refined_err"] == 1.0
    # the combined labels too
    x = design({"teff": np.array([4655.0]), "logg": np.array([2.555])}, record["terms"],
               record["pivot"])
    assert giant["teff_combined"] == pytest.approx(
        4655.0 - (x @ record["labels"]["teff"]["coefficients"])[0])
    assert giant["teff_combined_err"] == 0.7
    with fits.open(fits_path) as hdul:
        assert hdul[1].header["REFSCALE"] == "fe_h,logg,teff"
        names = hdul[1].columns.names
    assert {"teff_raw", "teff_err_scale", "logg_raw", "fe_h_raw"} <= set(names)
    np.testing.assert_allclose(artifacts.load_table(parquet_path)["teff"], out["teff"])
