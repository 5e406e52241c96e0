"""deep-REMAP parts, each shown to do what it claims on small data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from starlabels import artifacts
from starlabels.models import build_model
from starlabels.remap.bins import LabelBins, gaussian_targets, label_bins, summarize
from starlabels.remap.calibration import (bin_likelihoods, expected_calibration_error,
                                          fit_temperature, interval_coverage, nll, pit,
                                          reliability_curve)
from starlabels.remap.losses import cost_matrix, focal_cost_loss, triplet_loss
from starlabels.remap.train import WeightAverager, variant_config

TEFF = LabelBins("teff", 4000.0, 7000.0, 50.0)


# ---------------------------------------------------------------- bins

def test_bins_cover_range_and_index_clips():
    assert TEFF.n_bins == 60
    assert TEFF.centres[0] == 4025.0 and TEFF.centres[-1] == 6975.0
    assert TEFF.index([3000.0, 4000.0, 4049.9, 4050.0, 9000.0]).tolist() == [0, 0, 0, 1, 59]
    with pytest.raises(ValueError, match="no range for label"):
        label_bins(["teff", "logg"], {"teff": [4000, 7000, 50]})


def test_summarize_gaussian_distribution():
    true_mean, true_sigma = 5512.0, 120.0
    c = TEFF.centres
    p = np.exp(-0.5 * ((c - true_mean) / true_sigma) ** 2)[None, :]
    s = summarize(p / p.sum(), TEFF)
    assert s["mean"][0] == pytest.approx(true_mean, abs=1.0)
    # the bin width adds w²/12 to the variance of a binned Gaussian
    assert s["std"][0] == pytest.approx(np.hypot(true_sigma, 50 / np.sqrt(12)), rel=0.02)
    assert s["q16"][0] == pytest.approx(true_mean - true_sigma, abs=10)
    assert s["q84"][0] == pytest.approx(true_mean + true_sigma, abs=10)


def test_one_bin_distribution_is_not_exact():
    p = np.zeros((1, TEFF.n_bins))
    p[0, 10] = 1.0
    s = summarize(p, TEFF)
    assert s["mean"][0] == TEFF.centres[10]
    assert s["std"][0] == pytest.approx(50 / np.sqrt(12))
    assert TEFF.edges[10] <= s["q16"][0] < s["q84"][0] <= TEFF.edges[11]


def test_gaussian_targets_normalised_and_centred():
    centres = torch.as_tensor(TEFF.centres, dtype=torch.float32)
    t = gaussian_targets(torch.tensor([5000.0, 5020.0]), centres, 50.0)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert (t @ centres).tolist() == pytest.approx([5000.0, 5020.0], abs=0.5)


# ---------------------------------------------------------------- losses

def _peaked_logits(n_bins: int, peak: int, height: float = 12.0) -> torch.Tensor:
    logits = torch.zeros(1, n_bins)
    logits[0, peak] = height
    return logits


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_cost_matrix_loss_ranks_near_miss_below_far_miss(gamma):
    centres = torch.as_tensor(TEFF.centres, dtype=torch.float32)
    true_bin = 30
    value = centres[true_bin:true_bin + 1]
    losses = [float(focal_cost_loss(_peaked_logits(60, true_bin + d), value, centres, 50.0,
                                    gamma=gamma, target_sigma_bins=1.0, cost_weight=1.0,
                                    cost_sigma_bins=2.0))
              for d in (0, 1, 3, 10)]
    assert losses[0] < losses[1] < losses[2] < losses[3]
    # without the cost term the two confident misses (3 and 10 bins off) cost the same:
    # this is what the cost matrix adds
    plain = [float(focal_cost_loss(_peaked_logits(60, true_bin + d), value, centres, 50.0,
                                   gamma=gamma, target_sigma_bins=0.2, cost_weight=0.0))
             for d in (3, 10)]
    assert plain[0] == pytest.approx(plain[1], rel=1e-4)


def test_cost_matrix_shape():
    c = cost_matrix(5, 1.0)
    assert torch.all(torch.diagonal(c) == 0)
    assert c[0, 1] < c[0, 2] < c[0, 4] < 1
    assert torch.allclose(c, c.T)


def test_focal_term_downweights_easy_examples():
    centres = torch.as_tensor(TEFF.centres, dtype=torch.float32)
    value = centres[30:31]
    easy = _peaked_logits(60, 30, 6.0)
    ce = float(focal_cost_loss(easy, value, centres, 50.0, gamma=0.0, cost_weight=0.0))
    focal = float(focal_cost_loss(easy, value, centres, 50.0, gamma=2.0, cost_weight=0.0))
    assert focal < ce


def test_triplet_loss_shrinks_same_label_distances():
    torch.manual_seed(0)
    # 3 label groups; the inputs carry the label weakly, buried in noise
    labels = torch.tensor([0.1] * 8 + [0.5] * 8 + [0.9] * 8).unsqueeze(1)
    x = torch.randn(24, 16) + 0.3 * labels
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def ratio():
        with torch.no_grad():
            e = nn.functional.normalize(net(x), dim=1)
            d = torch.cdist(e, e)
            same = (torch.cdist(labels, labels) < 1e-6) & ~torch.eye(24, dtype=torch.bool)
            return float(d[same].mean() / d[~same & ~torch.eye(24, dtype=torch.bool)].mean())

    before = ratio()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for mining in ["batch_hard"] * 30 + ["semi_hard"] * 30:
        loss = triplet_loss(net(x), labels, margin=0.3, mining=mining, positive_radius=0.05,
                            negative_radius=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = ratio()
    assert after < 0.7 * before, (before, after)


def test_triplet_loss_without_valid_triplets_is_zero_with_gradient():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = triplet_loss(emb, torch.zeros(4, 1), positive_radius=0.05, negative_radius=0.2)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert emb.grad is not None
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(emb, torch.zeros(4, 1), mining="random")


# ---------------------------------------------------------------- calibration

def _overconfident(n: int, seed: int):
    """A 'model' whose logits point at a noisy estimate (σ = 150 K) but are far too sharp."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(4500, 6500, n)
    estimate = truth + rng.normal(0, 150, n)
    c = TEFF.centres
    logits = -0.5 * ((c[None, :] - estimate[:, None]) / 30.0) ** 2   # claims σ = 30 K
    return logits, truth


def test_temperature_scaling_fixes_an_overconfident_model():
    logits_cal, truth_cal = _overconfident(2000, 1)
    logits_test, truth_test = _overconfident(2000, 2)
    t = fit_temperature(logits_cal, bin_likelihoods(truth_cal, TEFF))
    assert t > 3.0      # claimed 30 K vs actual 150 K: needs a much softer distribution
    like = torch.from_numpy(bin_likelihoods(truth_test, TEFF))
    lg = torch.from_numpy(logits_test)
    assert float(nll(lg, like, t)) < float(nll(lg, like, 1.0)) - 0.5
    p_before = torch.softmax(lg, 1).numpy()
    p_after = torch.softmax(lg / t, 1).numpy()
    hard = TEFF.index(truth_test)
    ece_before = expected_calibration_error(p_before, hard)
    ece_after = expected_calibration_error(p_after, hard)
    assert ece_after < 0.5 * ece_before
    cov_before = interval_coverage(pit(p_before, TEFF, truth_test))["0.68"]
    cov_after = interval_coverage(pit(p_after, TEFF, truth_test))["0.68"]
    assert cov_before < 0.4 and 0.6 <= cov_after <= 0.76


def test_label_error_aware_calibration_does_not_absorb_catalogue_noise():
    """Fitting T to noisy labels widens intervals unless the label errors are deconvolved."""
    rng = np.random.default_rng(3)
    truth = rng.uniform(4500, 6500, 3000)
    estimate = truth + rng.normal(0, 60, truth.size)
    logits = -0.5 * ((TEFF.centres[None, :] - estimate[:, None]) / 60.0) ** 2  # honest σ = 60 K
    label_err = np.full(truth.size, 120.0)
    observed = truth + rng.normal(0, label_err)
    t_naive = fit_temperature(logits, bin_likelihoods(observed, TEFF))
    t_aware = fit_temperature(logits, bin_likelihoods(observed, TEFF, label_err))
    assert t_naive > 1.8          # blown up to cover the 120 K catalogue noise
    assert 0.75 < t_aware < 1.3   # recovers the honest width


def test_reliability_curve_counts():
    prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    curve = reliability_curve(prob, np.array([0, 1, 1]), n_bins=5)
    assert curve["count"].sum() == 3
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 4), np.zeros(4, int)) == 0.0


def test_pit_uniform_for_calibrated_gaussians():
    rng = np.random.default_rng(4)
    mu = rng.uniform(4500, 6500, 3000)
    truth = mu + rng.normal(0, 100, mu.size)
    p = np.exp(-0.5 * ((TEFF.centres[None, :] - mu[:, None]) / 100.0) ** 2)
    cov = interval_coverage(pit(p, TEFF, truth))
    assert cov["0.68"] == pytest.approx(0.68, abs=0.04)
    assert cov["0.95"] == pytest.approx(0.95, abs=0.03)


# ---------------------------------------------------------------- SWA and the network

def test_swa_average_equals_mean_of_snapshots():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    averager = WeightAverager(model)
    snapshots = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in model.named_parameters()})
        averager.update(model)
    averaged = averager.finalize([torch.randn(16, 4) for _ in range(3)])
    for name, param in averaged.named_parameters():
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(param, mean, atol=1e-6), name
    # BatchNorm statistics were recomputed for the averaged weights
    assert int(averaged[1].num_batches_tracked) > 0


def test_resnet_shapes_groups_and_projection_blocks():
    model = build_model("deep_remap", 500, 3, {"n_bins": [60, 50, 40],
                                               "stage_channels": [8, 16, 32],
                                               "blocks_per_stage": [1, 2, 1]})
    logits, emb = model(torch.ones(4, 500))
    assert [tuple(lg.shape) for lg in logits] == [(4, 60), (4, 50), (4, 40)]
    assert emb.shape == (4, 32)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "ResidualBlock"]
    assert [b.projection for b in blocks] == [True, True, False, True]  # 1 → 8 widens, then ids
    assert set(model.parameter_groups()) == {"stem", "stage1", "stage2", "stage3", "neck",
                                             "embedding", "heads"}
    with pytest.raises(ValueError, match="one bin count per label"):
        build_model("deep_remap", 500, 2, {"n_bins": [10]})


def test_variant_config_switches_one_part_off():
    cfg = {"pretrain": {"enabled": True}, "finetune": {"enabled": True},
           "triplet": {"weight": 0.1}, "swa": {"enabled": True}}
    assert variant_config(cfg, "no_pretrain")["pretrain"]["enabled"] is False
    assert variant_config(cfg, "pretrain_only")["finetune"]["enabled"] is False
    assert variant_config(cfg, "no_triplet")["triplet"]["weight"] == 0.0
    assert variant_config(cfg, "no_swa")["swa"]["enabled"] is False
    assert variant_config(cfg, "full") == cfg
    with pytest.raises(ValueError, match="unknown deep-REMAP variant"):
        variant_config(cfg, "no_everything")


def test_deconvolved_loss_learns_the_true_label_distribution_not_the_catalogue_noise():
    """Many noisy catalogue labels (σ = 150 K) of stars with the same spectrum (true 5500 K):
    the plain loss learns a distribution as wide as the noise, the deconvolved one a narrow one."""
    torch.manual_seed(1)
    centres = torch.as_tensor(TEFF.centres, dtype=torch.float32)
    observed = 5500.0 + 150.0 * torch.randn(400)
    widths = {}
    for name, errors in (("plain", None), ("deconvolved", torch.full((400,), 150.0))):
        logits = torch.zeros(1, TEFF.n_bins, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        for _ in range(400):
            loss = focal_cost_loss(logits.expand(400, -1), observed, centres, 50.0, gamma=0.0,
                                   cost_weight=0.0, errors=errors)
            opt.zero_grad()
            loss.backward()
            opt.step()
        s = summarize(torch.softmax(logits.detach(), 1).numpy(), TEFF)
        assert s["mean"][0] == pytest.approx(5500.0, abs=30.0)
        widths[name] = s["std"][0]
    assert widths["plain"] > 120.0
    assert widths["deconvolved"] < 0.5 * widths["plain"]


def test_ensemble_temperature_calibrates_the_averaged_distribution():
    """Three members, each honest alone (σ 100 K around its own estimate) but disagreeing by
    ±80 K: their average is too wide; the ensemble temperature sharpens it back."""
    from starlabels.remap.calibration import fit_ensemble_temperature, mixture_nll

    rng = np.random.default_rng(5)
    truth = rng.uniform(4500, 6500, 3000)
    centre = truth + rng.normal(0, 60, truth.size)
    members = []
    for offset in (-80.0, 0.0, 80.0):
        est = centre + offset
        members.append(-0.5 * ((TEFF.centres[None, :] - est[:, None]) / 100.0) ** 2)
    like = bin_likelihoods(truth, TEFF)
    t = fit_ensemble_temperature(members, like)
    stacked = torch.stack([torch.from_numpy(m) for m in members])
    log_like = torch.from_numpy(like).clamp_min(1e-300).log()
    assert t < 0.9
    assert float(mixture_nll(stacked, log_like, t)) < float(mixture_nll(stacked, log_like, 1.0))
    def coverage(temperature):
        mix = np.mean([torch.softmax(torch.from_numpy(m) / temperature, 1).numpy()
                       for m in members], axis=0)
        return interval_coverage(pit(mix, TEFF, truth))["0.68"]

    # the averaged distribution over-covers at T = 1; the ensemble temperature brings it closer
    # to 68% (not all the way: it narrows each member but cannot move them together)
    assert coverage(1.0) > 0.85
    assert abs(coverage(t) - 0.68) < abs(coverage(1.0) - 0.68) - 0.05


def test_coverage_temperature_from_noisy_labels_calibrates_for_the_truth():
    """Over-confident logits (claim 30 K, actual 60 K), calibrated against catalogue labels with
    120 K errors: the coverage objective on the noise-convolved PIT finds T ≈ 4 (30·√4 = 60) and
    the true labels then fall inside the 68% intervals 68% of the time."""
    from starlabels.remap.calibration import convolved_pit, fit_temperature_coverage

    rng = np.random.default_rng(8)
    truth = rng.uniform(4500, 6500, 4000)
    estimate = truth + rng.normal(0, 60, truth.size)
    logits = -0.5 * ((TEFF.centres[None, :] - estimate[:, None]) / 30.0) ** 2
    errors = np.full(truth.size, 120.0)
    observed = truth + rng.normal(0, errors)
    t = fit_temperature_coverage([logits], TEFF, observed, errors)
    assert 3.0 < t < 5.5
    prob = torch.softmax(torch.from_numpy(logits) / t, 1).numpy()
    assert 0.63 <= interval_coverage(pit(prob, TEFF, truth))["0.68"] <= 0.73
    # the convolved PIT of the noisy labels is uniform too: its 90% coverage is right
    assert interval_coverage(convolved_pit(prob, TEFF, observed, errors))["0.90"] == \
        pytest.approx(0.90, abs=0.03)


def test_coverage_temperature_out_of_reach_is_none_and_the_ensemble_falls_back_to_the_nll():
    """Catalogue errors four times the network's real error: even the sharpest distribution
    holds far more than 68% of the noise-convolved labels, so the count cannot pin T down."""
    from starlabels.remap.calibration import fit_temperature_coverage

    rng = np.random.default_rng(9)
    truth = rng.uniform(4500, 6500, 2000)
    estimate = truth + rng.normal(0, 30, truth.size)
    logits = -0.5 * ((TEFF.centres[None, :] - estimate[:, None]) / 30.0) ** 2
    errors = np.full(truth.size, 120.0)
    # labels scattered less than their stated errors: no T holds only 68% of them
    observed = truth + rng.normal(0, 60.0, truth.size)
    assert fit_temperature_coverage([logits], TEFF, observed, errors) is None
    # within reach: a number
    observed = truth + rng.normal(0, errors)
    assert fit_temperature_coverage([logits], TEFF, observed, errors) is not None


def test_dilation_keeps_the_mean_and_scales_the_spread():
    from starlabels.remap.calibration import dilate

    c = TEFF.centres
    centre = np.array([5000.0, 5800.0, 6900.0])
    prob = np.exp(-0.5 * ((c[None, :] - centre[:, None]) / 200.0) ** 2)
    before = summarize(prob, TEFF)
    assert np.allclose(dilate(prob, TEFF, 1.0), prob / prob.sum(axis=1, keepdims=True))
    for factor in (0.4, 2.0):
        out = dilate(prob, TEFF, factor)
        assert out.shape == prob.shape and np.allclose(out.sum(axis=1), 1.0) and (out >= 0).all()
        after = summarize(out, TEFF)
        inner = slice(0, 2)                 # the third meets the range's end when stretched
        assert np.allclose(after["mean"][inner], before["mean"][inner], atol=1.0)
        # to within the bins: re-binning adds about a bin width²/12 of variance
        assert np.allclose(after["std"][inner], factor * before["std"][inner], rtol=0.05)
    # stretched past the upper end, the mass stays in the range (in the end bins)
    assert dilate(prob, TEFF, 2.0)[2, -1] > prob[2, -1] / prob[2].sum()
    with pytest.raises(ValueError, match="> 0"):
        dilate(prob, TEFF, 0.0)


def test_coverage_dilation_from_noisy_labels_calibrates_for_the_truth_and_keeps_the_means():
    """Distributions twice too wide (claim 120 K, actual 60 K) against catalogue labels with
    60 K errors: the dilation the noise-convolved coverage asks for is ≈ 0.5, the true labels
    then fall inside the 68 % intervals 68 % of the time, and the means do not move. Where the
    labels scatter less than their stated errors no factor reaches 68 %, and the NLL decides."""
    from starlabels.remap.calibration import (bin_likelihoods, dilate, fit_dilation_coverage,
                                              fit_dilation_nll)

    rng = np.random.default_rng(10)
    truth = rng.uniform(4700, 6300, 4000)
    estimate = truth + rng.normal(0, 60, truth.size)
    prob = np.exp(-0.5 * ((TEFF.centres[None, :] - estimate[:, None]) / 120.0) ** 2)
    errors = np.full(truth.size, 60.0)
    observed = truth + rng.normal(0, errors)
    factor = fit_dilation_coverage(prob, TEFF, observed, errors)
    assert 0.4 < factor < 0.62
    out = dilate(prob, TEFF, factor)
    assert 0.63 <= interval_coverage(pit(out, TEFF, truth))["0.68"] <= 0.73
    assert np.allclose(summarize(out, TEFF)["mean"], summarize(prob, TEFF)["mean"], atol=1.0)
    like = bin_likelihoods(observed, TEFF, errors)
    assert fit_dilation_nll(prob, like, TEFF) == pytest.approx(factor, rel=0.25)
    quiet = truth + rng.normal(0, 10.0, truth.size)
    assert fit_dilation_coverage(prob, TEFF, quiet, np.full(truth.size, 240.0)) is None
