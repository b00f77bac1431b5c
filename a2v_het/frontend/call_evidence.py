"""Call evidence: how far, and for how long, each frequency bin rises above its own noise floor.

The seed's statistic, sigma^2(f) = Var_t P(f, t), is measured in the clip's power units, and stationary noise has
Var_t P = (E_t P)^2 (a periodogram bin of Gaussian noise is exponentially distributed): pink noise and wind, tens
of dB louder at low frequencies than at high ones, give the low bins 10^2-10^4 times the variance of a quiet call
at 20 kHz. A picker that maximises captured variance therefore tiles the low-frequency noise and misses exactly
the calls that are quiet or high (measured in BENCHMARKS.md: 91 % All Cov at 96 kHz for a perfect greedy maximiser
of sigma^2, 99.7 % overall and 100 % at 96 kHz for one of this statistic).

This statistic is level-free per bin instead:

    Pbar(f, t) = P averaged over smooth_hz x smooth_s      (150 Hz x 50 ms: the noise of a single periodogram
                                                             cell spans 10 dB, its mean over ~15 cells 3 dB)
    L(f, t)    = log Pbar(f, t)                           (nats; + a floor 1e-10 below the clip's loudest cell)
    D(f, t)    = L(f, t) - median_t L(f, .)                 (the rise above the bin's own floor)
    E(f)       = mean_t relu(D(f, t) - mean_{|f'-f| <= 1 kHz} D(f', t) - margin)

Stationary noise of any colour and level sits at its own median and gives E ~ 0; a constant hum gives exactly 0;
rain drops and wind gusts, which lift a whole neighbourhood of bins at once, are removed with the neighbourhood's
mean rise (the common mode: on the field_hard preset 61.8 % -> 69.8 % All Cov for the greedy picker, BENCHMARKS.md);
a call counts by how many nats it rises above the floor of its own bins and for how long, whether it is 0 dB or
40 dB above the background and whatever the clip's bandwidth. E is the same for the same call in an 8 kHz and a
96 kHz clip (every quantity is per bin), so a picker reading it sees the same thing at every sample rate.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FLOOR_DB_BELOW_PEAK = 100.0
"""log(P + floor) with floor 100 dB below the clip's loudest cell: digital silence and bands emptied by an
upsampler give a finite, flat L (E = 0) instead of -inf."""


def odd_cells(extent: float, cell: float) -> int:
    """Smallest odd number of cells covering ``extent`` (>= 1): a centred smoothing kernel."""
    n = max(1, int(round(extent / cell)))
    return n if n % 2 else n + 1


def box_sum(x: Tensor, size: int, dim: int, step: int = 1) -> Tensor:
    """Sum of ``x`` over a centred window of ``size`` (odd) cells along ``dim``, cells outside the tensor counting 0.

    ``step`` > 1 keeps every step-th output cell only (``box_sum(x, size, dim)[..., ::step]`` along ``dim``, without
    computing the others). Shifted slices added directly, not a cumsum difference: power spans 10 orders of
    magnitude within one clip (a loud call beside digital silence) and a cumsum difference would bury the quiet
    cells in float round-off. Each shift adds the cells it reaches into the output in place: no padded copy of x.
    """
    n, axis = x.shape[dim], dim % x.dim()
    n_out = (n + step - 1) // step
    lead = (slice(None),) * axis
    if size == 1:
        return x[lead + (slice(0, n, step),)]
    half = size // 2
    out = x.new_zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:])
    for shift in range(-half, half + 1):
        # output cell i reads input cell i * step + shift, where 0 <= i * step + shift < n
        first, last = max(0, -(shift // step)), min(n_out - 1, (n - 1 - shift) // step)
        if last >= first:
            src = x[lead + (slice(first * step + shift, last * step + shift + 1, step),)]
            out[lead + (slice(first, last + 1),)] += src
    return out


def window_counts(n: int, half: int, device: torch.device | None = None) -> Tensor:
    """(n,) cells inside a centred window of +-half cells over n cells: 2 half + 1 except near the ends."""
    i = torch.arange(n, device=device)
    return (i.clamp(max=half) + (n - 1 - i).clamp(max=half) + 1).float()


def local_mean(x: Tensor, half: int, dim: int = -2) -> Tensor:
    """Mean of ``x`` over the cells within +-half along ``dim`` that exist (a box filter by cumsum; ``x`` is a
    level in nats, bounded, so the cumsum difference loses nothing that matters). The window sums are differences
    of slices of the cumsum, written straight into the output: two temporaries of x's size."""
    if half <= 0:
        return x
    axis = dim % x.dim()
    if axis != x.dim() - 1 and x.stride(axis) == 1:
        # Contiguous along ``dim`` in memory (the evidence's transposed levels): run along the last dim of the
        # view that matches the memory, the same sums in 0.5-0.6x the time (cumsum along a transposed view walks it
        # as strided rows; 4 x 1921-5001 bins x 150 frames, 2 threads).
        return local_mean(x.transpose(axis, -1), half, -1).transpose(axis, -1)
    n = x.shape[axis]
    c = torch.cumsum(x, dim=axis)
    out = torch.empty_like(x)
    idx = torch.arange(n, device=x.device)
    hi, lo = (idx + half).clamp(max=n - 1), idx - half - 1  # window sum of cell i: c[hi] - c[lo] (c[-1] = 0)
    a, b = half + 1, n - half  # cells [a, b) have both ends inside: one strided difference
    if b > a:
        torch.sub(c.narrow(axis, a + half, b - a), c.narrow(axis, 0, b - a), out=out.narrow(axis, a, b - a))
    ends = torch.cat([idx[: min(a, n)], idx[max(b, a):]])
    if ends.numel():
        sums = c.index_select(axis, hi[ends])
        inner = lo[ends] >= 0
        if bool(inner.any()):
            shape = [1] * x.dim()
            shape[axis] = len(ends)
            sums = sums - c.index_select(axis, lo[ends].clamp(min=0)) * inner.to(x.dtype).view(shape)
        out.index_copy_(axis, ends, sums)
    shape = [1] * x.dim()
    shape[axis] = n
    return out.div_(window_counts(n, half, x.device).to(x.dtype).view(shape))


def lower_median(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """(..., n) -> (...): the lower median along the last dim, the ((m - 1) // 2)-th smallest of a row's m valid
    values, as ``torch.median`` / ``nanmedian`` return it; 0 for a row without a valid value (no gradient).

    On CPU by numpy's selection (``np.partition``; ``np.sort`` when rows differ in their valid count): the same
    values, exactly, in 0.4x the time of ``torch.median`` with 2 threads and 0.2x with one (rows of 38 values,
    5001 rows: a 500 kHz clip's bins). Elsewhere, torch's own.

    Args:
        x: (..., n) float, no NaN where ``valid``.
        valid: (..., n) bool, or None for all valid.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        if valid is None:
            return x.median(dim=-1).values
        return torch.nan_to_num(x.masked_fill(~valid, float("nan")).nanmedian(dim=-1).values, nan=0.0)
    a = x.detach().contiguous().numpy()
    if valid is None:
        k = (a.shape[-1] - 1) // 2
        return torch.from_numpy(np.partition(a, k, axis=-1)[..., k].copy())
    a = np.where(valid.numpy(), a, np.nan)  # NaN sorts last
    count = valid.sum(-1).numpy()
    k = np.maximum(count - 1, 0) // 2
    picked = np.take_along_axis(np.sort(a, axis=-1), k[..., None], axis=-1)[..., 0]
    return torch.from_numpy(np.where(count > 0, picked, 0).astype(a.dtype))


@torch.no_grad()
def call_evidence(power: Tensor, frame_valid: Tensor, smooth_bins: int, smooth_frames: int,
                  margin_nats: float, common_half_bins: int = 0) -> Tensor:
    """E(f) for a group of clips at one sample rate (a statistic of the input: no gradient).

    Args:
        power: (b, n_bins, F) fp32 STFT power of the clips (zero on frames past a clip's end).
        frame_valid: (b, F) bool, the frame lies inside the clip.
        smooth_bins, smooth_frames: odd kernel size of the moving average (frequency bins, frames).
        margin_nats: rises of L smaller than this above the median count nothing (1.0 nat = 4.3 dB).
        common_half_bins: if > 0, each frame's rise is counted above the mean rise of the bins within +-this many
            bins (the common mode): rain drops and wind gusts lift whole neighbourhoods at once, a call only its
            own bins.
    Returns: (b, n_bins) fp32, >= 0, in nats (mean over the valid frames); zeros for a clip without a valid frame.
    """
    # The steps after the first smoothing work in place on their own temporaries: each fresh (b, n_bins, F)
    # buffer costs page faults that measured as much as the arithmetic.
    power = power.float()
    all_valid = bool(frame_valid.all())
    valid = frame_valid.float()[:, None, :]  # (b, 1, F)
    if not all_valid:
        power = power * valid
    # Mean over the valid cells of the window only (edges and frames past a clip's end count as absent), as two
    # separable box sums. The moving average makes neighbouring frames nearly equal, so the level is kept on every
    # other frame only (half the cost of everything after the time average).
    step = 2 if smooth_frames > 2 else 1
    # The number of valid cells of a window is (valid frames of its time span) x (bins of its frequency span), so
    # it is divided out as the time count times the full span, and only the edge bins (a shorter span) rescaled.
    if all_valid:
        frames_in = window_counts(power.shape[2], smooth_frames // 2, power.device)[::step].view(1, 1, -1)
    else:
        frames_in = box_sum(valid, smooth_frames, -1, step).clamp_(min=1.0)  # (b, 1, F / step)
    # The STFT hands its power over frames-major in memory (a transposed (b, F, n_bins) buffer): the box sums then
    # run on that layout, so every shifted slice is whole rows of bins, contiguous, as the vector units want
    # (along strided frames the adds took 11 % of a 192 kHz step's instructions, callgrind). Same sums either way.
    frames_major = power.stride(1) == 1 and power.stride(2) != 1
    if frames_major:
        level = box_sum(box_sum(power.transpose(1, 2), smooth_frames, 1, step), smooth_bins, 2).transpose(1, 2)
    else:
        level = box_sum(box_sum(power, smooth_frames, -1, step), smooth_bins, -2)
    bins_in = window_counts(level.shape[1], smooth_bins // 2, level.device)
    edge = (bins_in < smooth_bins).nonzero().flatten()
    edge_level = level[:, edge] / (frames_in * bins_in[edge][None, :, None]) if edge.numel() else None
    level.div_(frames_in * float(smooth_bins))
    if edge_level is not None:
        level[:, edge] = edge_level
    valid = valid[..., ::step]
    peak = power.amax(dim=(1, 2), keepdim=True)
    floor = peak * 10.0 ** (-FLOOR_DB_BELOW_PEAK / 10) + torch.finfo(torch.float32).tiny
    level.add_(floor).log_()  # (b, n_bins, F / step) nats
    # The floor is the median over frames about two smoothing lengths apart (80 ms at the defaults; 3 s: 38
    # values instead of 300). The median is the most expensive step here per value (see lower_median), and 38
    # values gave the same coverage as 76 on the field, field_hard and basic eval sets (BENCHMARKS.md).
    stride = 2 * max(1, smooth_frames // step)
    sub = level[..., ::stride]
    median = lower_median(sub) if all_valid else lower_median(sub, (valid[:, :, ::stride] > 0).expand_as(sub))
    deviation = level.sub_(median[..., None])
    if common_half_bins > 0:
        deviation.sub_(local_mean(deviation, common_half_bins, dim=-2))
    rise = deviation.sub_(margin_nats).relu_()
    if not all_valid:
        rise.mul_(valid)
    n = valid.sum(-1).clamp(min=1.0)
    return rise.sum(-1) / n
