import numpy as np
import pandas as pd
import pytest

from starlabels.validate import (clean_metrics, error_calibration, giant_fractions,
                                 gradient_line_ratios, label_stats, reference_stars_block,
                                 reference_stars_lines)


def test_label_stats_bias_sigma_robust():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1, 20000)
    pred = true + 0.1 + rng.normal(0, 0.05, true.size)
    pred[:10] = np.nan                                    # NaN-safe
    s = label_stats(pred, true)
    assert s["n"] == true.size - 10
    assert s["bias"] == pytest.approx(0.1, abs=0.002)
    assert s["sigma"] == pytest.approx(0.05, rel=0.03)
    assert s["robust_sigma"] == pytest.approx(0.05, rel=0.05)
    assert label_stats(np.full(3, np.nan), np.zeros(3))["n"] == 0


def test_error_calibration_coverage():
    rng = np.random.default_rng(1)
    true = np.zeros(50000)
    pred = rng.normal(0, 2.0, true.size)
    honest = error_calibration(pred, np.full(true.size, 2.0), true)
    assert honest["coverage_68"] == pytest.approx(0.683, abs=0.01)
    assert honest["z_sigma"] == pytest.approx(1.0, abs=0.02)
    overconfident = error_calibration(pred, np.full(true.size, 0.5), true)
    assert overconfident["coverage_68"] < 0.25 and overconfident["z_sigma"] > 3.5


def test_giant_fractions():
    f = giant_fractions(np.array([1.0, 2.5, 3.7, 4.5, np.nan]), 3.5, 4.0)
    assert (f["giant"], f["subgiant"], f["dwarf"], f["n"]) == (0.5, 0.25, 0.25, 4)


def test_gradient_line_ratio_is_high_only_at_the_elements_lines():
    wavelength = np.arange(8700.0, 8800.0, 0.1)
    lines = pd.DataFrame({"wavelength_air": [8736.02, 8772.87], "element": ["Mg", "Al"]})
    grads = np.full((2, wavelength.size), 0.01)
    grads[0, np.abs(wavelength - 8736.02) < 0.3] = 1.0    # [Mg/Fe] reads the Mg line
    ratios = gradient_line_ratios(wavelength, grads, ["mg_fe", "al_fe"], lines)
    assert ratios["mg_fe"] > 20 and ratios["al_fe"] == pytest.approx(1.0)


def test_clean_metrics_counts_defects_in_cleaned_splits_only():
    truth = pd.DataFrame({"star_id": list("abcdef"),
                          "defect": ["", "cosmic_rays", "", "emission_cores", "", ""],
                          "broken": ["", "", "", "", "", "truncated_file"]})
    stars = pd.DataFrame({"star_id": list("abcde")})          # f was rejected by normalize
    cleaned = pd.DataFrame({"cleaned": [True, True, True, True, False],
                            "keep": [True, False, False, True, True],
                            "reason": ["", "pca_peak", "label_model_residual", "", ""]})
    rejects = pd.DataFrame({"spectrum_id": ["f_HR10.fits"], "path": ["x"], "stage": ["normalize"],
                            "reason": ["unreadable: truncated"]})
    m = clean_metrics(truth, stars, cleaned, rejects)
    assert m["n_cleaned"] == 4 and m["n_defective"] == 2
    assert m["defective_rejected_fraction"] == 0.5
    assert m["good_rejected_fraction"] == 0.5
    assert m["per_defect"]["cosmic_rays"]["rejected_fraction"] == 1.0
    assert m["normalize_rejected"]["n"] == 1
    assert m["normalize_rejected"]["per_broken_file"] == {"truncated_file": 1}
    assert m["normalize_rejected"]["per_reason"] == {"unreadable": 1}


def test_reference_stars_are_reported_beside_their_literature_labels():
    calibration = pd.DataFrame({"star_id": ["s1", "s2", "gone"], "name": ["Arcturus", "Sun", "X"],
                                "teff": [4277.0, 5772.0, 5000.0], "e_teff": [23.0, np.nan, 50.0],
                                "logg": [1.58, 4.438, 4.0], "e_logg": [0.07, np.nan, 0.1],
                                "fe_h": [-0.55, 0.0, 0.0], "e_fe_h": [np.nan] * 3,
                                "reference": ["v3", "IAU", "x"]})
    cat = pd.DataFrame({"star_id": ["s0", "s1", "s2"], "split": ["train", "calibration",
                                                                 "calibration"],
                        "snr": [50.0, 150.0, 150.0], "teff": [5000.0, 4300.0, 5750.0],
                        "teff_err": [10.0, 20.0, 30.0], "logg": [4.0, 1.7, 4.4],
                        "logg_err": [0.1] * 3, "fe_h": [0.0, -0.5, 0.05], "fe_h_err": [0.05] * 3,
                        "mg_fe": [0.0] * 3, "mg_fe_err": [0.02] * 3})
    block = reference_stars_block(cat, calibration, ["teff", "logg", "fe_h", "mg_fe"])
    assert block["n"] == 2 and block["labels"] == ["teff", "logg", "fe_h"]
    assert block["not_predicted"] == ["gone"]
    arcturus = block["stars"][0]
    assert (arcturus["name"], arcturus["split"], arcturus["snr"]) == ("Arcturus", "calibration",
                                                                      150.0)
    # a catalogue not put onto a reference scale: the raw prediction is the prediction
    assert arcturus["teff"] == {"literature": 4277.0, "e_literature": 23.0, "predicted": 4300.0,
                                "predicted_raw": 4300.0, "predicted_err": 20.0}
    assert block["vs_literature"]["teff"]["bias"] == pytest.approx((23.0 - 22.0) / 2)
    assert block["vs_literature"]["logg"]["n"] == 2
    lines = reference_stars_lines(block)
    assert "2 reference stars" in lines[0] and any(line.strip().startswith("Arcturus")
                                                   for line in lines)
    assert "4300/4277" in " ".join(lines).replace(" ", "")


def test_repeat_pair_z_scores_follow_honest_and_overconfident_uncertainties():
    from starlabels.validate import repeat_pairs

    rng = np.random.default_rng(3)
    n_stars, visits = 3000, 2
    star = np.repeat([f"s{i}" for i in range(n_stars)], visits)
    true = np.repeat(rng.normal(5000, 500, n_stars), visits)
    sigma = rng.uniform(20, 80, star.size)
    cat = pd.DataFrame({"star_id": star, "split": "test", "teff": true + rng.normal(size=star.size)
                        * sigma, "teff_err": sigma})
    out = repeat_pairs(cat, ["teff"])["held_out"]
    assert out["n_pairs"] == n_stars and out["labels"]["teff"]["uncertainty"] == "teff_err"
    assert out["labels"]["teff"]["z_sigma"] == pytest.approx(1.0, abs=0.04)
    assert out["labels"]["teff"]["fraction_within_1"] == pytest.approx(0.683, abs=0.03)
    # overconfident errors (half the truth): z spreads twice as wide
    half = repeat_pairs(cat.assign(teff_err=sigma / 2), ["teff"])["held_out"]["labels"]["teff"]
    assert half["z_sigma"] == pytest.approx(2.0, abs=0.1)
    # three visits give three pairs; stars with defects and training rows are kept apart
    three = pd.DataFrame({"star_id": ["a", "a", "a", "b", "b", "c"], "split": ["test"] * 5 +
                          ["train"], "teff": [1.0, 2.0, 4.0, 0.0, 1.0, 3.0],
                          "teff_err": [1.0] * 6})
    res = repeat_pairs(three, ["teff"], exclude_stars={"b"})
    assert res["held_out"]["n_pairs"] == 3 and res["training"]["n_pairs"] == 0
    np.testing.assert_allclose(res["held_out"]["labels"]["teff"]["rms_difference"],
                               np.sqrt((1 + 9 + 4) / 3))


def test_clean_metrics_report_populations_the_cleaning_must_keep():
    truth = pd.DataFrame({"star_id": list("abcdef"), "defect": ["", "", "", "", "cosmic_rays", ""],
                          "chemical_population": ["disc", "al_rich_mg_poor", "al_rich_mg_poor",
                                                  "disc", "al_rich_mg_poor", "disc"],
                          "population": ["dwarf", "giant", "giant", "giant", "giant", "dwarf"],
                          "catalogue_outlier": [False, False, False, True, False, False]})
    stars = pd.DataFrame({"star_id": list("abcdef") + ["b"]})        # b observed twice
    cleaned = pd.DataFrame({"cleaned": [True] * 7,
                            "keep": [True, True, False, False, False, True, True],
                            "reason": [""] * 7})
    rejects = pd.DataFrame(columns=["spectrum_id", "path", "stage", "reason"])
    m = clean_metrics(truth, stars, cleaned, rejects)
    assert m["per_population"]["al_rich_mg_poor"] == {"n": 3, "kept_fraction": pytest.approx(2 / 3)}
    assert m["per_population"]["disc"]["kept_fraction"] == pytest.approx(2 / 3)
    assert m["per_class"]["giant"]["n"] == 4
    assert m["catalogue_outliers"] == {"n": 1, "rejected_fraction": 1.0}
    # a rejected catalogue outlier is not a good spectrum lost: b, b, f kept, c rejected
    assert m["good_rejected_fraction"] == pytest.approx(1 / 5)


def test_catalogue_scale_scores_measure_against_the_truth_plus_the_catalogue_offset():
    """Labels that reproduce the catalogue's offset, with errors right about it: against the
    truth their coverage falls short, against truth + offset it is the nominal one; the labels
    before the reference scale (`_raw`) are the ones judged, and defective stars are left out."""
    from starlabels.simulate.catalogue import systematic_offset
    from starlabels.validate import catalogue_scale_scores

    rng = np.random.default_rng(5)
    n = 4000
    truth = pd.DataFrame({"star_id": [f"s{i}" for i in range(n)],
                          "teff": rng.uniform(4200, 6500, n), "logg": rng.uniform(1.5, 4.6, n),
                          "fe_h": rng.normal(-0.2, 0.3, n), "defect": [""] * (n - 40) + ["cosmic_rays"] * 40})
    offsets = {"teff": [25.0, 0.0], "fe_h": [-0.02, 0.04]}
    assert systematic_offset(truth, offsets, "fe_h")[0] == pytest.approx(
        -0.02 * (4.44 - truth.logg[0]) + 0.04 * (5777 - truth.teff[0]) / 1000)
    err = np.full(n, 0.03)
    learnt = truth.fe_h + systematic_offset(truth, offsets, "fe_h") + rng.normal(0, 0.03, n)
    cat = pd.DataFrame({"star_id": truth.star_id, "split": "test",
                        "fe_h_raw": learnt, "fe_h": learnt - 0.05,   # moved by a reference scale
                        "fe_h_err": err,
                        "teff": truth.teff + rng.normal(0, 30, n), "teff_err": 30.0})
    cat.loc[n - 40:, "fe_h_raw"] += 1.0                            # the defective stars
    true_labels = truth.rename(columns={k: f"{k}_true" for k in ("teff", "fe_h")})
    out = catalogue_scale_scores(cat, true_labels, ["teff", "fe_h"], np.arange(n), offsets)
    assert out["fe_h"]["column"] == "fe_h_raw" and out["fe_h"]["n"] == n - 40
    assert out["fe_h"]["coverage68"] == pytest.approx(0.68, abs=0.025)
    assert abs(out["fe_h"]["bias"]) < 0.003
    # Teff carries no offset of the catalogue here: against truth + 25 K/dex it is off
    assert out["teff"]["coverage68"] < 0.6
    assert out["teff"]["column"] == "teff"
    # the same labels against the bare truth cover less
    bare = np.mean(np.abs(learnt[: n - 40] - truth.fe_h[: n - 40]) <= 0.03)
    assert bare < out["fe_h"]["coverage68"] - 0.05


def test_scale_by_class_gives_each_classs_median_bias_before_and_after_the_scale():
    from starlabels.validate import scale_by_class

    n = 60
    population = np.array(["dwarf", "giant", "subgiant"])[np.arange(n) % 3]
    true = np.linspace(-0.1, 0.3, n)
    raw = true + np.where(population == "giant", 0.05, 0.0)
    cat = pd.DataFrame({"star_id": [f"s{k}" for k in range(n)], "split": "test",
                        "mg_fe_raw": raw, "mg_fe": true + 0.001, "al_fe": true})
    truth = pd.DataFrame({"star_id": cat["star_id"], "mg_fe_true": true, "al_fe_true": true,
                          "population": population, "defect": ""})
    out = scale_by_class(cat, truth, ["mg_fe", "al_fe"], np.arange(n))
    assert set(out) == {"mg_fe"}          # al_fe was not moved: no _raw, no entry
    assert out["mg_fe"]["raw"]["giant"]["median_bias"] == pytest.approx(0.05)
    assert out["mg_fe"]["raw"]["dwarf"]["median_bias"] == pytest.approx(0.0)
    assert out["mg_fe"]["catalogue"]["giant"]["median_bias"] == pytest.approx(0.001)
    assert out["mg_fe"]["catalogue"]["subgiant"]["n"] == 20
    assert scale_by_class(cat, truth.drop(columns="population"), ["mg_fe"], np.arange(n)) == {}
