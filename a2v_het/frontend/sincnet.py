"""SincNet band-pass stem (Ravanelli & Bengio 2018), as animal2vec uses it in place of the first conv layer of the
data2vec extractor, made sample-rate aware and followed by a small conv stack down to the token rate.

    wave (B, T) at each clip's own rate
      -> C learnable Hamming-windowed sinc band-pass filters [f1_c, f2_c] Hz, kernels of kernel_s seconds
         (FFT convolution at the clip's rate; f2 clipped at the clip's Nyquist, filters with f1 >= Nyquist silent)
      -> |y| averaged over frames of 1 / frame_rate s, frame_rate = frames_per_token x token_rate (200/s)
      -> log(. + ENVELOPE_EPS) -> per-clip, per-filter standardisation over the clip's valid frames
         (wav2vec 2.0's per-channel norm after its first layer; silent filters set to exactly 0)
      -> conv_layers x [Conv1d(k 3) + GELU] -> log2(frames_per_token) x [Conv1d(k 4, stride 2) + GELU]
      -> LayerNorm -> Linear -> tokens (B, N, D) at token_rate, N = ceil(duration * token_rate)

Filter c, sampled at rate sr (t = n / sr seconds, n = -(K-1)/2 .. (K-1)/2, K odd taps covering kernel_s):

    h_c[n] = (2 f2 sinc(2 f2 t) - 2 f1 sinc(2 f1 t)) / sr * hamming[n]

i.e. the same analogue band-pass at every rate (passband gain 1). Everything after the frame pooling runs on
frames defined in seconds, so the conv stack never sees the input rate. Frame k of a clip covers the samples
whose time lies in [k / frame_rate, (k + 1) / frame_rate), exactly, at every rate (220 or 221 samples at 44.1 kHz).

Cost: a direct conv of C filters x K taps is C * K MACs per sample (15k at 48 kHz), far too slow on a CPU; the FFT
convolution costs one real FFT per clip, one per filter and one inverse FFT per (clip, filter) at a 5-smooth size
>= T + K - 1, with a hand-written backward (:class:`_FFTFilterAbs`) that keeps only the filters' and clips'
spectra and the sign of y instead of autograd's complex intermediates.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.conv_extractor import masked_instance_norm
from a2v_het.frontend.logmel import hz_to_mel, mel_to_hz, tokens_for_samples
from a2v_het.frontend.projection import SameStrideConv

ENVELOPE_EPS = 1e-5
"""Floor added to the mean |y| of a frame before the log (-100 dB re a full-scale band). Silence stays finite, and
the floor sits ~20 dB above the fp32 FFT convolution's rounding noise (~1e-7 relative to the clip's loudest band),
so that noise, which changes with the FFT size and so with the batch's padding, never reaches the features."""

_MAX_PERIOD_FRAMES = 16
"""Frame pooling through a (period samples, period frames) 0/1 matrix when the frame grid repeats every <= this
many frames (1 at 8/16/48/96 kHz, 2 at 44.1 kHz, 4 at 22.05 kHz); beyond it an index_add (slower, same result)."""


# ----------------------------------------------------------------------------------------------- filter design


def sinc_taps(kernel_s: float, sample_rate: int) -> int:
    """Odd number of taps spanning ``kernel_s`` seconds at ``sample_rate`` Hz (at least 3): round(kernel_s * sr)
    rounded up to odd, so the kernel has a centre tap and zero phase."""
    n = int(round(kernel_s * sample_rate))
    return max(3, n + 1 - n % 2)


def mel_spaced_bands(num_filters: int, low_hz: float, high_hz: float) -> tuple[Tensor, Tensor]:
    """(C,) lower and (C,) upper edges in Hz (float64) of ``num_filters`` adjacent bands tiling [low_hz, high_hz]
    evenly on the HTK mel scale (SincNet's initialisation)."""
    mels = torch.linspace(float(hz_to_mel(low_hz)), float(hz_to_mel(high_hz)), num_filters + 1, dtype=torch.float64)
    edges = mel_to_hz(mels)
    return edges[:-1], edges[1:]


def sinc_bandpass_kernels(f1_hz: Tensor, f2_hz: Tensor, sample_rate: float, n_taps: int) -> Tensor:
    """Hamming-windowed ideal band-pass kernels at ``sample_rate`` Hz.

    Args:
        f1_hz, f2_hz: (C,) lower / upper cutoffs in Hz (f1 <= f2 expected).
        sample_rate: Hz; n_taps: odd kernel length in samples.
    Returns: (C, n_taps) in the cutoffs' float dtype (at least fp32), centred on tap n_taps // 2, passband gain 1.
    f1 and f2 are clipped at the Nyquist, so a band reaching past it becomes [f1, Nyquist] and a band with
    f1 >= Nyquist is the difference of two identical sincs: an exactly zero kernel (and a zero gradient).
    """
    dtype = torch.promote_types(f1_hz.dtype, torch.float32)
    nyq = sample_rate / 2.0
    f1 = f1_hz.to(dtype).clamp(max=nyq)
    f2 = torch.maximum(f2_hz.to(dtype).clamp(max=nyq), f1)
    t = (torch.arange(n_taps, device=f1.device, dtype=dtype) - n_taps // 2) / sample_rate  # (K,) seconds
    # 2 f sinc(2 f t) is the impulse response of an ideal low-pass at f Hz (gain 1); their difference a band-pass.
    h = 2 * f2[:, None] * torch.sinc(2 * f2[:, None] * t) - 2 * f1[:, None] * torch.sinc(2 * f1[:, None] * t)
    window = torch.hamming_window(n_taps, periodic=False, device=f1.device, dtype=dtype)
    return h / sample_rate * window  # / sr: the continuous response sampled at dt = 1 / sr keeps unit gain


# ------------------------------------------------------------------------------------------ FFT convolution


def fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: pocketfft is fastest on such sizes (a power of two can cost up to 2x more work,
    a size with a large prime factor 1.5x more time)."""
    n = max(1, int(n))
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _shift_phase(n_fft: int, shift: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_fft // 2 + 1,) complex exp(-2 pi i f shift / n_fft): the spectrum of a delay by ``shift`` samples.
    Built in float64 (the phase reaches 2 pi * shift) and cast to ``dtype``'s complex type."""
    f = torch.arange(n_fft // 2 + 1, device=device, dtype=torch.float64)
    ph = torch.polar(torch.ones_like(f), -2.0 * math.pi * ((f * shift) % n_fft) / n_fft)
    return ph.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def fft_filter_same(x: Tensor, kernels: Tensor) -> Tensor:
    """Linear convolution of every clip with every kernel, 'same' size and centred (numpy ``convolve(mode='same')``).

    Args: x (B, T) real; kernels (C, K) real, K odd. Returns (B, C, T) in the promoted float dtype:
    y[b, c, t] = sum_k kernels[c, k] x[b, t + K // 2 - k] with x = 0 outside [0, T). Differentiable by autograd;
    the training path uses :func:`fft_filter_abs`, which returns |y| with a cheaper hand-written backward.
    """
    t, k = x.shape[1], kernels.shape[1]
    n_fft = fft_size(t + k - 1)  # >= T + K - 1: the circular convolution equals the linear one (no wrap)
    spec = torch.fft.rfft(x, n=n_fft)[:, None, :] * torch.fft.rfft(kernels, n=n_fft)[None]
    return torch.fft.irfft(spec, n=n_fft)[:, :, k // 2 : k // 2 + t]


class _FFTFilterAbs(torch.autograd.Function):
    """|fft_filter_same(x, kernels)| with a backward written out in the frequency domain.

    With y = x * h (linear convolution, read at offset K // 2) and an upstream gradient g on |y|, g_y = sign(y) g and
    dL/dh = corr(g_y shifted by K // 2, x), dL/dx = corr(g_y shifted by K // 2, h): each is one inverse FFT of a
    product of spectra summed over clips (resp. filters). Saved for backward: the clips' and the filters' spectra
    (B + C spectra) and sign(y) as int8 (1 byte per output sample) instead of y and the (B, C) complex products.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor) -> Tensor:  # type: ignore[override]
        t, k = x.shape[1], kernels.shape[1]
        n_fft = fft_size(t + k - 1)
        xs = torch.fft.rfft(x, n=n_fft)  # (B, F)
        hs = torch.fft.rfft(kernels, n=n_fft)  # (C, F)
        y = torch.fft.irfft(xs[:, None, :] * hs[None], n=n_fft)[:, :, k // 2 : k // 2 + t]  # (B, C, T)
        # sign(y) as +-1 int8 from the sign bit (3x cheaper than torch.sign + a cast). At y == 0 this takes the
        # subgradient +1 where autograd's abs takes 0; any value in [-1, 1] is a valid subgradient, and y == 0
        # exactly only happens for digital silence, whose zero spectrum zeroes the kernels' gradient anyway.
        sign = torch.signbit(y).to(torch.int8).mul_(-2).add_(1)
        ctx.save_for_backward(xs, hs, sign)
        ctx.geometry = (t, k, n_fft)
        return y.abs()

    @staticmethod
    @once_differentiable  # the backward writes into buffers with out=; no double backward
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        xs, hs, sign = ctx.saved_tensors
        t, k, n_fft = ctx.geometry
        # g_y = sign(y) g, written straight into the zero-padded FFT buffer (saves a padded copy and a fill).
        buf = grad.new_empty(*grad.shape[:2], n_fft)
        buf[:, :, t:].zero_()
        torch.mul(grad, sign, out=buf[:, :, :t])
        gs = torch.fft.rfft(buf)  # (B, C, F)
        # y[t] = y_full[t + K // 2]: move g back to the full convolution's index by a delay of K // 2 samples.
        phase = _shift_phase(n_fft, k // 2, grad.dtype, grad.device)
        g_x = g_k = None
        if ctx.needs_input_grad[1]:
            acc = gs[0] * xs[0].conj()[None]  # (C, F); a loop over B keeps the temporaries at (C, F)
            for b in range(1, gs.shape[0]):
                acc += gs[b] * xs[b].conj()[None]
            g_k = torch.fft.irfft(acc * phase, n=n_fft)[:, :k]
        if ctx.needs_input_grad[0]:
            acc = (gs * hs.conj()[None]).sum(dim=1)  # (B, F)
            g_x = torch.fft.irfft(acc * phase, n=n_fft)[:, :t]
        return g_x, g_k


def fft_filter_abs(x: Tensor, kernels: Tensor) -> Tensor:
    """(B, T), (C, K odd) -> (B, C, T) = |fft_filter_same(x, kernels)|, differentiable w.r.t. both inputs through
    :class:`_FFTFilterAbs` (same values, about half the backward time and memory of autograd's)."""
    dtype = torch.promote_types(x.dtype, kernels.dtype)
    return _FFTFilterAbs.apply(x.to(dtype), kernels.to(dtype))


# --------------------------------------------------------------------------------------------- frame pooling


def frame_period(sample_rate: int, frame_rate: float) -> tuple[int, int]:
    """The frame grid k / frame_rate seconds meets the sample grid n / sample_rate every ``period_frames`` frames =
    ``period_samples`` samples: sample_rate / frame_rate = period_samples / period_frames in lowest terms
    (48 kHz at 200 frames/s: (240, 1); 44.1 kHz: (441, 2); 22.05 kHz: (441, 4))."""
    ratio = Fraction(int(sample_rate)) / Fraction(float(frame_rate)).limit_denominator(10**6)
    return ratio.numerator, ratio.denominator


def frame_mean(y: Tensor, sample_rate: int, frame_rate: float, n_frames: int) -> Tensor:
    """Mean of ``y`` over each frame: frame k holds the samples n with k <= n * frame_rate / sample_rate < k + 1.

    Args: y (B, C, L) at ``sample_rate`` Hz with L >= the samples of ``n_frames`` whole frames (zero-pad first);
    frame_rate in frames/s. Returns (B, C, n_frames). The boundaries are exact at every rate and independent of L,
    so a clip's frames do not depend on how long the batch is.
    """
    p, q = frame_period(sample_rate, frame_rate)
    n_periods = -(-n_frames // q)
    need = n_periods * p
    if y.shape[2] < need:
        y = F.pad(y, (0, need - y.shape[2]))
    y = y[:, :, :need]
    frame_of = torch.div(torch.arange(p, device=y.device) * q, p, rounding_mode="floor")  # frame of each sample
    counts = torch.bincount(frame_of, minlength=q).to(y.dtype)  # samples per frame within one period
    if q == 1:
        sums = y.reshape(*y.shape[:2], n_periods, p).sum(dim=3)
    elif q <= _MAX_PERIOD_FRAMES:
        onehot = F.one_hot(frame_of, q).to(y.dtype)  # (p, q)
        sums = (y.reshape(*y.shape[:2], n_periods, p) @ onehot).reshape(*y.shape[:2], n_periods * q)
    else:
        idx = torch.div(torch.arange(need, device=y.device) * q, p, rounding_mode="floor")
        sums = y.new_zeros(*y.shape[:2], n_periods * q).index_add(2, idx, y)
    means = sums / counts.repeat(n_periods)
    return means[:, :, :n_frames]


def _scatter_groups(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """[(batch indices (b_g,), values (b_g, ...))] covering 0..B-1 once -> (B, ...) in batch order, differentiably
    (a cat and a gather, not in-place writes)."""
    if len(parts) == 1:
        return parts[0][1]
    order = torch.cat([idx for idx, _ in parts])
    return torch.cat([v for _, v in parts])[torch.argsort(order)]


# ------------------------------------------------------------------------------------------------- frontend


class SincNetFrontend(Frontend):
    """``frontend.name: sincnet``.

    forward(wave (B, T) float zero-padded after lengths[b], sample_rate (B,) int Hz, lengths (B,) int samples) ->
    FrontendOutput(tokens (B, N, D), padding_mask (B, N) True past each clip's ceil(duration_b * token_rate)
    tokens), N = max(1, max_b ceil(duration_b * token_rate)). The stem runs in fp32 even under autocast.
    Parameters ``low_hz_``, ``band_hz_`` (C,) in Hz: f1 = min_low_hz + |low_hz_|, f2 = f1 + min_band_hz + |band_hz_|.
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.sincnet
        c.validate()
        if cfg.token_rate <= 0:
            raise ValueError("frontend.token_rate must be > 0")
        self.cfg, self.c, self.dim = cfg, c, cfg.dim
        self.frame_rate = float(cfg.token_rate) * c.frames_per_token
        lo, hi = mel_spaced_bands(c.num_filters, c.init_low_hz, c.init_high_hz)
        self.low_hz_ = nn.Parameter((lo - c.min_low_hz).clamp_min(0.0).float())
        self.band_hz_ = nn.Parameter((hi - lo - c.min_band_hz).clamp_min(0.0).float())
        layers: list[nn.Module] = [nn.Conv1d(c.num_filters if i == 0 else c.conv_channels, c.conv_channels, 3,
                                             padding=1) for i in range(c.conv_layers)]
        for _ in range(int(math.log2(c.frames_per_token))):
            layers.append(SameStrideConv(c.conv_channels, c.conv_channels, 2))  # kernel 4, stride 2, exact halving
        self.convs = nn.ModuleList(layers)
        self.n_stride1 = c.conv_layers
        # Affine-free norm of the log envelopes (the next conv has a bias and weights): buffers, not parameters.
        self.register_buffer("norm_weight", torch.ones(c.num_filters), persistent=False)
        self.register_buffer("norm_bias", torch.zeros(c.num_filters), persistent=False)
        self.out_norm = nn.LayerNorm(c.conv_channels)
        self.proj = nn.Linear(c.conv_channels, cfg.dim)

    # ------------------------------------------------------------------------------------------- inspection

    def cutoffs_hz(self) -> Tensor:
        """(C, 2) fp32 [f1, f2] in Hz, differentiable, before the clipping at a clip's Nyquist."""
        f1 = self.c.min_low_hz + self.low_hz_.float().abs()
        f2 = f1 + self.c.min_band_hz + self.band_hz_.float().abs()
        return torch.stack([f1, f2], dim=1)

    def kernels(self, sample_rate: int) -> Tensor:
        """(C, K) fp32 kernels at ``sample_rate`` Hz, K = sinc_taps(kernel_s, sample_rate)."""
        cut = self.cutoffs_hz()
        taps = sinc_taps(self.c.kernel_s, sample_rate)
        return sinc_bandpass_kernels(cut[:, 0], cut[:, 1], float(sample_rate), taps)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        """ceil(duration_s * token_rate) for a clip of round(duration_s * sample_rate) samples."""
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.cfg.token_rate)[0])

    # ------------------------------------------------------------------------------------------------ stem

    def sinc_stage(self, x: Tensor, sample_rate: int) -> Tensor:
        """The band-pass outputs themselves: x (B, T) all at ``sample_rate`` Hz -> (B, C, T) fp32 y (not rectified).
        For inspection and tests; forward uses the fused |y| path."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fft_filter_same(x.float(), self.kernels(sample_rate))

    def band_envelopes(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, n_frames: int) -> Tensor:
        """Log band envelopes: (B, C, n_frames) fp32 log(mean |y| over each frame + ENVELOPE_EPS).

        Args: wave (B, T) zero-padded after lengths[b]; sample_rate (B,) Hz; lengths (B,) samples; n_frames: frames
        of 1 / frame_rate s to return (frames past a clip's own ceil(duration * frame_rate) are unspecified).
        Clips are grouped by rate; each group is filtered over its longest clip's whole frames, with zeros past
        each clip's end, so a clip's valid frames are the same alone or batched (up to FFT rounding). A filter with
        f1 >= a group's Nyquist is not computed for it (its kernel would be exactly zero) and reads log(eps).
        """
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            cut = self.cutoffs_hz()
            clip_frames = tokens_for_samples(lengths, sample_rate, self.frame_rate)  # (B,)
            floor = math.log(ENVELOPE_EPS)
            parts = []
            for sr in sample_rate.unique().tolist():
                idx = (sample_rate == sr).nonzero().flatten()
                out = torch.full((idx.numel(), self.c.num_filters, n_frames), floor, device=wave.device)
                nf = min(int(clip_frames[idx].max()), n_frames)
                alive = (cut[:, 0].detach() < sr / 2).nonzero().flatten()  # (C',) filters with a band below Nyquist
                if nf > 0 and alive.numel() > 0:
                    p, q = frame_period(sr, self.frame_rate)
                    span = -(-nf // q) * p  # samples of the whole frame periods covering nf frames
                    x = wave[idx, : min(span, wave.shape[1])].float()
                    inside = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[idx, None]
                    x = F.pad(x * inside.to(x.dtype), (0, span - x.shape[1]))  # zeros past each clip, as alone
                    k = sinc_bandpass_kernels(cut[alive, 0], cut[alive, 1], float(sr), sinc_taps(self.c.kernel_s, sr))
                    env = frame_mean(fft_filter_abs(x, k), sr, self.frame_rate, nf)  # (b_g, C', nf)
                    if alive.numel() < self.c.num_filters:  # put the computed filters into their rows
                        env = torch.cat([env, env.new_full((env.shape[0], 1, nf), 0.0)], dim=1)
                        pick = torch.full((self.c.num_filters,), alive.numel(), device=env.device, dtype=torch.long)
                        pick[alive] = torch.arange(alive.numel(), device=env.device)
                        env = env[:, pick]
                    out = torch.cat([torch.log(env + ENVELOPE_EPS), out[:, :, nf:]], dim=2)
                parts.append((idx, out))
            return _scatter_groups(parts)

    # --------------------------------------------------------------------------------------------- forward

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        fpt = self.c.frames_per_token
        n_tokens = tokens_for_samples(lengths, sample_rate, self.cfg.token_rate)  # (B,)
        n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
        with torch.autocast(device_type=wave.device.type, enabled=False):
            env = self.band_envelopes(wave, sample_rate, lengths, n_out * fpt)  # (B, C, Nf) fp32
            frames = tokens_for_samples(lengths, sample_rate, self.frame_rate)  # (B,) <= n_out * fpt
            frame_valid = torch.arange(env.shape[2], device=env.device)[None, :] < frames[:, None]
            h = masked_instance_norm(env, frame_valid, self.norm_weight, self.norm_bias)
            # A filter with f1 at or above the clip's Nyquist saw nothing: exactly 0, not a normalised constant.
            alive = self.cutoffs_hz()[:, 0].detach()[None, :] < sample_rate.float()[:, None] / 2  # (B, C)
            h = h * (alive[:, :, None] & frame_valid[:, None, :]).to(h.dtype)
        valid = frames
        for i, conv in enumerate(self.convs):
            if i >= self.n_stride1:
                valid = torch.div(valid + 1, 2, rounding_mode="floor")  # stride 2: ceil(valid / 2) frames
            h = F.gelu(conv(h))
            # Zero past each clip, so the next layer reads the zeros it would read for the clip alone.
            keep = torch.arange(h.shape[2], device=h.device)[None, :] < valid[:, None]
            h = h * keep[:, None, :].to(h.dtype)
        tokens = self.proj(self.out_norm(h.transpose(1, 2)))  # (B, N, D); N = Nf / fpt = n_out
        padding_mask = torch.arange(n_out, device=wave.device)[None, :] >= n_tokens[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = [
    "ENVELOPE_EPS",
    "SincNetFrontend",
    "fft_filter_abs",
    "fft_filter_same",
    "fft_size",
    "frame_mean",
    "frame_period",
    "mel_spaced_bands",
    "sinc_bandpass_kernels",
    "sinc_taps",
]
