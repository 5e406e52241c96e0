"""The regression CNN's uncertainties: variance heads, the deep-ensemble combination, noise
augmentation, the noise channel, the valid-split calibration — each shown to do what it says on
toy spectra whose single line encodes Teff (depth) and log g (width)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.cnn.calibration import (calibrated_error, calibrated_mean, fit_scale, snr_bin,
                                        snr_edges)
from starlabels.cnn.ensemble import combine
from starlabels.cnn.train import degrade, holdout_rows, predict_scaled_with_variance, train_member
from starlabels.members import load_member
from starlabels.models import build_model
from starlabels.models.gaia_eso_cnn import noise_encoding

LABELS = ["teff", "logg"]

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def toy_survey(folder, *, n=360, n_pixels=300, snr=None, label_error=None, seed=3,
               valid_teff_shift=0.0):
    """flux/ivar/table of a toy survey: rows [0, 0.75 n) train, the rest valid. ``snr`` (array)
    sets each spectrum's noise, ``label_error`` (array, K) scatters the catalogue Teff around
    the truth by that much and records it as e_teff; ``valid_teff_shift`` moves only the
    valid rows' catalogue Teff."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 7000, n)
    logg = rng.uniform(1, 5, n)
    snr = np.full(n, 200.0) if snr is None else np.asarray(snr, dtype=float)
    x = np.arange(n_pixels)
    depth = 0.2 + 0.6 * (teff - 4000) / 3000
    width = 2 + (logg - 1)
    clean = 1 - depth[:, None] * np.exp(-0.5 * ((x - n_pixels / 2) / width[:, None]) ** 2)
    flux = clean + rng.normal(0, 1, clean.shape) / snr[:, None]
    ivar = np.broadcast_to((snr ** 2)[:, None], flux.shape).copy()
    n_train = int(0.75 * n)
    split = np.array(["train"] * n_train + ["valid"] * (n - n_train))
    cat_teff = teff.copy()
    errors = np.zeros(n) if label_error is None else np.asarray(label_error, dtype=float)
    cat_teff += rng.normal(0, 1, n) * errors
    cat_teff[split == "valid"] += valid_teff_shift
    table = pd.DataFrame({"spectrum_id": [f"t{i}" for i in range(n)], "split": split,
                          "teff": cat_teff, "logg": logg, "e_teff": errors, "e_logg": 0.0,
                          "snr": snr, "true_teff": teff})
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.save_matrix(folder / "flux.npy", flux.astype(np.float32))
    artifacts.save_matrix(folder / "ivar.npy", ivar.astype(np.float32))
    artifacts.save_table(folder / "table.parquet", table, {"grid_hash": "toy"})
    return {"flux": folder / "flux.npy", "ivar": folder / "ivar.npy",
            "table": folder / "table.parquet", "n": n, "frame": table}


def cfg(**overrides):
    out = dict(seed=5, device="cpu", epochs=40, batch_size=32, learning_rate=3e-3, patience=10,
               conv_l2=0.0, architecture={}, method="cnn_regression", min_delta=0.0,
               lr_schedule="cosine")
    out.update(overrides)
    return out


def train(survey, out, **overrides):
    meta = train_member(survey["flux"], survey["table"], np.ones(survey["n"], bool), LABELS, 0,
                        cfg(**overrides), out, log=lambda line: None, threads=1,
                        ivar_path=survey["ivar"])
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    return meta, state


def predicted(survey, folder, rows):
    model, meta = load_member(folder)
    flux = torch.from_numpy(np.array(artifacts.load_matrix(survey["flux"])[rows]))
    ivar = torch.from_numpy(np.array(artifacts.load_matrix(survey["ivar"])[rows]))
    mean, var = predict_scaled_with_variance(model, flux, 64, ivar)
    span = np.array(meta["label_max"]) - np.array(meta["label_min"])
    return (mean.numpy() * span + np.array(meta["label_min"]),
            np.sqrt(var.numpy()) * span)


def test_the_valid_split_takes_no_part_in_training(tmp_path):
    """Moving every valid catalogue label by 500 K must not change a single weight: the valid
    split is kept for the calibration."""
    a = toy_survey(tmp_path / "a")
    b = toy_survey(tmp_path / "b", valid_teff_shift=500.0)
    _, wa = train(a, tmp_path / "ma", epochs=3)
    meta_b, wb = train(b, tmp_path / "mb", epochs=3)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # ...while it is still reported on (and there the shift shows)
    meta_a = artifacts.load_json(tmp_path / "ma" / "model.json")
    assert meta_b["valid_rmse"]["teff"] > meta_a["valid_rmse"]["teff"] + 100


def test_holdout_rows_come_from_the_training_split_and_follow_the_seed():
    rows = np.arange(100, 200)
    fit, out = holdout_rows(rows, 0.2, seed=4)
    assert out.size == 20 and fit.size == 80
    assert set(fit) | set(out) == set(rows) and not set(fit) & set(out)
    assert np.array_equal(out, holdout_rows(rows, 0.2, seed=4)[1])
    assert not np.array_equal(out, holdout_rows(rows, 0.2, seed=5)[1])
    assert holdout_rows(rows, 0.0, seed=4)[1].size == 0


@pytest.fixture(scope="module")
def noisy_and_clean(tmp_path_factory):
    """A member trained on spectra half at S/N 15, half at S/N 300."""
    folder = tmp_path_factory.mktemp("snr")
    n = 480
    snr = np.where(np.arange(n) % 2 == 0, 15.0, 300.0)
    survey = toy_survey(folder, n=n, snr=snr)
    train(survey, folder / "m", epochs=60)
    return survey, folder / "m"


def test_variance_head_says_noisy_spectra_are_less_certain(noisy_and_clean):
    survey, model_dir = noisy_and_clean
    rows = np.flatnonzero(survey["frame"]["split"].eq("valid").to_numpy())
    mean, sigma = predicted(survey, model_dir, rows)
    noisy = survey["frame"]["snr"].to_numpy()[rows] < 100
    error = np.abs(mean[:, 0] - survey["frame"]["true_teff"].to_numpy()[rows])
    # the real error is larger at S/N 15, and the head knows it
    assert np.median(error[noisy]) > 1.5 * np.median(error[~noisy])
    assert np.median(sigma[noisy, 0]) > 1.5 * np.median(sigma[~noisy, 0])


def test_variance_head_learns_the_true_labels_error_not_the_catalogues(tmp_path):
    """Catalogue Teff scattered by 150 K (and e_teff saying so) around exact truth: the head,
    with the catalogue error added in quadrature, must predict far less than 150 K."""
    survey = toy_survey(tmp_path / "s", n=480, label_error=np.full(480, 150.0))
    train(survey, tmp_path / "m", epochs=60)
    rows = np.flatnonzero(survey["frame"]["split"].eq("valid").to_numpy())
    mean, sigma = predicted(survey, tmp_path / "m", rows)
    real = np.std(mean[:, 0] - survey["frame"]["true_teff"].to_numpy()[rows])
    assert real < 110.0                          # learned through the label noise
    assert np.median(sigma[:, 0]) < 0.7 * 150.0  # and does not copy the catalogue's error
    # without the catalogue errors the head must absorb them: larger σ
    frame = survey["frame"].assign(e_teff=0.0)
    artifacts.save_table(survey["table"], frame, {"grid_hash": "toy"})
    train(survey, tmp_path / "m0", epochs=60)
    _, sigma0 = predicted(survey, tmp_path / "m0", rows)
    assert np.median(sigma0[:, 0]) > 1.3 * np.median(sigma[:, 0])


def test_degrade_adds_the_noise_it_says_and_leaves_masked_pixels():
    generator = torch.Generator().manual_seed(1)
    n, n_pixels = 64, 4000
    flux = torch.ones(n, n_pixels)
    ivar = torch.full((n, n_pixels), 100.0 ** 2)
    ivar[:, :10] = 0.0
    snr = torch.full((n,), 100.0)
    noisy, new_ivar = degrade(flux, ivar, snr, fraction=1.0, snr_min=20.0, generator=generator)
    assert torch.equal(noisy[:, :10], flux[:, :10]) and torch.equal(new_ivar[:, :10], ivar[:, :10])
    added_var = (noisy[:, 10:] - 1.0).var(dim=1)
    predicted_var = 1.0 / new_ivar[:, 10:].mean(dim=1) - 1.0 / 100.0 ** 2
    assert torch.allclose(added_var, predicted_var, rtol=0.1)
    target = 1.0 / torch.sqrt(1.0 / new_ivar[:, 10:].mean(dim=1))
    assert float(target.min()) >= 20.0 - 1e-3 and float(target.max()) <= 100.0 + 1e-3
    # same generator state, same noise; fraction 0 changes nothing
    again, _ = degrade(flux, ivar, snr, 1.0, 20.0, torch.Generator().manual_seed(1))
    assert torch.equal(again, noisy)
    same, same_ivar = degrade(flux, ivar, snr, 0.0, 20.0, torch.Generator().manual_seed(1))
    assert torch.equal(same, flux) and torch.equal(same_ivar, ivar)


def test_noise_channel_encoding_and_network():
    ivar = torch.tensor([[100.0 ** 2, 20.0 ** 2, 0.0]])
    enc = noise_encoding(ivar)
    assert torch.allclose(enc, torch.tensor([[0.0, np.log10(5.0), 2.0]], dtype=torch.float32),
                          atol=1e-5)
    model = build_model("cnn_regression", 200, 2, {"noise_channel": True})
    flux = torch.ones(3, 200)
    assert model(flux, torch.full((3, 200), 1e4)).shape == (3, 4)   # mean + log-variance
    with pytest.raises(ValueError, match="reads the noise"):
        model(flux)
    # the channel matters: a masked spectrum and a clean one give different outputs
    masked = model(flux, torch.zeros(3, 200))
    assert not torch.allclose(masked, model(flux, torch.full((3, 200), 1e4)))


def test_dropout_only_where_named():
    def dropouts(after):
        model = build_model("cnn_regression", 200, 2, {"dropout": 0.2, "dropout_after": after})
        return sum(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert dropouts([]) == 0
    assert dropouts(["conv", "dense_1", "dense_2"]) == 3
    with pytest.raises(ValueError, match="dense_9"):
        dropouts(["dense_9"])
    assert not any(isinstance(m, torch.nn.Dropout)
                   for m in build_model("cnn_regression", 200, 2, {}).modules())


def test_augmented_noise_channel_member_resumes_bit_for_bit(tmp_path):
    survey = toy_survey(tmp_path / "s", n=200)
    options = dict(epochs=6, checkpoint_every=2,
                   noise_augmentation={"fraction": 0.5, "snr_min": 20.0},
                   architecture={"noise_channel": True})
    _, reference = train(survey, tmp_path / "ref", **options)
    # interrupted during epoch 5: the checkpoint of epoch 4 is kept, the member rerun from it
    ckpt = tmp_path / "partial"
    ckpt.mkdir()
    from starlabels.cnn import train as trainer
    calls = {"n": 0}
    original = trainer.run_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    trainer.run_epoch = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train(survey, ckpt, **options)
    finally:
        trainer.run_epoch = original
    assert (ckpt / "checkpoint.pt").exists()
    _, resumed = train(survey, ckpt, **options)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_deep_ensemble_combination():
    means = np.array([[[1.0]], [[3.0]]])          # two members, one row, one label
    variances = np.array([[[4.0]], [[2.0]]])
    out = combine(means, variances)
    assert out["mean"][0, 0] == 2.0
    assert out["err_members"][0, 0] == pytest.approx(1.0)            # population std
    assert out["err_raw"][0, 0] == pytest.approx(np.sqrt(3.0 + 1.0))  # mean var + var of means


def test_calibration_scale_recovers_an_understated_sigma_through_label_noise():
    rng = np.random.default_rng(0)
    n = 3000
    sigma_raw = rng.uniform(10, 30, n)
    catalogue_error = rng.uniform(20, 60, n)         # larger than the network's error
    true_error = 3.0 * sigma_raw * rng.normal(size=n)
    residual = true_error + catalogue_error * rng.normal(size=n)
    outliers = rng.random(n) < 0.02
    residual[outliers] += rng.normal(0, 2000, outliers.sum())
    scale = fit_scale(residual, sigma_raw, catalogue_error, outlier_fraction=0.02)
    assert scale == pytest.approx(3.0, rel=0.15)
    # without the floor the outliers drag the factor up
    assert fit_scale(residual, sigma_raw, catalogue_error, 0.0) > 1.5 * scale


def test_calibrated_error_applies_the_factor_of_each_snr_bin():
    edges = snr_edges(np.arange(1, 301, dtype=float), 3)
    assert edges == pytest.approx([100.667, 200.333], rel=1e-3)
    assert snr_bin(np.array([5.0, 150.0, 250.0, np.nan]), edges).tolist() == [0, 1, 2, 0]
    calibration = {"snr_edges": edges, "scale": {"teff": [3.0, 2.0, 1.0], "logg": [1, 1, 1]}}
    err = calibrated_error(np.full((3, 2), 10.0), np.array([5.0, 150.0, 400.0]), calibration,
                           ["teff", "logg"])
    assert err[:, 0].tolist() == [30.0, 20.0, 10.0] and err[:, 1].tolist() == [10, 10, 10]
    assert np.array_equal(calibrated_error(np.ones((2, 2)), np.ones(2), None, LABELS),
                          np.ones((2, 2)))
    # too few stars for three bins: fewer bins
    assert len(snr_edges(np.arange(50, dtype=float), 3)) == 0


def test_a_bin_prior_holds_a_small_bins_factor_near_the_overall_one():
    rng = np.random.default_rng(4)
    n = 40                                            # a small bin: its own fit is loose
    sigma = np.full(n, 10.0)
    error = np.full(n, 40.0)
    residual = 2.0 * sigma * rng.normal(size=n) + error * rng.normal(size=n)
    free = fit_scale(residual, sigma, error, 0.0)
    held = fit_scale(residual, sigma, error, 0.0, prior=(2.0, 0.1))
    assert abs(np.log(held / 2.0)) < abs(np.log(free / 2.0))
    assert abs(np.log(held / 2.0)) < 0.2
    # a prior never overrides what many stars say
    n = 20000
    sigma, error = np.full(n, 10.0), np.full(n, 5.0)
    residual = 3.0 * sigma * rng.normal(size=n) + error * rng.normal(size=n)
    assert fit_scale(residual, sigma, error, 0.0, prior=(1.0, 0.25)) == pytest.approx(3.0, rel=0.05)


def test_calibrated_mean_maps_back_only_the_labels_the_calibration_scales():
    mean = np.array([[5000.0, 0.10], [6000.0, 0.30]])
    calibration = {"dilution": {"mg_fe": {"slope": 0.5, "predicted_mean": 0.2,
                                             "catalogue_mean": 0.15, "n": 100}}}
    out = calibrated_mean(mean, calibration, ["teff", "mg_fe"])
    assert out[:, 0].tolist() == [5000.0, 6000.0]
    np.testing.assert_allclose(out[:, 1], [0.15 - 0.2, 0.15 + 0.2])
    assert np.array_equal(calibrated_mean(mean, None, ["teff", "mg_fe"]), mean)
    assert np.array_equal(calibrated_mean(mean, {"scale": {}}, ["teff", "mg_fe"]), mean)


def test_ensemble_calibration_undoes_a_diluted_slope_and_fits_errors_to_the_mapped_means(
        tmp_path, monkeypatch):
    """Members whose Teff responds to the truth with slope 0.6 (what training on noisy labels
    does to a weakly measured label): with label_scale on teff the calibration finds the slope
    on the valid rows (catalogue errors deconvolved), the mapped means are unbiased at every
    true Teff, and the error factor is fitted to them; log g is left alone."""
    from starlabels.cnn import calibration as cal

    survey = toy_survey(tmp_path / "toy", n=4000, label_error=np.full(4000, 150.0))
    frame = survey["frame"]
    rng = np.random.default_rng(1)
    truth = frame["true_teff"].to_numpy()
    diluted = 5500.0 + 0.6 * (truth - 5500.0) + rng.normal(0, 60.0, len(frame))
    members = [(None, {"labels": LABELS})]
    monkeypatch.setattr(cal, "load_ensemble", lambda dirs, device: members)
    monkeypatch.setattr(cal, "reads_noise", lambda m: False)

    def outputs(_members, flux):
        # the rows come in order, a batch at a time: find them by their flux
        rows = [int(np.flatnonzero((full == f.numpy()).all(axis=1))[0]) for f in flux]
        mean = np.stack([diluted[rows], frame["logg"].to_numpy()[rows]], axis=1)[None]
        return torch.from_numpy(mean), torch.full(mean.shape, 50.0 ** 2, dtype=torch.float64)

    full = np.asarray(artifacts.load_matrix(survey["flux"]))
    monkeypatch.setattr(cal, "member_outputs", lambda m, f, v=None: outputs(m, f))
    settings = {"snr_bins": 1, "snr_prior_width": 0.25, "outlier_fraction": 0.02,
                "label_scale": {"labels": ["teff"], "outlier_sigma": 5.0}}
    (tmp_path / "member_0").mkdir()
    result = cal.calibrate_ensemble(survey["flux"], None, survey["table"],
                                    [tmp_path / "member_0"], settings,
                                    tmp_path / "calibration.json", log=lambda s: None)
    assert result["dilution"]["teff"]["slope"] == pytest.approx(0.6, rel=0.05)
    assert set(result["dilution"]) == {"teff"}
    valid = frame["split"].eq("valid").to_numpy()
    mapped = calibrated_mean(np.stack([diluted, frame["logg"]], axis=1), result, LABELS)
    residual = mapped[valid, 0] - truth[valid]
    cool, hot = truth[valid] < 4800, truth[valid] > 6200
    assert abs(residual[cool].mean()) < 25 and abs(residual[hot].mean()) < 25
    # the error factor is fitted to the mapped means: 60 K / 0.6 = 100 K against raw 50 K
    assert result["scale"]["teff"][0] == pytest.approx(2.0, rel=0.15)
    assert result["coverage68"]["teff"]["after"] == pytest.approx(0.68, abs=0.05)
    # the valid split's own bootstrap interval of the factor holds it
    low, high = result["scale_overall_ci95"]["teff"]
    assert low < result["scale_overall"]["teff"] < high and high - low < 0.5


def test_the_prior_width_pools_bins_that_agree_and_frees_bins_that_differ():
    """Type-II maximum likelihood τ: three S/N bins drawn with one factor share it (τ at its
    lower bound, each bin's factor the label's); bins drawn with factors 1, 2 and 4 get a wide
    τ and keep their own."""
    from starlabels.cnn.calibration import PRIOR_WIDTH_BOUNDS, fit_prior_width

    rng = np.random.default_rng(11)

    def groups(factors, n=400):
        out = []
        for a in factors:
            sigma, error = np.full(n, 10.0), np.full(n, 20.0)
            out.append((a * sigma * rng.normal(size=n) + error * rng.normal(size=n), sigma,
                        error))
        return out

    same = groups([2.0, 2.0, 2.0])
    pooled = fit_scale(np.concatenate([g[0] for g in same]), np.concatenate([g[1] for g in same]),
                       np.concatenate([g[2] for g in same]), 0.0)
    tau = fit_prior_width(same, pooled, 0.0)
    assert tau < 0.05
    held = [fit_scale(*g, 0.0, prior=(pooled, tau)) for g in same]
    assert max(abs(np.log(f / pooled)) for f in held) < 0.02
    apart = groups([1.0, 2.0, 4.0])
    pooled = fit_scale(np.concatenate([g[0] for g in apart]),
                       np.concatenate([g[1] for g in apart]),
                       np.concatenate([g[2] for g in apart]), 0.0)
    tau = fit_prior_width(apart, pooled, 0.0)
    assert 0.3 < tau <= PRIOR_WIDTH_BOUNDS[1]
    own = [fit_scale(*g, 0.0, prior=(pooled, tau)) for g in apart]
    assert own == pytest.approx([1.0, 2.0, 4.0], rel=0.2)
    # one bin: nothing to compare, the label's factor
    assert fit_prior_width(apart[:1], pooled, 0.0) == PRIOR_WIDTH_BOUNDS[0]
