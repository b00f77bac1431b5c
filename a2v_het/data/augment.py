"""Rate augmentation for training the band picker: a clip re-sampled to a higher rate, its content shifted up.

Training data come at 8-48 kHz, but the picker must work up to ``max_sample_rate``. Up-sampling alone adds only
an empty top to the spectrum; shifting the content up as well puts calls, noise and hum at frequencies the
training rates never reach, so the picker learns from spectra as wide and as high as the ones it will meet.

Both steps are one exact operation in the DFT domain: the clip's rfft bins (spacing sample_rate / n Hz) are copied
``shift`` bins up into an rfft of a clip ``factor`` times longer at ``factor`` times the rate (the same bin
spacing), and transformed back. A shift of s Hz moves a component at f to f + s (single-sideband: no mirror image);
the duration is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def upsample_and_shift(x: Tensor, factor: int, shift_bins: int) -> Tensor:
    """One clip (n,) at rate r -> (n * factor,) at rate r * factor with every component moved shift_bins * r / n Hz
    up (band-limited interpolation, then a single-sideband shift).

    Requires 0 <= shift_bins <= n * factor // 2 - (n // 2 + 1): the content stays below the new Nyquist.
    """
    n = x.shape[0]
    if factor == 1 and shift_bins == 0:
        return x.clone()
    spec = torch.fft.rfft(x.double())
    n_out = n * factor
    room = n_out // 2 - spec.shape[0]
    if not 0 <= shift_bins <= room:
        raise ValueError(f"a shift of {shift_bins} bins does not fit below the new Nyquist (at most {room})")
    spec = spec.clone()
    # irfft counts every bin strictly between DC and Nyquist twice (with its conjugate). The old Nyquist bin
    # (even n) and, once shifted, the old DC bin become such bins, so they carry half their value.
    if n % 2 == 0:
        spec[-1] = spec[-1] / 2
    if shift_bins > 0:
        spec[0] = spec[0] / 2
    out = torch.zeros(n_out // 2 + 1, dtype=spec.dtype)
    out[shift_bins : shift_bins + spec.shape[0]] = spec
    return (torch.fft.irfft(out, n_out) * factor).to(x.dtype)


def rate_augment(wave: Tensor, sample_rate: Tensor, lengths: Tensor, prob: float, max_sample_rate: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Re-sample a random subset of a batch to higher rates with random upward shifts.

    Each clip, with probability ``prob``, gets an integer factor u uniform over the factors >= 2 with
    rate * u <= max_sample_rate (clips with none stay as they are) and a shift uniform in [0, (u - 1) * rate / 2] Hz.

    Args:
        wave: (B, T) float, zero-padded after lengths[b].
        sample_rate: (B,) Hz.
        lengths: (B,) samples.
        prob: chance that a clip is augmented.
        max_sample_rate: the highest rate produced (Hz).
        generator: the random source (CPU); None = torch's global generator (seeded and checkpointed by the loop).
    Returns: (wave (B, T'), sample_rate (B,), lengths (B,)), T' the longest augmented clip; same device and dtype.
    """
    clips, rates, lens = [], [], []
    for b in range(wave.shape[0]):
        sr, n = int(sample_rate[b]), int(lengths[b])
        x = wave[b, :n]
        max_factor = max_sample_rate // sr
        if max_factor >= 2 and float(torch.rand((), generator=generator)) < prob:
            factor = int(torch.randint(2, max_factor + 1, (), generator=generator))
            room = (n * factor) // 2 - (n // 2 + 1)
            shift = int(torch.randint(0, max(room, 0) + 1, (), generator=generator))
            x = upsample_and_shift(x.cpu(), factor, shift).to(wave.device)
            sr *= factor
        clips.append(x)
        rates.append(sr)
        lens.append(x.shape[0])
    out = wave.new_zeros(len(clips), max(lens))
    for b, x in enumerate(clips):
        out[b, : x.shape[0]] = x
    return out, torch.tensor(rates, device=sample_rate.device), torch.tensor(lens, device=lengths.device)
