"""animal2vec's between-class (BC) mixup (Tokozume et al., 2018): mix each clip with another clip of the batch at a
perceived-loudness-aware ratio, so the mixture's dominant source really is the primary clip.

Only clips of the **same sample rate** are paired. A mixture needs one time axis: at different rates the same sample
index is a different time and the same FFT bin a different frequency, and resampling one clip inside the model
would cost time and change its band limit (an 8 kHz clip has nothing above 4 kHz, which the heterodyne frontend's
band picking would see). A clip with no same-rate partner in the batch is left unmixed (partner = itself, r = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

_LEVEL_FLOOR = 1e-10  # -100 dB: the level of a silent clip, so log10 stays finite


def a_weighting_db(freq_hz: Tensor) -> Tensor:
    """IEC 61672 A-weighting in dB at ``freq_hz`` (0 dB at 1 kHz; -inf-like at DC, clamped to -200 dB).

    Note: A-weighting models human hearing and falls ~12 dB per octave above ~10 kHz, so ultrasonic content (bats at
    96-192 kHz) counts for little in the level; this is animal2vec's choice, kept for comparability.
    """
    f2 = freq_hz.double().square()
    ra = (12194.0**2 * f2.square()) / (
        (f2 + 20.6**2) * torch.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
    return (20.0 * torch.log10(ra.clamp_min(1e-10)) + 2.0).float()


def a_weighted_level_db(wave: Tensor, lengths: Tensor, sample_rate: Tensor) -> Tensor:
    """(B, T) zero-padded clips -> (B,) A-weighted mean power per valid sample, in dB (silence: -100 dB).

    One FFT of the whole padded row per clip; bin k of clip b sits at ``k * sample_rate[b] / T`` (each clip at its
    own rate). Parseval gives the mean power: ``sum_k w(f_k) |X_k|^2 / (T * n_valid)`` over the two-sided spectrum
    (the one-sided rfft bins other than DC and Nyquist count twice). Tokozume et al. take the loudest 100 ms frame
    instead; the whole-clip mean is simpler and is what the brief asks for.
    """
    t = wave.shape[1]
    valid = torch.arange(t, device=wave.device)[None, :] < lengths[:, None]
    x = wave.float() * valid
    power = torch.fft.rfft(x, dim=1).abs().square()  # (B, T // 2 + 1)
    k = torch.arange(power.shape[1], device=wave.device, dtype=torch.float32)
    freqs = k[None, :] * sample_rate.float()[:, None] / t
    weight = 10.0 ** (a_weighting_db(freqs) / 10.0)
    two_sided = torch.full_like(k, 2.0)
    two_sided[0] = 1.0
    if t % 2 == 0:
        two_sided[-1] = 1.0
    mean_power = (power * weight * two_sided).sum(1) / (t * lengths.float().clamp_min(1.0))
    return 10.0 * torch.log10(mean_power + _LEVEL_FLOOR)


def same_rate_partners(sample_rate: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B,) rates -> (B,) int64 partner index: a random cycle within each group of equal rate (never oneself
    when the group has two or more clips; oneself when it is alone)."""
    b = sample_rate.shape[0]
    partner = torch.arange(b)
    rates = sample_rate.cpu()
    for rate in rates.unique():
        group = torch.nonzero(rates == rate).flatten()
        if group.numel() < 2:
            continue
        order = group[torch.randperm(group.numel(), generator=generator)]
        partner[order] = order.roll(-1)
    return partner.to(sample_rate.device)


def bc_mix(x1: Tensor, x2: Tensor, gain1_db: Tensor, gain2_db: Tensor, r: Tensor) -> Tensor:
    """The BC mixing formula: x1, x2 (B, T), gains (B,) dB, r (B,) in (0, 1] -> (B, T) fp32.

    ``p = 1 / (1 + 10^((g1 - g2) / 20) * (1 - r) / r)`` makes the *perceived* share of x1 equal r (a louder x1 needs
    a smaller weight); dividing by ``sqrt(p^2 + (1 - p)^2)`` keeps the power of a mix of two uncorrelated unit-power
    clips at one. r = 1 gives p = 1, i.e. x1 exactly.
    """
    # Clamp the level gap: beyond 200 dB p is numerically 0 or 1 anyway, and 10^(gap/20) must not overflow.
    gap = (gain1_db.float() - gain2_db.float()).clamp(-200.0, 200.0)
    r = r.float()
    p = (1.0 / (1.0 + 10.0 ** (gap / 20.0) * (1.0 - r) / r))[:, None]
    return (p * x1.float() + (1.0 - p) * x2.float()) / torch.sqrt(p.square() + (1.0 - p).square())


def bc_mixup(wave: Tensor, lengths: Tensor, sample_rate: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix each clip x1 with a same-rate partner x2.

    r ~ U(0.5, 1) per clip (the primary clip stays dominant), gains g1, g2 = A-weighted levels in dB
    (:func:`a_weighted_level_db`), mixed by :func:`bc_mix`.
    The mixture keeps x1's length (x2 is cut there); padding stays zero.

    Args: wave (B, T) zero-padded, lengths (B,) samples, sample_rate (B,) Hz; generator on the CPU.
    Returns: mixed (B, T) in wave's dtype, lengths (B,) (unchanged), partner (B,) int64, r (B,) fp32 (1 where a clip
        had no partner; r = 1 gives x1 exactly).
    """
    b, t = wave.shape
    lengths = torch.as_tensor(lengths, device=wave.device).long()
    sample_rate = torch.as_tensor(sample_rate, device=wave.device).long()
    partner = same_rate_partners(sample_rate, generator)
    r = 0.5 + 0.5 * torch.rand(b, generator=generator).to(wave.device)
    r = torch.where(partner == torch.arange(b, device=wave.device), torch.ones_like(r), r)

    with torch.autocast(device_type=wave.device.type, enabled=False):
        valid = (torch.arange(t, device=wave.device)[None, :] < lengths[:, None]).float()
        x1 = wave.float() * valid
        x2 = x1[partner] * valid  # partner cut to x1's length
        gain = a_weighted_level_db(x1, lengths, sample_rate)
        mixed = bc_mix(x1, x2, gain, gain[partner], r)
    return mixed.to(wave.dtype), lengths, partner, r


__all__ = ["a_weighted_level_db", "a_weighting_db", "bc_mix", "bc_mixup", "same_rate_partners"]
