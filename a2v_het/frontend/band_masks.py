"""Soft Cauchy band masks on an absolute frequency grid.

M_k(f) is 1 over the passband [f_k, f_k + W] and falls off with Cauchy (Lorentzian) tails outside it,
M_k(f) = 1 / (1 + (d / gamma)^2) with d the distance to the nearer edge. Unlike a Gaussian, the tail decays only
as (gamma / d)^2, so a band far from the energy still feels a gradient that pulls it towards the energy.
Bands combine by soft-OR: M(f) = 1 - prod_k (1 - M_k(f)).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _upper_edges(band_start_hz: Tensor, band_width_hz: float | Tensor) -> Tensor:
    """(B, K, 1) f_k + W_k for one width W or per-band widths (B, K) (or per-clip (B, 1))."""
    w = torch.as_tensor(band_width_hz, dtype=band_start_hz.dtype, device=band_start_hz.device)
    return (band_start_hz + w)[..., None] if w.dim() else band_start_hz[..., None] + w


def cauchy_band_masks(freqs_hz: Tensor, band_start_hz: Tensor, band_width_hz: float | Tensor, gamma_hz: float
                      ) -> Tensor:
    """Per-band soft masks.

    Args:
        freqs_hz: (G,) grid frequencies in Hz.
        band_start_hz: (B, K) band starts f_k in Hz.
        band_width_hz: W in Hz, or (B, K) / (B, 1) widths W_k.
        gamma_hz: Cauchy half-width in Hz (the mask is 0.5 at gamma outside an edge).
    Returns: (B, K, G) masks in [0, 1].
    """
    f = freqs_hz.to(band_start_hz.dtype)[None, None, :]
    lo = band_start_hz[..., None]
    hi = _upper_edges(band_start_hz, band_width_hz)
    # Distance to the passband: zero inside, positive outside. relu keeps the gradient w.r.t. f_k on both sides.
    d = torch.relu(lo - f) + torch.relu(f - hi)
    return 1.0 / (1.0 + (d / gamma_hz) ** 2)


def soft_or(masks: Tensor) -> Tensor:
    """(B, K, G) -> (B, G): M(f) = 1 - prod_k (1 - M_k(f))."""
    return 1.0 - torch.prod(1.0 - masks, dim=1)


def passband_union(freqs_hz: Tensor, band_start_hz: Tensor, band_width_hz: float | Tensor) -> Tensor:
    """(B, G) bool: the bins a hard heterodyne actually passes, f in some [f_k, f_k + W_k]."""
    f = freqs_hz.to(band_start_hz.dtype)[None, None, :]
    lo = band_start_hz[..., None]
    return ((f >= lo) & (f <= _upper_edges(band_start_hz, band_width_hz))).any(dim=1)
