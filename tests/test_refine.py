"""The refine stage: the emulator learns a known smooth spectral function, the batched fit
recovers labels with the noise-limited precision its formal errors claim, the χ² flag fires on
defects, censoring confines abundance ratios to their lines, the calibration recovers known
stretches and error scales, and a shard job writes every star in catalogue order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from starlabels import artifacts
from starlabels.grid import WavelengthGrid
from starlabels.refine import calibration as cal
from starlabels.refine.emulator import (PayneEmulator, deconvolved_quadratic_terms,
                                        weighted_normal_solve)
from starlabels.refine.fit import Nuisances, fit_spectra
from starlabels.refine.jobs import load_emulator, refine_job, save_emulator
from starlabels.refine.train import (TrainingSet, censored_pixels, latent_scores,
                                     train_emulator)

SEGMENTS = [{"name": "HR10", "start": 5000.0, "end": 5019.9, "step": 0.1},
            {"name": "HR21", "start": 8500.0, "end": 8519.9, "step": 0.1}]
GRID = WavelengthGrid.from_config(SEGMENTS)
WAVE = GRID.wavelength_air
CENTRES = np.array([5003.0, 5008.0, 5012.5, 5017.0, 8503.0, 8507.0, 8511.0, 8516.0])
LABELS = ["teff", "logg", "fe_h"]
LOW, HIGH = np.array([4000.0, 1.0, -1.5]), np.array([7000.0, 5.0, 0.5])
NOISE = 0.005
EMULATOR_CFG = {"kind": "payne", "hidden": [64, 64], "n_basis": 16, "element_basis": 6,
                "censor": False, "line_half_width": 1.0, "pretrain_epochs": 150,
                "finetune_epochs": 5, "batch_size": 128, "learning_rate": 3e-3,
                "finetune_learning_rate": 1e-3, "ridge": 1e-8, "clip_sigma": 5.0,
                "scatter_rounds": 2, "deconvolve_label_errors": False, "seed": 0,
                "latent_nuisances": 0, "latent_first_pretrain_epochs": 50}
FIT = {"max_iterations": 30, "chi2_tolerance": 0.01, "label_margin": 0.1}


def physical(x: np.ndarray) -> np.ndarray:
    return LOW + (np.asarray(x) + 1) / 2 * (HIGH - LOW)


def true_flux(x: np.ndarray, microturbulence: np.ndarray | float = 0.0) -> np.ndarray:
    """A smooth, non-linear spectrum of scaled labels: Gaussian lines whose depths and widths
    move with the labels (the third label acts on every other line); ``microturbulence`` (per
    star, −1 … 1) deepens some lines and not others, a nuisance no label gives."""
    x = np.atleast_2d(x)
    every_other = np.array([[1, 0] * 4])
    depth = (0.35 + 0.15 * x[:, [0]] + 0.08 * x[:, [1]] ** 2 + 0.05 * x[:, [2]] * every_other
             + 0.04 * x[:, [0]] * x[:, [2]])
    strong = np.array([[1, 0, 0, 1, 1, 0, 0, 1]])
    depth = depth * (1 + 0.3 * np.reshape(microturbulence, (-1, 1)) * strong)
    width = 0.25 + 0.05 * x[:, [1]]
    profile = np.exp(-0.5 * ((WAVE[None, None] - CENTRES[None, :, None])
                             / width[:, :, None]) ** 2)
    return 1 - np.sum(depth[:, :, None] * profile, axis=1)


def as_t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


@pytest.fixture(scope="module")
def trained():
    """A Payne emulator trained on 600 noisy spectra of :func:`true_flux`."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (600, 3))
    flux = true_flux(x) + rng.normal(0, NOISE, (600, WAVE.size))
    data = TrainingSet(as_t(flux), as_t(np.full_like(flux, NOISE ** -2)), as_t(physical(x)),
                       as_t(np.full_like(x, 1e-6)))
    emulator, history, summary = train_emulator(data, None, EMULATOR_CFG, labels=LABELS,
                                                wavelength=WAVE, lines=None, log=lambda m: None)
    return emulator, history, summary


def nuisances() -> Nuisances:
    return Nuisances.build(WAVE, list(GRID.segment_slices.values()), 1, True,
                           torch.device("cpu"))


def generated(emulator, x: np.ndarray, rng: np.random.Generator, sigma: float):
    """Spectra of the emulator itself at scaled labels ``x``, with a continuum tilt, an RV shift
    and Gaussian noise σ."""
    nuis = nuisances()
    with torch.no_grad():
        flux = emulator(as_t(x))
        cont = as_t(rng.normal(0, 0.01, (len(x), nuis.n_continuum)))
        rv = as_t(rng.normal(0, 0.5, (len(x), 1)))
        model = (flux + rv * nuis.shift_derivative(flux)) * (1 + cont @ nuis.continuum)
    return model.numpy() + rng.normal(0, sigma, model.shape)


def test_emulator_recovers_a_known_smooth_function(trained):
    emulator, history, summary = trained
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.9, 0.9, (200, 3))
    with torch.no_grad():
        pred = emulator(emulator.scale(as_t(physical(x)))).numpy()
    err = pred - true_flux(x)
    # 600 noisy spectra pin the function down far below the noise of one spectrum
    assert np.sqrt(np.mean(err ** 2)) < 0.3 * NOISE
    assert np.abs(err).max() < 3 * NOISE
    assert set(history["phase"]) == {"coefficients", "joint"}
    assert summary["train_chi2_red_median"] == pytest.approx(1.0, abs=0.1)


def test_quadratic_emulator_recovers_a_quadratic_function():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (400, 3))
    coef = rng.normal(0, 0.02, (10, WAVE.size))
    features = np.column_stack([np.ones(len(x)), x, x[:, [0, 0, 0, 1, 1, 2]]
                                * x[:, [0, 1, 2, 1, 2, 2]]])
    flux = 1 + features @ coef + rng.normal(0, NOISE, (400, WAVE.size))
    data = TrainingSet(as_t(flux), as_t(np.full_like(flux, NOISE ** -2)), as_t(physical(x)),
                       as_t(np.full_like(x, 1e-6)))
    emulator, _, _ = train_emulator(data, None, dict(EMULATOR_CFG, kind="quadratic"),
                                    labels=LABELS, wavelength=WAVE, lines=None,
                                    log=lambda m: None)
    xt = rng.uniform(-1, 1, (50, 3))
    ft = np.column_stack([np.ones(50), xt, xt[:, [0, 0, 0, 1, 1, 2]] * xt[:, [0, 1, 2, 1, 2, 2]]])
    with torch.no_grad():
        pred = emulator(emulator.scale(as_t(physical(xt)))).numpy()
    assert np.sqrt(np.mean((pred - 1 - ft @ coef) ** 2)) < 0.2 * NOISE


def test_latent_nuisance_learns_what_the_labels_do_not_give_and_frees_the_fit():
    """Spectra with a hidden microturbulence: the emulator's latent input follows it, and fits
    with the latent free are far more precise than with an emulator of the labels alone,
    whose fits move the labels to mimic it."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (500, 3))
    hidden = rng.uniform(-1, 1, 500)
    flux = true_flux(x, hidden) + rng.normal(0, NOISE, (500, WAVE.size))
    data = TrainingSet(as_t(flux), as_t(np.full_like(flux, NOISE ** -2)), as_t(physical(x)),
                       as_t(np.full_like(x, 1e-6)))
    xt = rng.uniform(-0.8, 0.8, (150, 3))
    test = true_flux(xt, rng.uniform(-1, 1, 150)) + rng.normal(0, NOISE, (150, WAVE.size))
    nuis = Nuisances.build(WAVE, list(GRID.segment_slices.values()), None, False,
                           torch.device("cpu"))
    spread = {}
    for n_latent in (0, 1):
        emulator, history, summary = train_emulator(
            data, None, dict(EMULATOR_CFG, latent_nuisances=n_latent), labels=LABELS,
            wavelength=WAVE, lines=None, log=lambda m: None)
        assert emulator.n_labels == 3 + n_latent
        assert len(summary["latent_variance_share"]) == n_latent
        res = fit_spectra(emulator, as_t(test), as_t(np.full_like(test, NOISE ** -2)),
                          as_t(physical(xt)), nuis, **FIT)
        assert res.labels.shape == (150, 3) and res.covariance.shape == (150, 3, 3)
        spread[n_latent] = np.std((res.labels - physical(xt)) / (HIGH - LOW), axis=0)
    assert any(h.startswith("labels_only_") for h in history["phase"])
    # the first component of the labels-only residuals is the microturbulence
    first, _, _ = train_emulator(data, None, dict(EMULATOR_CFG, latent_nuisances=0),
                                 labels=LABELS, wavelength=WAVE, lines=None, log=lambda m: None)
    scores, share = latent_scores(first, data.flux, data.ivar, first.scale(data.labels), 1, 5.0)
    assert abs(np.corrcoef(scores[:, 0].numpy(), hidden)[0, 1]) > 0.9
    assert scores[:, 0].std().item() == pytest.approx(1.0, rel=0.01) and 0 < share[0] < 1
    # labels-only fits move every label to mimic the nuisance (0.018 / 0.023 / 0.029 of the
    # range here); with the latent free: 0.010 / 0.010 / 0.019
    assert np.all(spread[1] < 0.75 * spread[0]) and spread[1].sum() < 0.65 * spread[0].sum(), \
        spread


def test_fit_recovers_labels_with_the_noise_limited_precision(trained):
    """Spectra the emulator itself made, with continuum, RV and noise: the fitted labels scatter
    about the truth as the formal errors say (z spread ≈ 1, no bias)."""
    emulator, _, _ = trained
    with torch.no_grad():
        emulator.log_s2.fill_(np.log(1e-12))     # the data have no model scatter
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.8, 0.8, (300, 3))
    sigma = 0.01
    flux = generated(emulator, x, rng, sigma)
    start = physical(np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1))
    res = fit_spectra(emulator, as_t(flux), as_t(np.full_like(flux, sigma ** -2)), as_t(start),
                      nuisances(), **FIT)
    z = (res.labels - physical(x)) / res.errors
    assert res.converged.mean() >= 0.9
    assert np.all(np.abs(z.std(axis=0) - 1) < 0.15), z.std(axis=0)
    assert np.all(np.abs(z.mean(axis=0)) < 0.2), z.mean(axis=0)
    assert np.median(res.chi2_red) == pytest.approx(1.0, abs=0.05)
    # the best-fit model reproduces the data to the noise
    assert np.sqrt(np.mean((res.model - flux) ** 2)) == pytest.approx(sigma, rel=0.05)


def test_prior_pulls_toward_its_mean_where_the_spectrum_is_noisy(trained):
    emulator, _, _ = trained
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.5, 0.5, (40, 3))
    sigma = 0.3                                   # nearly no information in the spectrum
    flux = generated(emulator, x, rng, sigma)
    mean = physical(np.zeros_like(x))
    tight = np.tile((HIGH - LOW) * 0.001, (len(x), 1))
    res = fit_spectra(emulator, as_t(flux), as_t(np.full_like(flux, sigma ** -2)), as_t(mean),
                      nuisances(), prior_mean=as_t(mean), prior_sigma=as_t(tight), **FIT)
    assert np.all(np.abs(res.labels - mean) < 3 * tight)
    assert np.all(res.errors < 1.01 * tight)


def test_chi2_flag_fires_on_defective_spectra(trained):
    emulator, _, _ = trained
    rng = np.random.default_rng(6)
    x = rng.uniform(-0.8, 0.8, (80, 3))
    sigma = 0.01
    flux = generated(emulator, x, rng, sigma)
    flux[0, rng.choice(WAVE.size, 6, replace=False)] += 0.5               # cosmic rays
    flux[1] += 0.3 * np.exp(-0.5 * ((WAVE - CENTRES[2]) / 0.3) ** 2)      # an emission core
    companion = np.roll(generated(emulator, -x[3:4], rng, 0)[0], 8)  # 0.8 Å off: a binary
    flux[2] += 0.4 * (companion - 1)
    res = fit_spectra(emulator, as_t(flux), as_t(np.full_like(flux, sigma ** -2)),
                      as_t(physical(x)), nuisances(), **FIT)
    threshold = cal.chi2_threshold(res.chi2_red, 6.0)
    assert np.all(res.chi2_red[:3] > threshold), (res.chi2_red[:3], threshold)
    assert np.all(res.chi2_red[3:] <= threshold)


def test_censored_ratio_moves_only_its_element_pixels():
    lines = pd.DataFrame({"element": ["Mg", "Fe", "Mg"], "wavelength_air": [5008.0, 5012.5,
                                                                            8511.0]})
    labels = ["teff", "fe_h", "mg_fe"]
    masks = censored_pixels(labels, WAVE, lines, 0.5)
    assert list(masks) == [2]
    assert masks[2].sum() == 2 * 11 and masks[2][np.abs(WAVE - 5008.0) <= 0.5].all()
    emulator = PayneEmulator(3, WAVE.size, LOW, HIGH, hidden=[8],
                             blocks=[{"labels": [0, 1], "n_basis": 4},
                                     {"labels": [0, 1, 2], "n_basis": 3}],
                             pixel_masks=[None, masks[2]])
    torch.nn.init.normal_(emulator.readout.weight)
    emulator.apply_mask()
    _, jac = emulator.flux_and_jacobian(torch.zeros((2, 3)) + 0.1)
    assert torch.all(jac[:, 2, ~torch.as_tensor(masks[2])] == 0)
    assert torch.any(jac[:, 2, torch.as_tensor(masks[2])] != 0)
    assert torch.any(jac[:, 0, ~torch.as_tensor(masks[2])] != 0)


def test_deconvolved_least_squares_undoes_the_label_noise_dilution():
    rng = np.random.default_rng(7)
    n = 20000
    true = rng.normal(0, 0.5, (n, 1))
    err = rng.uniform(0.2, 0.4, (n, 1))
    noisy = true + rng.normal(0, 1, (n, 1)) * err
    y = 1 + 0.5 * true + 0.3 * true ** 2 + rng.normal(0, 0.01, (n, 1))
    weight = torch.ones((n, 1), dtype=torch.float32)
    plain = torch.cat([torch.ones((n, 1)), as_t(noisy), as_t(noisy) ** 2], dim=1)
    naive = weighted_normal_solve(plain, plain[:, :, None] * plain[:, None, :], as_t(y), weight,
                                  0.0)[:, 0].numpy()
    terms, products = deconvolved_quadratic_terms(as_t(noisy), as_t(err ** 2))
    fixed = weighted_normal_solve(terms, products, as_t(y), weight, 0.0)[:, 0].numpy()
    assert naive[1] < 0.45                       # diluted by the label noise
    np.testing.assert_allclose(fixed, [1.0, 0.5, 0.3], atol=0.03)


def test_label_scale_and_error_model_recover_known_values():
    rng = np.random.default_rng(8)
    n = 3000
    true = rng.normal(0.05, 0.12, n)
    e = rng.uniform(0.03, 0.06, n)
    catalogue = true + rng.normal(0, 1, n) * e
    formal = rng.uniform(0.01, 0.04, n)
    refined = 0.02 + 1.3 * (true - 0.05) + 0.05 + rng.normal(0, 1, n) * 2.0 * formal * 1.3
    scale = cal.label_scale(refined, catalogue, e, 5.0)
    assert scale["slope"] == pytest.approx(1.3, rel=0.05)
    back = cal.apply_scale(refined, scale)
    assert np.mean(back - true) == pytest.approx(0.0, abs=0.005)
    model = cal.error_model(back - catalogue, formal, e, 5.0)
    assert model["a"] == pytest.approx(2.0, rel=0.1)
    assert model["b"] < 0.01
    errors = cal.calibrated_errors(formal * scale["slope"], model, scale["slope"])
    assert np.mean(np.abs(back - true) <= errors) == pytest.approx(0.68, abs=0.03)


def test_error_correlation_with_the_network_is_recovered_under_shared_catalogue_noise():
    """Two estimates whose errors correlate at ρ = 0.4, judged against catalogue labels with
    noise larger than either: ρ comes back once the shared noise is deconvolved, and the
    combination's σ and stated error follow from it."""
    rng = np.random.default_rng(9)
    n = 4000
    sn, sr = rng.uniform(0.02, 0.04, n), rng.uniform(0.02, 0.05, n)
    z1, z2 = rng.normal(0, 1, (2, n))
    net_err = sn * z1
    ref_err = sr * (0.4 * z1 + np.sqrt(1 - 0.4 ** 2) * z2)
    e = rng.uniform(0.04, 0.08, n)
    noise = e * rng.normal(0, 1, n)
    fit = cal.fit_correlation(net_err - noise, sn, ref_err - noise, sr, e, 5.0)
    assert fit["rho"] == pytest.approx(0.4, abs=0.1)
    naive = np.corrcoef(net_err - noise, ref_err - noise)[0, 1]
    assert naive > 0.7                            # the shared catalogue noise, not deconvolved
    value, error = cal.combine(net_err, sn, ref_err, sr, fit["rho"])
    assert np.std(value) < 0.9 * min(np.std(net_err), np.std(ref_err))
    assert np.mean(np.abs(value) <= error) == pytest.approx(0.68, abs=0.03)
    kept, kept_err = cal.combine(net_err[:3], sn[:3], np.full(3, np.nan), sr[:3], 0.4)
    np.testing.assert_allclose(kept, net_err[:3])
    np.testing.assert_allclose(kept_err, sn[:3])


def test_emulator_folder_round_trip(trained, tmp_path):
    emulator, history, _ = trained
    meta = {"kind": emulator.kind, "labels": LABELS, "n_pixels": WAVE.size,
            "label_low": LOW.tolist(), "label_high": HIGH.tolist(), "latent_nuisances": 0,
            "architecture": emulator.architecture(), "training_set_hash": "abc"}
    save_emulator(tmp_path / "em", emulator, meta, history)
    loaded, side = load_emulator(tmp_path / "em", torch.device("cpu"))
    x = torch.rand((5, 3)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), emulator(x))
    assert side["training_set_hash"] == "abc" and (tmp_path / "em" / "history.csv").exists()
    artifacts.save_json(tmp_path / "em" / "model.json", dict(meta, training_set_hash="other"))
    with pytest.raises(ValueError, match="different runs"):
        load_emulator(tmp_path / "em", torch.device("cpu"))


def test_refine_job_writes_every_star_in_order_with_its_flag(trained, tmp_path):
    """A shard of 10 stars: one without network labels (noted, not fitted), one with cosmic
    rays (flagged); rows, ids and model spectra in catalogue order."""
    emulator, history, _ = trained
    rng = np.random.default_rng(9)
    n, sigma = 23, 0.01
    x = rng.uniform(-0.7, 0.7, (n, 3))
    flux = generated(emulator, x, rng, sigma).astype(np.float32)
    ivar = np.full_like(flux, sigma ** -2)
    ivar[:, :3] = 0.0                                            # masked pixels
    flux[15, rng.choice(WAVE.size, 6, replace=False)] += 0.5
    artifacts.save_matrix(tmp_path / "flux.npy", flux)
    artifacts.save_matrix(tmp_path / "ivar.npy", ivar)
    ids = [f"s{i:02d}" for i in range(n)]
    artifacts.save_table(tmp_path / "stars.parquet", pd.DataFrame({"spectrum_id": ids}),
                         {"grid_hash": GRID.hash()})
    shard, n_shards = 1, 2                                       # rows 12..22
    rows = np.arange(12, 23)
    pred = pd.DataFrame({"spectrum_id": [ids[r] for r in rows], "row": rows})
    for k, label in enumerate(LABELS):
        pred[label] = physical(x)[rows, k]
        pred[f"{label}_err"] = 0.01 * (HIGH - LOW)[k]
    pred.loc[2, "teff"] = np.nan                                 # row 14
    artifacts.save_table(tmp_path / "pred.parquet", pred)
    meta = {"kind": emulator.kind, "labels": LABELS, "n_pixels": WAVE.size,
            "label_low": LOW.tolist(), "label_high": HIGH.tolist(), "latent_nuisances": 0,
            "architecture": emulator.architecture(), "training_set_hash": "h",
            "grid_hash": GRID.hash(), "grid": {"segments": SEGMENTS}}
    save_emulator(tmp_path / "em", emulator, meta, history)
    calib = {"emulator_training_set_hash": "h", "chi2_red_threshold": 3.0,
             "labels": {label: {"scale": {"slope": 1.0, "predicted_mean": 0.0,
                                          "catalogue_mean": 0.0},
                                "errors": {"a": 2.0, "b": 0.0},
                                "combination": {"rho": 0.0, "n": 100}} for label in LABELS}}
    artifacts.save_json(tmp_path / "cal.json", calib)
    cfg = {"device": "cpu", "fit": dict(FIT, continuum_order=1, rv=True, prior="none",
                                        prior_scale=3.0, batch_size=4)}
    n_fit = refine_job(emulator_dir=tmp_path / "em", calibration=tmp_path / "cal.json",
                       flux=tmp_path / "flux.npy", ivar=tmp_path / "ivar.npy",
                       table=tmp_path / "stars.parquet", prediction=tmp_path / "pred.parquet",
                       shard=shard, n_shards=n_shards, labels=LABELS, cfg=cfg,
                       out_table=tmp_path / "out.parquet", out_models=tmp_path / "models.npy",
                       log=lambda m: None, threads=1, metadata={"stage": "refine"})
    out = artifacts.load_table(tmp_path / "out.parquet")
    models = artifacts.load_matrix(tmp_path / "models.npy")
    assert n_fit == 10 and out["row"].tolist() == rows.tolist()
    assert out["spectrum_id"].tolist() == [ids[r] for r in rows]
    assert models.shape == (11, WAVE.size) and models.dtype == np.float32
    missing = out["row"] == 14
    assert out.loc[missing, "refine_note"].iloc[0].startswith("network labels not finite")
    assert np.isnan(models[2]).all() and not out.loc[missing, "refine_converged"].iloc[0]
    fitted = ~missing
    assert (out.loc[fitted, "refine_note"] == "").all() and np.isfinite(models[~missing]).all()
    assert out.loc[out["row"] == 15, "refine_unlike_training"].iloc[0]
    good = fitted & (out["row"] != 15)
    assert not out.loc[good, "refine_unlike_training"].any()
    np.testing.assert_allclose(out.loc[good, "teff_refined_err"],
                               2.0 * out.loc[good, "teff_refined_err_formal"], rtol=1e-6)
    # uncorrelated errors: the inverse-variance mean of the network's and the refined label;
    # the flagged star keeps the network's label and error
    net, net_err = pred.set_index("row").loc[out["row"], "logg"].to_numpy(), \
        0.01 * (HIGH - LOW)[1]
    ref, ref_err = out["logg_refined"].to_numpy(), out["logg_refined_err"].to_numpy()
    w = ref_err ** 2 / (net_err ** 2 + ref_err ** 2)
    np.testing.assert_allclose(out.loc[good, "logg_combined"], (w * net + (1 - w) * ref)[good],
                               rtol=1e-6)
    np.testing.assert_allclose(out.loc[good, "logg_combined_err"],
                               np.sqrt(w * net_err ** 2)[good], rtol=1e-6)
    flagged = out["row"] == 15
    assert out.loc[flagged, "logg_combined"].iloc[0] == pytest.approx(net[flagged][0])
    assert out.loc[flagged, "logg_combined_err"].iloc[0] == pytest.approx(net_err)
    err = out.loc[good, [f"{k}_refined" for k in LABELS]].to_numpy() - physical(x)[rows][good]
    assert np.all(np.abs(err) < 5 * out.loc[good, [f"{k}_refined_err_formal" for k in LABELS]]
                  .to_numpy())


def test_flag_rates_count_either_chi2_bit_and_judge_both_against_the_targets():
    from starlabels.catalog import FLAG_BITS, FLAG_COLUMN
    from starlabels.refine.report import CHI2_BITS, check_targets, flag_rates

    poor, mismatch = FLAG_BITS["REFINE_POOR_FIT"], FLAG_BITS["CATALOGUE_MISMATCH"]
    sub = pd.DataFrame({
        "defect": ["cosmic_rays", "label_mismatch", "label_mismatch", "zeroed_run", "", "", "", ""],
        FLAG_COLUMN: [poor, mismatch, 0, 0, 0, 0, mismatch, FLAG_BITS["LOW_SNR"]]})
    alone, both = flag_rates(sub), flag_rates(sub, CHI2_BITS)
    assert alone["defective_flagged_fraction"] == 0.25 and alone["good_flagged_fraction"] == 0.0
    assert both["defective_flagged_fraction"] == 0.5 and both["good_flagged_fraction"] == 0.25
    assert both["per_defect"]["label_mismatch"] == {"n": 2, "flagged_fraction": 0.5}
    targets = {"sigma_ratio": {}, "coverage68": None, "flagged_defective_min": 0.5,
               "flagged_good_max": 0.05}
    out = check_targets({}, {**alone, "with_catalogue": both}, targets)
    assert not out["defective_flagged_fraction"]["met"] and out["good_flagged_fraction"]["met"]
    assert out["defective_flagged_fraction_with_catalogue"]["met"]
    assert not out["good_flagged_fraction_with_catalogue"]["met"]
