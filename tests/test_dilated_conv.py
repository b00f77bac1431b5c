"""The band picker's dilated conv (GEMM of all taps, then shifted adds) against torch's conv1d."""

import pytest
import torch
from torch import nn

from a2v_het.frontend.config import HeterodyneConfig
from a2v_het.frontend.dilated_conv import DilatedConv1d, _DilatedConv1dFn, dilated_conv
from a2v_het.frontend.hypernetwork import BandPicker


@pytest.mark.parametrize("batch,c_in,c_out,bins,kernel,dilation", [
    (4, 16, 16, 501, 5, 2), (2, 2, 16, 300, 5, 16), (3, 4, 3, 7, 5, 8),  # taps reaching past both ends
    (1, 3, 5, 40, 3, 4), (2, 1, 1, 9, 7, 1),
])
def test_matches_conv1d_forward_and_backward_in_float64(batch, c_in, c_out, bins, kernel, dilation):
    torch.manual_seed(0)
    weight = torch.randn(c_out, c_in, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch, c_in, bins, dtype=torch.float64, requires_grad=True)
    ref = nn.functional.conv1d(x, weight, bias, padding=dilation * (kernel // 2), dilation=dilation)
    y = _DilatedConv1dFn.apply(x, weight, bias, dilation)
    assert y.shape == ref.shape == (batch, c_out, bins)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    dy = torch.randn_like(ref)
    inputs = (x, weight, bias)
    for got, want in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(ref, inputs, dy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 23, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _DilatedConv1dFn.apply(x, w, b, 4), (x, weight, bias))


def test_module_is_a_conv1d_with_the_same_state_dict_and_output():
    torch.manual_seed(2)
    conv = DilatedConv1d(6, 8, 5, dilation=4)
    plain = nn.Conv1d(6, 8, 5, padding=8, dilation=4)
    plain.load_state_dict(conv.state_dict())  # same keys and shapes: old checkpoints load
    x = torch.randn(3, 6, 200, requires_grad=True)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)
    (conv(x).square().sum()).backward()
    grads = [p.grad.clone() for p in conv.parameters()] + [x.grad.clone()]
    x.grad = None
    (plain(x).square().sum()).backward()
    for got, want in zip(grads, [p.grad for p in plain.parameters()] + [x.grad]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # Without an input gradient (the picker's first layer), only the weights get one.
    conv.zero_grad()
    conv(x.detach()).sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None


def test_even_kernel_rejected_and_dilation_one_stays_plain():
    with pytest.raises(ValueError, match="odd"):
        DilatedConv1d(2, 2, 4, dilation=2)
    assert type(dilated_conv(2, 4, 5, 1)) is nn.Conv1d
    assert isinstance(dilated_conv(2, 4, 5, 2), DilatedConv1d)


def test_picker_body_unchanged_by_the_conv_form():
    """The picker's body with its dilated convs swapped for plain nn.Conv1d (same weights) computes the same
    features and gradients on a 500 kHz grid (5001 bins; the bands follow from these through an arg-max, which
    float round-off may flip between two starts that tie, so the features are what is compared)."""
    torch.manual_seed(3)
    cfg = HeterodyneConfig()
    picker = BandPicker(cfg, 1.0 / cfg.stft_window_s)
    plain = BandPicker(cfg, 1.0 / cfg.stft_window_s)
    for i, m in enumerate(plain.body):
        if isinstance(m, nn.Conv1d) and type(m) is not nn.Conv1d:
            plain.body[i] = nn.Conv1d(m.in_channels, m.out_channels, m.kernel_size[0], padding=m.padding,
                                      dilation=m.dilation)
    plain.load_state_dict(picker.state_dict())
    assert sum(type(m) is DilatedConv1d for m in picker.body) == cfg.picker_layers - 1
    x = torch.randn(2, picker.feature_channels, 5001)
    ours, ref = picker.body(x), plain.body(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    ours.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(picker.body.parameters(), plain.body.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3 * float(b.grad.abs().max()))
