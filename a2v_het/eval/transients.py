"""Transient energy and how much of it the bands capture: coverage for recordings without annotations.

Bat detectors record minutes of ultrasound with nobody drawing boxes. What matters there is whether the bands sit
on what comes and goes (echolocation sweeps, social calls), not on the static noise floor, so the measure is the
energy each frequency bin holds *above its own floor*, in the cells that rise clearly above it:

    T(f)    = sum over valid frames t with P(f, t) > g * floor(f) of (P(f, t) - floor(f))    (power x frames)
    floor   = median_t P(f, .)   (the lower median),   g = 10^(margin_db / 10)   (6 dB: 4x)
    capture = sum_{f in [lo, hi], f in some passband} T(f) / sum_{f in [lo, hi]} T(f)

A constant hum gives T = 0 however loud it is (its cells never reach 4x its median), stationary noise very little
(an exponentially distributed periodogram cell exceeds 4x its median, 2.8x its mean, in 6 % of the frames), a
sweep or a click its energy. Without the margin a loud hum's small fluctuations, summed over every frame, would
outweigh a short call. The passbands are the hard ones, [f_k, f_k + W_k]: what the heterodyne hands to the
encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor


def transient_energy(power: Tensor, frame_valid: Tensor, margin_db: float = 6.0) -> Tensor:
    """T(f) per clip: power (B, G, F) >= 0, frame_valid (B, F) bool -> (B, G) fp32 (0 for a clip without frames)."""
    power = power.float()
    valid = frame_valid.bool()
    floor = torch.nan_to_num(power.masked_fill(~valid[:, None, :], float("nan")).nanmedian(dim=-1).values, nan=0.0)
    floor = floor[..., None]
    counts = (power > floor * 10.0 ** (margin_db / 10)) & valid[:, None, :]
    return ((power - floor) * counts).sum(-1)


def transient_capture(transient: Tensor, freqs_hz: Tensor, band_start_hz: Tensor, band_width_hz: float | Tensor,
                      low_hz: float, high_hz: float) -> Tensor:
    """Fraction of the transient energy in [low_hz, high_hz] inside the bands, per clip.

    Args:
        transient: (B, G) T(f) (:func:`transient_energy`).
        freqs_hz: (G,) grid frequencies.
        band_start_hz: (B, K) band starts f_k.
        band_width_hz: W (every band) or (B, K) widths W_k.
        low_hz, high_hz: the range that counts (e.g. 15-120 kHz for bats).
    Returns: (B,) in [0, 1]; 1 for a clip with no transient energy in the range (nothing to miss).
    """
    f = freqs_hz.to(transient.device, torch.float64)[None, None, :]
    start = band_start_hz.double()[..., None]
    width = torch.as_tensor(band_width_hz, dtype=torch.float64, device=transient.device)
    width = width[..., None] if width.dim() else width
    inside = ((f >= start) & (f <= start + width)).any(dim=1)  # (B, G)
    in_range = (f[0] >= low_hz) & (f[0] <= high_hz)  # (1, G)
    t = transient.double() * in_range
    total = t.sum(-1)
    captured = (t * inside).sum(-1)
    return torch.where(total > 0, captured / total.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.ones_like(total)).float()
