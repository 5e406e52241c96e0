"""The regression CNN's CPU layers give the stock layers' outputs and gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from starlabels.models import GaiaEsoCNN
from starlabels.models import cpu_layers


@pytest.mark.parametrize("in_ch,out_ch,kernel,padding,bias", [
    (1, 8, 10, 0, True), (8, 6, 15, 0, True), (3, 5, 7, 3, False), (2, 4, 1, 0, True)])
def test_conv_gradients_match_the_stock_layer(in_ch, out_ch, kernel, padding, bias):
    torch.manual_seed(0)
    fast = cpu_layers.Conv1d(in_ch, out_ch, kernel, padding=padding, bias=bias).double()
    stock = nn.Conv1d(in_ch, out_ch, kernel, padding=padding, bias=bias).double()
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(5, in_ch, 57, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(stock(x))
    grads = []
    for layer in (fast, stock):
        x.grad = None
        layer.zero_grad()
        out = layer(x)
        (out * upstream).sum().backward()
        grads.append([out.detach(), x.grad.clone(), layer.weight.grad.clone()]
                     + ([layer.bias.grad.clone()] if bias else []))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda t, w: cpu_layers._Stride1Conv1d.apply(
        t, w, None, padding), (x.detach().requires_grad_(), fast.weight.detach().clone()
                                .requires_grad_()))


def test_strided_conv_falls_back_to_the_stock_layer():
    torch.manual_seed(0)
    fast = cpu_layers.Conv1d(2, 3, 5, stride=2)
    stock = nn.Conv1d(2, 3, 5, stride=2)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(4, 2, 40)
    torch.testing.assert_close(fast(x), stock(x), rtol=0, atol=0)


@pytest.mark.parametrize("length", [40, 41, 43])
def test_pool_matches_the_stock_pool_with_ties(length):
    torch.manual_seed(1)
    x = torch.randn(3, 2, length)
    x[..., 4:12] = 0.0  # masked pixels: flat runs whose windows tie
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [cpu_layers.MaxPool1d(3)(xs[0]), nn.MaxPool1d(3)(xs[1])]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    upstream = torch.randn_like(outs[0])
    for x_, out in zip(xs, outs):
        (out * upstream).sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)


def test_network_uses_them_and_loads_stock_weights():
    kwargs = dict(conv_channels=[4, 3], kernel_sizes=[5, 3], pool_sizes=[2], dense_units=[8],
                  dropout=0.0, dropout_after=[], negative_slope=0.01, variance_head=True,
                  noise_channel=False)
    net = GaiaEsoCNN(200, 2, **kwargs)
    assert any(isinstance(m, cpu_layers.Conv1d) for m in net.modules())
    assert any(isinstance(m, cpu_layers.MaxPool1d) for m in net.modules())
    # the state dict has exactly the keys a network of stock layers has
    stock = GaiaEsoCNN(200, 2, **kwargs)
    for i, m in enumerate(stock.features):
        if isinstance(m, cpu_layers.Conv1d):
            plain = nn.Conv1d(m.in_channels, m.out_channels, m.kernel_size[0])
            stock.features[i] = plain
    stock.load_state_dict(net.state_dict())
    x = torch.rand(6, 200)
    with torch.no_grad():
        torch.testing.assert_close(net(x), stock(x))
