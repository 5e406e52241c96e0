"""The Gaia-ESO CNN: layer template, shapes, flattened size, registry and conv L2 penalty."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from starlabels.models import GaiaEsoCNN, build_model, conv_l2_penalty, conv_output_length


def test_output_shape_and_dtype():
    model = build_model("cnn_regression", 400, 5).eval()
    out = model(torch.ones(3, 400) + 0.01 * torch.randn(3, 400))
    assert out.shape == (3, 10)                     # a mean and a log-variance per label
    mean, log_variance = model.split(out)
    assert mean.shape == log_variance.shape == (3, 5)
    assert out.dtype == torch.float32
    plain = build_model("cnn_regression", 400, 5, {"variance_head": False}).eval()
    assert plain(torch.ones(3, 400)).shape == (3, 5)
    assert plain.split(plain(torch.ones(3, 400)))[1] is None


@pytest.mark.parametrize("n_pixels, expected", [
    # by hand: (n-9)//2 → (m-14)//2 → (k-9), times 4 channels
    (400, 4 * (((400 - 9) // 2 - 14) // 2 - 9)),
    (401, 4 * (((401 - 9) // 2 - 14) // 2 - 9)),
    (8000, 7924),
    (16000, 15924),
    (77, 4 * 1),  # the shortest spectrum that leaves one position
])
def test_flattened_size_matches_hand_count_and_a_real_forward_pass(n_pixels, expected):
    model = build_model("cnn_regression", n_pixels, 2).eval()
    assert model.flattened_size == expected
    with torch.no_grad():
        features = model.features(torch.zeros(2, 1, n_pixels))
    assert features[0].numel() == expected
    assert model(torch.ones(2, n_pixels)).shape == (2, 4)


def test_too_short_spectrum_is_refused():
    with pytest.raises(ValueError, match="too short"):
        build_model("cnn_regression", 76, 2)
    assert conv_output_length(77, (10, 15, 10), (2, 2)) == 1


def test_layers_follow_the_group_template():
    # the group's notebook: dropout 0.2 after the convolutions and the first two dense layers,
    # one output per label
    model = build_model("cnn_regression", 1000, 5,
                        {"dropout": 0.2, "dropout_after": ["conv", "dense_1", "dense_2"],
                         "variance_head": False})
    f = list(model.features)
    kinds = [next(k for k in (nn.Conv1d, nn.LeakyReLU, nn.MaxPool1d, nn.Dropout)
                  if isinstance(m, k)) for m in f]  # the CPU layers subclass the stock ones
    assert kinds == [nn.Conv1d, nn.LeakyReLU, nn.MaxPool1d, nn.Conv1d, nn.LeakyReLU, nn.MaxPool1d,
                     nn.Conv1d, nn.LeakyReLU, nn.Dropout]
    convs = [m for m in f if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == \
        [(1, 8, 10), (8, 6, 15), (6, 4, 10)]
    assert all(m.kernel_size == 2 for m in f if isinstance(m, nn.MaxPool1d))
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(model.flattened_size, 64), (64, 128), (128, 32), (32, 5)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(d.p == 0.2 for d in dropouts)
    assert isinstance(model.head[3], nn.Dropout) and isinstance(model.head[6], nn.Dropout)
    assert not any(isinstance(m, nn.Dropout) for m in model.head[7:])
    assert all(m.negative_slope == 0.01 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    # the output layer is linear: nothing follows the last Dense
    assert isinstance(model.head[-1], nn.Linear)


def test_continuum_maps_to_zero_input():
    """With zero conv biases a flat continuum (flux = 1) must give an all-zero feature map."""
    model = build_model("cnn_regression", 300, 2).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        continuum = model(torch.ones(1, 300))
        head_of_zero = model.head(torch.zeros(1, 4, model.flattened_size // 4))
        line = torch.ones(1, 300)
        line[0, 140:160] = 0.5
        with_line = model(line)
    assert torch.equal(continuum, head_of_zero)
    assert not torch.allclose(with_line, continuum)


def test_wrong_input_shape_is_refused():
    model = build_model("cnn_regression", 300, 2)
    with pytest.raises(ValueError, match=r"\(batch, 300\)"):
        model(torch.ones(2, 1, 300))


def test_registry_builds_and_rebuilds_from_recorded_architecture():
    model = build_model("cnn_regression", 500, 3, {"dropout": 0.1, "dense_units": [16, 8]})
    assert isinstance(model, GaiaEsoCNN)
    assert model.architecture["dense_units"] == [16, 8]
    again = build_model("cnn_regression", 500, 3, model.architecture)
    assert [tuple(p.shape) for p in again.parameters()] == [tuple(p.shape) for p in model.parameters()]
    assert again.load_state_dict(model.state_dict())  # identical layout


def test_registry_rejects_unknown_method_and_keys():
    with pytest.raises(ValueError, match=r"unknown method 'resnet'.*cnn_regression"):
        build_model("resnet", 400, 2, {})
    with pytest.raises(ValueError, match=r"unknown architecture key\(s\) \['filters'\]"):
        build_model("cnn_regression", 400, 2, {"filters": 3})


def test_conv_l2_penalty_is_sum_of_squared_conv_kernels_only():
    model = build_model("cnn_regression", 400, 2)
    expected = sum(float((m.weight.detach() ** 2).sum()) for m in model.modules() if isinstance(m, nn.Conv1d))
    penalty = conv_l2_penalty(model)
    assert penalty.ndim == 0
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for name, p in model.named_parameters():
        is_conv_kernel = name.startswith("features") and name.endswith("weight")
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == is_conv_kernel, name
