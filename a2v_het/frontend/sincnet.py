"""SincNet band-pass stem (Ravanelli & Bengio 2018), as animal2vec uses it in place of the first conv layer, made
sample-rate aware, followed by a small conv stack to the token rate.

    wave (any rate) -> C learnable windowed-sinc band-pass filters [f1_c, f2_c] Hz at the clip's own rate
    (FFT convolution) -> |y| averaged over frames of 1 / (frames_per_token x token_rate) s -> log -> per-clip,
    per-filter standardisation over the valid frames -> Conv1d(k 3) + GELU, then stride-2 convs down to the token
    rate -> LayerNorm, Linear -> D

Filter c is ideal band-pass [f1, f2] in Hz (f1 = min_low_hz + |low_c|, f2 = f1 + min_band_hz + |band_c|) truncated
to ``kernel_s`` seconds with a Hamming window:

    h_c(t) = (2 f2 sinc(2 f2 t) - 2 f1 sinc(2 f1 t)) / sample_rate * hamming(t),  t = n / sample_rate

so the cutoffs mean the same Hz at every input rate and the passband gain is 1. For a clip whose Nyquist lies
below f2 the band is clipped at the Nyquist; a filter with f1 at or above the Nyquist outputs zeros for that clip
(and its features are zeroed after the standardisation). Everything after the envelope pooling runs on frames in
seconds, so the conv stack never sees the input rate.

Departure from animal2vec: its stem convolves at one fixed 8 kHz rate and the wav2vec 2.0 conv stack follows in
samples; here the stem runs at each clip's rate (via the FFT, since a 961-tap direct convolution at 96 kHz is too
slow) and the conv stack runs on rate-independent envelope frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.conv_extractor import masked_instance_norm
from a2v_het.frontend.logmel import hz_to_mel, mel_to_hz, tokens_for_samples
from a2v_het.frontend.projection import SameStrideConv

_ENVELOPE_EPS = 1e-6
"""Floor of the mean |y| before the log (-120 dB re full scale): silence stays finite."""


def sinc_taps(kernel_s: float, sample_rate: int) -> int:
    """Odd number of taps covering ``kernel_s`` seconds at ``sample_rate`` (at least 3)."""
    n = int(round(kernel_s * sample_rate))
    return max(3, n + 1 - n % 2)


def sinc_bandpass_kernels(f1_hz: Tensor, f2_hz: Tensor, sample_rate: float, n_taps: int) -> Tensor:
    """(C,) cutoffs in Hz -> (C, n_taps) fp32 Hamming-windowed band-pass kernels at ``sample_rate``, centred on tap
    n_taps // 2, passband gain 1. f2 is clipped at the Nyquist; f1 >= Nyquist gives an all-zero kernel."""
    nyq = sample_rate / 2.0
    f1 = f1_hz.float().clamp(max=nyq)
    f2 = torch.maximum(f2_hz.float().clamp(max=nyq), f1)
    t = (torch.arange(n_taps, device=f1.device, dtype=torch.float32) - n_taps // 2) / sample_rate  # (K,) s
    h = (2 * f2[:, None] * torch.sinc(2 * f2[:, None] * t) - 2 * f1[:, None] * torch.sinc(2 * f1[:, None] * t))
    window = torch.hamming_window(n_taps, periodic=False, device=f1.device, dtype=torch.float32)
    return h / sample_rate * window


def fft_filter_same(x: Tensor, kernels: Tensor) -> Tensor:
    """Linear convolution of every clip with every kernel, 'same' size, centred: x (B, T), kernels (C, K odd) ->
    (B, C, T) fp32, y[b, c, t] = sum_k kernels[c, k] x[b, t + K // 2 - k] (zeros outside x)."""
    t, k = x.shape[1], kernels.shape[1]
    n = t + k - 1
    n_fft = 1 << (n - 1).bit_length() if n > 64 else n  # a power of two: the FFT's fastest size
    spec = torch.fft.rfft(x.float(), n=n_fft)[:, None, :] * torch.fft.rfft(kernels.float(), n=n_fft)[None]
    return torch.fft.irfft(spec, n=n_fft)[:, :, k // 2 : k // 2 + t]


class SincNetFrontend(Frontend):
    """``frontend.name: sincnet``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) ->
    tokens (B, N, D), N = max_b ceil(duration_b * token_rate), padding_mask (B, N) True past each clip's count."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.sincnet
        c.validate()
        self.cfg, self.c, self.dim = cfg, c, cfg.dim
        self.frame_rate = cfg.token_rate * c.frames_per_token
        # SincNet's initialisation: bands tiling [init_low, init_high] evenly on the mel scale.
        edges = mel_to_hz(torch.linspace(float(hz_to_mel(c.init_low_hz)), float(hz_to_mel(c.init_high_hz)),
                                         c.num_filters + 1, dtype=torch.float64))
        self.low_hz_ = nn.Parameter((edges[:-1] - c.min_low_hz).clamp_min(0.0).float())
        self.band_hz_ = nn.Parameter((edges[1:] - edges[:-1] - c.min_band_hz).clamp_min(0.0).float())
        layers: list[nn.Module] = [nn.Conv1d(c.num_filters, c.conv_channels, 3, padding=1)]
        for _ in range(int(math.log2(c.frames_per_token))):
            layers.append(SameStrideConv(c.conv_channels, c.conv_channels, 2))
        self.convs = nn.ModuleList(layers)
        self.register_buffer("norm_weight", torch.ones(c.num_filters), persistent=False)
        self.register_buffer("norm_bias", torch.zeros(c.num_filters), persistent=False)
        self.out_norm = nn.LayerNorm(c.conv_channels)
        self.proj = nn.Linear(c.conv_channels, cfg.dim)

    def cutoffs_hz(self) -> Tensor:
        """(C, 2) [f1, f2] in Hz (before clipping at a clip's Nyquist)."""
        f1 = self.c.min_low_hz + self.low_hz_.abs()
        f2 = f1 + self.c.min_band_hz + self.band_hz_.abs()
        return torch.stack([f1, f2], dim=1)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.cfg.token_rate)[0])

    def band_envelopes(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, n_frames: int) -> Tensor:
        """(B, C, n_frames) fp32 log mean |band-passed wave| per frame of 1 / frame_rate s.

        Clips are grouped by (rate, own frame count) and each group is filtered over exactly its own frames' span,
        so a clip's envelopes are the same alone or batched with longer clips."""
        cut = self.cutoffs_hz()
        clip_frames = tokens_for_samples(lengths, sample_rate, self.frame_rate)  # (B,)
        out = wave.new_zeros(wave.shape[0], self.c.num_filters, n_frames, dtype=torch.float32)
        groups = torch.stack([sample_rate, clip_frames], 1).unique(dim=0).tolist()
        for sr, nf in groups:
            if nf == 0:
                continue
            idx = ((sample_rate == sr) & (clip_frames == nf)).nonzero().flatten()
            span = int(round(nf * sr / self.frame_rate))  # samples of nf whole frames (zeros past the clip)
            x = wave[idx, : min(span, wave.shape[1])].float()
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[idx, None]
            x = x * valid.to(x.dtype)
            if x.shape[1] < span:
                x = F.pad(x, (0, span - x.shape[1]))
            kernels = sinc_bandpass_kernels(cut[:, 0], cut[:, 1], float(sr), sinc_taps(self.c.kernel_s, sr))
            y = fft_filter_same(x, kernels).abs()  # (b, C, span)
            # Mean over each frame's samples (frame boundaries within half a sample of k * sr / frame_rate).
            env = F.adaptive_avg_pool1d(y, nf)  # (b, C, nf)
            out[idx, :, :nf] = torch.log(env + _ENVELOPE_EPS)
        return out

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        fpt = self.c.frames_per_token
        n_tokens = tokens_for_samples(lengths, sample_rate, self.cfg.token_rate)
        n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
        with torch.autocast(device_type=wave.device.type, enabled=False):
            env = self.band_envelopes(wave, sample_rate, lengths, n_out * fpt)  # (B, C, Nf)
            frames = tokens_for_samples(lengths, sample_rate, self.frame_rate)
            frame_valid = torch.arange(env.shape[2], device=env.device)[None, :] < frames[:, None]
            h = masked_instance_norm(env, frame_valid, self.norm_weight, self.norm_bias)
            # Filters starting at or above a clip's Nyquist saw nothing: zero rather than a normalised constant.
            inside = self.cutoffs_hz()[:, 0].detach()[None, :] < sample_rate.float()[:, None] / 2  # (B, C)
            h = h * (inside[:, :, None] & frame_valid[:, None, :]).float()
        valid_frames = frames
        for i, conv in enumerate(self.convs):
            if i > 0:
                valid_frames = torch.div(valid_frames + 1, 2, rounding_mode="floor")
            h = F.gelu(conv(h))
            # Zero past each clip so the next conv reads what it reads for the clip alone (its zero padding).
            keep = torch.arange(h.shape[2], device=h.device)[None, :] < valid_frames[:, None]
            h = h * keep[:, None, :].to(h.dtype)
        tokens = self.proj(self.out_norm(h.transpose(1, 2)))  # (B, N, D)
        padding_mask = torch.arange(n_out, device=wave.device)[None, :] >= n_tokens[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = ["SincNetFrontend", "fft_filter_same", "sinc_bandpass_kernels", "sinc_taps"]
