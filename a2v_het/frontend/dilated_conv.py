"""A dilated 1-D convolution with "same" padding computed as one matrix product and shifted adds (CPU).

The band picker's body is a stack of dilated convs of a few channels over thousands of grid bins (16 channels x
5001 bins at 500 kHz). oneDNN runs such a conv as im2col + GEMM: every layer first copies its input K times into a
column buffer, tap by tap with the dilation's stride, and the backward pass does it again (col2im for the input
gradient, im2col for the weight gradient). Those copies took 19 % of a 192 kHz frontend step's instructions
(callgrind), more than the GEMMs themselves.

Here the taps are multiplied first and shifted afterwards, which is the same sum in another order:

    y[:, g] = b + sum_k W_k x[:, g + s_k],  s_k = (k - K // 2) * dilation,  x = 0 outside [0, G)

    forward:   Z = [W_0; ...; W_{K-1}] x        one GEMM (K*C_out x C_in) @ (C_in x G) per clip
               y = b + sum_k Z_k[:, g + s_k]     K contiguous shifted adds
    backward:  dx = sum_k (W_k^T dy)[:, g - s_k] one GEMM, K shifted adds
               dW_k = sum_g dy[:, g] x[:, g + s_k]^T   K small GEMMs over the overlapping bins
               db = sum_g dy[:, g]

The multiply-adds are the conv's own; what goes is the K-fold copy. The GEMMs are ``bmm`` over the batch with the
weights expanded (a view): ``matmul`` of a matrix and a 3-D tensor copies the tensor into one tall matrix first and
measured 8x slower. Results equal ``torch.nn.functional.conv1d`` to float round-off (tested, forward and backward).
Off the CPU the module calls ``conv1d``: cuDNN has its own dilated kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _tap_shifts(kernel: int, dilation: int) -> list[int]:
    return [(k - kernel // 2) * dilation for k in range(kernel)]


def _taps_then_shift(stacked: Tensor, x: Tensor, shifts: list[int], sign: int) -> Tensor:
    """sum_k (W_k x)[:, g + sign * s_k]: one GEMM of all taps, then the taps added shifted (zero past the ends).

    stacked: (K * C_out, C_in) the taps' matrices W_k one under the other; x: (B, C_in, G) -> (B, C_out, G).
    """
    b, g, kernel = x.shape[0], x.shape[-1], len(shifts)
    taps = torch.bmm(stacked.expand(b, -1, -1), x).view(b, kernel, -1, g)  # (B, K, C_out, G)
    out = taps[:, kernel // 2].clone()  # the centre tap, s = 0
    for k, s in enumerate(shifts):
        s *= sign
        if s == 0 or abs(s) >= g:
            continue
        if s > 0:  # out[g] += taps[g + s] for g < G - s
            out[..., : g - s] += taps[:, k, :, s:]
        else:
            out[..., -s:] += taps[:, k, :, : g + s]
    return out


class _DilatedConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
        c_out, c_in, kernel = weight.shape
        stacked = weight.permute(2, 0, 1).reshape(kernel * c_out, c_in)  # rows: tap-major, then output channel
        y = _taps_then_shift(stacked, x, _tap_shifts(kernel, dilation), +1)
        if bias is not None:
            y += bias[:, None]
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        c_out, c_in, kernel = weight.shape
        shifts = _tap_shifts(kernel, ctx.dilation)
        dy = dy.contiguous()
        g = x.shape[-1]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            stacked_t = weight.permute(2, 1, 0).reshape(kernel * c_in, c_out)  # rows: tap-major, then input channel
            dx = _taps_then_shift(stacked_t, dy, shifts, -1)
        if ctx.needs_input_grad[1]:
            dw = weight.new_zeros(kernel, c_out, c_in)
            for k, s in enumerate(shifts):
                if abs(s) >= g:
                    continue
                lo, hi = max(0, -s), g - max(0, s)  # output bins whose input bin g + s exists
                dw[k] = torch.matmul(dy[..., lo:hi], x[..., lo + s: hi + s].transpose(1, 2)).sum(0)
            dw = dw.permute(1, 2, 0).contiguous()
        if ctx.needs_input_grad[2]:  # False when there is no bias
            db = dy.sum((0, 2))
        return dx, dw, db, None


class DilatedConv1d(nn.Conv1d):
    """``nn.Conv1d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation)`` (odd kernel,
    stride 1: the output has the input's length), computed on CPU as one GEMM and shifted adds (module docstring).
    The same parameters and state-dict keys as the ``nn.Conv1d`` it replaces."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd for 'same' padding, got {kernel}")
        super().__init__(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 3:
            return super().forward(x)
        return _DilatedConv1dFn.apply(x, self.weight, self.bias, self.dilation[0])


def dilated_conv(c_in: int, c_out: int, kernel: int, dilation: int) -> nn.Conv1d:
    """A "same"-length conv of odd ``kernel``: :class:`DilatedConv1d` for dilation > 1, a plain ``nn.Conv1d`` for
    dilation 1, where oneDNN runs a direct kernel without im2col (1.3-1.8x faster than the GEMM-and-shift form,
    measured at 16 channels x 2046-5001 bins on 2 cores). Both have the same parameters and state-dict keys."""
    if dilation > 1:
        return DilatedConv1d(c_in, c_out, kernel, dilation)
    return nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
