"""t-SNE cleaning on a synthetic survey with known defects."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from starlabels import artifacts, config
from starlabels.clean import (independent_neighbours, label_disagreement_z,
                              pca_scores_and_residuals, robust_z, robust_z_given, tsne_clean)

LABELS = ["teff", "fe_h", "mg_fe"]
DEFECT_KINDS = ("spike", "zeroed_run", "emission", "label_swap")


def synthetic_survey(n: int = 1500, n_pixels: int = 600, defect_fraction: float = 0.05,
                     n_untouched: int = 200, seed: int = 1):
    """Continuum-normalised spectra of saturating Gaussian lines whose strengths follow Teff,
    [Fe/H] and (three lines) [Mg/Fe], with S/N 30-200 noise, and injected defects in the
    train/valid rows: cosmic-ray spikes, a zeroed pixel run, strong emission, and pairs of
    stars whose labels were swapped. Returns (flux float32, table, defect kind per row).
    """
    rng = np.random.default_rng(seed)
    pixel = np.arange(n_pixels)
    n_lines = 14
    centre = rng.uniform(10, n_pixels - 10, n_lines)
    width = rng.uniform(1.5, 3.5, n_lines)
    strength = rng.uniform(-1.0, 0.5, n_lines)
    teff_slope = rng.normal(0.0, 0.8, n_lines)
    feh_slope = rng.uniform(0.3, 1.2, n_lines)
    mg_line = np.zeros(n_lines)
    mg_line[:3] = 1.5
    teff = rng.uniform(4200, 6800, n)
    fe_h = rng.uniform(-1.2, 0.4, n)
    mg_fe = rng.uniform(-0.1, 0.4, n)
    tau = np.exp(strength + np.outer((teff - 5500) / 1000, teff_slope)
                 + np.outer(fe_h, feh_slope) + np.outer(mg_fe, mg_line))
    profile = np.exp(-0.5 * ((pixel[None, :] - centre[:, None]) / width[:, None]) ** 2)
    flux = 1.0 - (0.85 * (1.0 - np.exp(-tau))) @ profile
    snr = rng.uniform(30, 200, n)
    flux += rng.normal(size=flux.shape) / snr[:, None]

    split = np.where(rng.random(n) < 0.15, "valid", "train").astype(object)
    untouched = rng.choice(n, n_untouched, replace=False)
    split[untouched[: n_untouched // 2]] = "test"
    split[untouched[n_untouched // 2:]] = "target"
    cleaned = np.flatnonzero(np.isin(split, ["train", "valid"]))
    per_kind = int(round(defect_fraction * cleaned.size)) // 4
    per_kind += per_kind % 2                       # label swaps come in pairs
    order = rng.permutation(cleaned)
    kind = np.full(n, "", dtype=object)
    for k, name in enumerate(DEFECT_KINDS):
        rows = order[k * per_kind:(k + 1) * per_kind]
        kind[rows] = name
        if name == "label_swap":
            for i, j in rows.reshape(-1, 2):
                for values in (teff, fe_h, mg_fe):
                    values[i], values[j] = values[j], values[i]
            continue
        for r in rows:
            if name == "spike":
                hit = rng.choice(n_pixels, rng.integers(8, 20), replace=False)
                flux[r, hit] += rng.uniform(0.4, 1.5, hit.size)
            elif name == "zeroed_run":
                length = rng.integers(min(20, n_pixels // 4), min(80, n_pixels // 2))
                start = rng.integers(0, n_pixels - length)
                flux[r, start:start + length] = 0.0
            else:
                where, sigma = rng.uniform(20, n_pixels - 20), rng.uniform(2, 6)
                flux[r] += rng.uniform(0.5, 1.5) * np.exp(-0.5 * ((pixel - where) / sigma) ** 2)
    # targets with the same defect must come back untouched
    flux[untouched[:10], 100:160] = 0.0
    mg_fe[rng.random(n) < 0.2] = np.nan             # some stars without an Mg abundance
    table = pd.DataFrame({
        "spectrum_id": [f"spec{i:05d}" for i in range(n)],
        "star_id": [f"star{i:05d}" for i in range(n)],
        "split": split, "teff": teff, "fe_h": fe_h, "mg_fe": mg_fe,
        "snr": snr * rng.normal(1.0, 0.05, n),      # a measured, slightly noisy S/N
    })
    return flux.astype(np.float32), table, kind


@pytest.fixture(scope="module")
def cleaned_survey(tmp_path_factory):
    flux, table, kind = synthetic_survey()
    path = tmp_path_factory.mktemp("clean") / "flux.npy"
    artifacts.save_matrix(path, flux)
    lines: list[str] = []
    # the label-disagreement test on its own (label_support_z null): what it catches
    result = tsne_clean(artifacts.load_matrix(path), table, LABELS,
                        {"seed": 7, "label_support_z": None}, log=lines.append)
    return table, kind, result, lines


def test_output_layout(cleaned_survey):
    table, _, result, _ = cleaned_survey
    expected = ["spectrum_id", "row", "cleaned", "keep", "reason", "tsne_x", "tsne_y",
                "pca_residual_z", "pca_peak_z", "label_model_z", "label_model_peak_z",
                "depth_scale_z", "embedding_outlier_z", *[f"label_z_{lab}" for lab in LABELS]]
    assert list(result.columns) == expected
    assert (result["spectrum_id"].to_numpy() == table["spectrum_id"].to_numpy()).all()
    assert (result["row"].to_numpy() == np.arange(len(table))).all()
    assert result["keep"].dtype == bool and result["cleaned"].dtype == bool
    rejected = result[result["cleaned"] & ~result["keep"]]
    assert (rejected["reason"] != "").all()
    assert (result.loc[result["keep"] & result["cleaned"], "reason"] == "").all()


def test_most_defects_rejected_few_good_ones(cleaned_survey):
    _, kind, result, _ = cleaned_survey
    cleaned = result["cleaned"].to_numpy()
    rejected = ~result["keep"].to_numpy()
    defect = kind != ""
    assert defect[cleaned].sum() >= 60
    caught = rejected[defect].mean()
    good_lost = rejected[cleaned & ~defect].mean()
    assert caught >= 0.70, f"only {caught:.0%} of defects rejected"
    assert good_lost <= 0.05, f"{good_lost:.1%} of good spectra rejected"
    for name in DEFECT_KINDS:                      # every kind is caught, not just the easy ones
        assert rejected[kind == name].mean() >= 0.5, name


def test_reasons_match_defect_kind(cleaned_survey):
    _, kind, result, _ = cleaned_survey
    reason = result["reason"].to_numpy()
    flux_defects = np.isin(kind, ["spike", "zeroed_run", "emission"])
    # spectra the PCA modes cannot describe are caught by their residual ...
    assert np.mean(["pca_residual" in r for r in reason[flux_defects]]) >= 0.7
    # ... while a normal spectrum with another star's labels is caught by its neighbours
    swapped = reason[kind == "label_swap"]
    assert np.mean(["label_disagreement:" in r for r in swapped]) >= 0.7
    assert not any("pca_residual" in r for r in swapped)


def test_neighbour_tests_need_the_spectrum_to_disagree_with_its_own_labels():
    # row 0: a peculiar star (its [Mg/Fe] unlike its neighbours', its spectrum agreeing with
    # it); row 1: a wrong label (neighbours and label model both object); row 2: lines too
    # shallow for a spectrum its labels otherwise fit; row 3: too shallow and poorly fitted
    from starlabels.clean import _reasons

    cfg = config.section("clean")
    zeros = np.zeros(4)
    z_lab = {"mg_fe": np.array([9.0, 9.0, 0.0, 0.0])}
    z_model = np.array([0.5, 4.0, 0.3, 3.0])
    z_depth = np.array([0.0, 0.0, 9.0, 9.0])
    supported = _reasons(zeros, zeros, z_lab, cfg, zeros, z_model, zeros, z_depth)
    assert list(supported) == ["", "label_disagreement:mg_fe", "", "line_depth_scale"]
    alone = _reasons(zeros, zeros, z_lab, dict(cfg, label_support_z=None), zeros, z_model,
                     zeros, z_depth)
    assert list(alone) == ["label_disagreement:mg_fe", "label_disagreement:mg_fe",
                           "line_depth_scale", "line_depth_scale"]


def test_scattered_light_is_caught_by_the_line_depth_scale():
    flux, table, kind = synthetic_survey(n=1500, seed=4)
    rows = np.flatnonzero((kind == "") & np.isin(table["split"], ["train", "valid"])
                          & table["mg_fe"].notna().to_numpy())[:15]
    flux[rows] = (flux[rows] + 0.35) / 1.35                  # every line 26 % too shallow
    quiet = lambda _msg: None  # noqa: E731
    result = tsne_clean(flux, table, LABELS, {"seed": 7}, log=quiet)
    assert result["reason"][rows].str.contains("line_depth_scale").mean() >= 0.9
    assert (result["depth_scale_z"][rows] > 6).all()
    off = tsne_clean(flux, table, LABELS, {"seed": 7, "depth_scale_z": None}, log=quiet)
    assert not off["reason"].str.contains("line_depth_scale").any()


def test_other_splits_untouched(cleaned_survey):
    table, _, result, _ = cleaned_survey
    other = ~table["split"].isin(["train", "valid"]).to_numpy()
    assert other.sum() == 200
    sub = result[other]
    assert sub["keep"].all() and not sub["cleaned"].any()
    assert sub[["tsne_x", "tsne_y", "pca_residual_z", "embedding_outlier_z"]].isna().all().all()
    assert (sub["reason"] == "not cleaned (split " + table.loc[other, "split"] + ")").all()
    assert result.loc[~other, ["tsne_x", "tsne_y", "pca_residual_z"]].notna().all().all()


def test_log_lines(cleaned_survey):
    _, _, result, lines = cleaned_survey
    text = "\n".join(lines)
    assert "t-SNE of 1300 spectra in" in text
    n_rejected = int((~result["keep"]).sum())
    assert f"rejected {n_rejected} " in text
    assert "pca_residual:" in text


def test_deterministic_with_seed():
    flux, table, _ = synthetic_survey(n=400, n_pixels=200, n_untouched=40, seed=5)
    cfg = {"seed": 3, "perplexity": 20}
    quiet = lambda _msg: None  # noqa: E731
    first = tsne_clean(flux, table, LABELS, cfg, log=quiet)
    second = tsne_clean(flux, table, LABELS, cfg, log=quiet)
    pd.testing.assert_frame_equal(first, second)


def test_thresholds_and_tsne_settings_come_from_config(monkeypatch):
    # the embedding itself is replaced by the first two PCA scores (t-SNE costs ~5 s a run);
    # what is tested here is that every knob reaches the code that uses it
    import starlabels.clean as clean

    calls = []

    def fake_embed(scores, **kwargs):
        calls.append(kwargs)
        return np.ascontiguousarray(scores[:, :2])

    monkeypatch.setattr(clean, "tsne_embed", fake_embed)
    flux, table, _ = synthetic_survey(n=400, n_pixels=200, n_untouched=40, seed=5)
    quiet = lambda _msg: None  # noqa: E731
    strict = tsne_clean(flux, table, LABELS, {"residual_z": 1e9, "residual_peak_z": 1e9,
                                              "label_model_z": 1e9, "depth_scale_z": 1e9,
                                              "outlier_z": 1e9, "label_z": 1e9,
                                              "seed": 11, "perplexity": 12, "n_jobs": 2}, log=quiet)
    assert calls[-1] == {"perplexity": 12.0, "seed": 11, "n_jobs": 2}
    assert strict["keep"].all()
    default = tsne_clean(flux, table, LABELS, {}, log=quiet)
    assert (~default["keep"]).sum() > 5
    loose = tsne_clean(flux, table, LABELS, {"label_z": 0.5, "min_flagged_labels": 2}, log=quiet)
    label_reasons = loose["reason"].str.count("label_disagreement:")
    assert (label_reasons[label_reasons > 0] >= 2).all()
    assert (label_reasons >= 2).sum() > 10
    fewer = tsne_clean(flux, table, LABELS, {"pca_components": 3, "residual_z": 1e9,
                                             "residual_peak_z": 1e9, "label_model_z": None,
                                             "depth_scale_z": None, "outlier_z": 1e9,
                                             "label_z": 1e9}, log=quiet)
    assert fewer["keep"].all()


def test_held_out_residual_exposes_a_defect_the_basis_fitted():
    # 40 identical spectra plus one with a huge spike, all inside the fit: an in-sample basis
    # would spend a component on the spike and hide it; the held-out residual must not.
    rng = np.random.default_rng(0)
    flux = 1.0 + 0.01 * rng.normal(size=(41, 300))
    flux[0, 150] += 5.0
    _, resid, _ = pca_scores_and_residuals(flux.astype(np.float32), np.arange(41), n_components=10)
    assert resid[0] > 10 * np.median(resid[1:])


def test_residual_peak_finds_a_local_defect_the_rms_dilutes():
    # a 6-pixel emission bump of 4σ per pixel in a 4000-pixel spectrum: the RMS grows by <1 %,
    # the running-mean peak stands at ~10σ
    rng = np.random.default_rng(1)
    flux = 1.0 + 0.01 * rng.normal(size=(200, 4000))
    flux[7, 2000:2006] += 0.04
    _, rms, peak = pca_scores_and_residuals(flux.astype(np.float32), np.arange(200),
                                            n_components=5, window=7)
    others = np.delete(np.arange(200), 7)
    assert rms[7] < 1.02 * np.max(rms[others])
    assert peak[7] > 1.5 * np.max(peak[others])


def test_robust_z():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    z = robust_z(x)
    assert np.isnan(z[-1]) and z[2] == 0.0 and z[4] > 20
    assert np.all(robust_z(np.ones(5)) == 0.0)
    # relative to neighbours in S/N: the same residual is normal at low S/N, extreme at high
    rng = np.random.default_rng(1)
    log_snr = rng.uniform(np.log(20), np.log(200), 2000)
    log_resid = -log_snr + 0.05 * rng.normal(size=2000)
    probe = np.r_[log_resid, -np.log(20), -np.log(20)]
    z = robust_z_given(probe, np.r_[log_snr, np.log(20), np.log(200)], n_bins=10)
    assert abs(z[-2]) < 3 and z[-1] > 20
    assert np.abs(z[:-2]).max() < 6


def test_label_disagreement_z_floor_and_nan():
    values = np.array([5000.0, 5010.0, 5020.0, 5030.0, 6000.0, np.nan])
    neighbours = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    z = label_disagreement_z(values, neighbours, floor=60.0)
    assert z[4] == pytest.approx((6000 - 5010) / 60.0)   # MAD 14.8 K < floor 60 K
    assert np.isnan(z[5])
    z_floorless = label_disagreement_z(values, neighbours, floor=0.0)
    assert abs(z_floorless[4]) > abs(z[4])
    few = label_disagreement_z(values, np.array([[5, -1, 1]] * 6), floor=60.0)
    assert np.isnan(few).all()                              # < 3 known neighbour labels


def test_independent_neighbours_skip_same_star():
    embedding = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5.0, 0], [5.1, 0], [5.2, 0]])
    star = np.array(["a", "a", "a", "b", "c", "d"])
    nb = independent_neighbours(embedding, star, n_neighbors=2)
    assert set(nb[0]) == {3, 4}             # star a's other spectra are not independent
    assert set(nb[3]) == {4, 5}
    nb_any = independent_neighbours(embedding, None, n_neighbors=2)
    assert set(nb_any[0]) == {1, 2}


def test_input_errors():
    flux, table, _ = synthetic_survey(n=100, n_pixels=50, n_untouched=10)
    with pytest.raises(ValueError, match="rows"):
        tsne_clean(flux[:-1], table, LABELS, {})
    with pytest.raises(ValueError, match="lacks"):
        tsne_clean(flux, table.drop(columns="split"), LABELS, {})
    with pytest.raises(ValueError, match="unknown label"):
        tsne_clean(flux, table, ["vsini"], {})
    nothing = tsne_clean(flux, table, LABELS, {"splits": ["nosuch"]}, log=lambda _m: None)
    assert nothing["keep"].all() and not nothing["cleaned"].any()


def test_defaults_documented():
    defaults = config.section("clean")
    assert defaults["pca_components"] == 50 and defaults["perplexity"] == 30
    assert defaults["label_floor"]["teff"] == 60
    assert defaults["splits"] == ["train", "valid"]


def test_label_model_flags_spectra_that_disagree_with_their_labels():
    from starlabels.clean import label_model_residuals

    rng = np.random.default_rng(4)
    n, n_pix = 600, 400
    teff = rng.uniform(4500, 6500, n)
    feh = rng.uniform(-1, 0.4, n)
    x = np.linspace(0, 1, n_pix)
    centres = np.linspace(0.05, 0.95, 20)
    depth = np.clip(0.3 + 0.2 * feh - 0.0001 * (teff - 5500), 0.02, 0.9)
    lines = np.exp(-0.5 * ((x[None, :] - centres[:, None]) / 0.004) ** 2).sum(0)
    flux = 1.0 - depth[:, None] * lines[None, :] + rng.normal(0, 0.01, (n, n_pix))
    snr = np.full(n, 100.0)
    labels = np.stack([teff, feh], 1).copy()
    labels[3, 1] = labels[3, 1] + 0.8               # a label that belongs to another star
    flux[5] = (flux[5] + 0.4) / 1.4                 # scattered light: every line too shallow
    z_rms, z_peak, scale = label_model_residuals(flux.astype(np.float32), np.arange(n), labels,
                                                 snr)
    worst = np.maximum(z_rms, z_peak)
    assert worst[3] > 6 and worst[5] > 6
    assert np.mean(np.delete(worst, [3, 5]) > 4.5) < 0.02
    # scattered light s = 0.4 makes every line shallower by 1/(1 + s)
    assert scale[5] == pytest.approx(1 / 1.4, abs=0.03)
    assert np.median(scale) == pytest.approx(1.0, abs=0.01)
    labels[7, 0] = np.nan                            # unknown labels are not judged
    z_rms, _, scale = label_model_residuals(flux.astype(np.float32), np.arange(n), labels, snr)
    assert np.isnan(z_rms[7]) and np.isnan(scale[7])
