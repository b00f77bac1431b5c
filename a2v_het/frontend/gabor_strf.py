"""Learnable spectro-temporal Gabor filters (STRFs) on a log-mel spectrogram, after Riad, Karadayi, Bachoud-Levi &
Dupoux, "Learning spectro-temporal representations of complex sounds with parameterized neural networks" (2021).

    wave (any rate) -> log-mel at frames_per_token x token_rate frames/s (absolute-Hz mel filters) -> per-clip
    standardisation -> C learnable complex 2-D Gabor kernels (one conv2d) -> modulation energy |g * x| ->
    mean over ``frequency_groups`` groups of mel channels -> mean over the frames of each token -> Linear -> D,
    LayerNorm

Each kernel c is a Gaussian envelope times a complex plane wave on the (time, mel channel) plane:

    g_c(t, f) = exp(-t^2 / (2 sigma_t^2) - f^2 / (2 sigma_f^2)) * exp(i 2 pi (omega t + Omega f))

with four learned parameters in physical units: sigma_t (seconds), sigma_f (mel channels), the temporal
modulation rate omega (Hz, signed: its sign against Omega's is the orientation, i.e. up- vs down-sweeps) and the
spectral modulation Omega (cycles per mel channel). The real part is made zero-mean (so a kernel responds to
modulation, not to overall level) and both parts are divided by the envelope's sum. All C kernels are built at once
from the parameter tensors by broadcasting over a (time, mel) offset grid: no loop over channels.

Rate awareness: the kernels act on a log-mel whose frames are in seconds and whose filters are in absolute Hz, so
the same parameters mean the same modulation at every input rate; mel channels above a clip's Nyquist read zero.
Departure from the paper: Riad et al. feed the STRF maps to a classifier; here the energy maps are pooled to one
token per 1 / token_rate seconds for the data2vec encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.logmel import LogMelSpectrogram, tokens_for_samples
from a2v_het.frontend.logmel_patch import band_valid_mask, standardized_log_mel

_ENERGY_EPS = 1e-8
"""Added under the square root of the modulation energy: keeps its gradient finite where both parts are 0."""


def gabor_kernels(sigma_t_s: Tensor, sigma_f_mels: Tensor, rate_hz: Tensor, scale_cyc_per_mel: Tensor,
                  t_offsets_s: Tensor, f_offsets_mels: Tensor) -> Tensor:
    """All Gabor STRFs in one shot.

    Args:
        sigma_t_s, sigma_f_mels, rate_hz, scale_cyc_per_mel: (C,) parameters (seconds, mel channels, Hz,
            cycles per mel channel).
        t_offsets_s: (Kt,) time offsets of the kernel taps, seconds (symmetric around 0).
        f_offsets_mels: (Kf,) mel-channel offsets, symmetric around 0.
    Returns: (C, 2, Kf, Kt) fp32: [real, imag]; the real part has zero mean; both are divided by the envelope sum.
    """
    t = t_offsets_s.float()[None, None, :]  # (1, 1, Kt)
    f = f_offsets_mels.float()[None, :, None]  # (1, Kf, 1)
    st, sf = sigma_t_s.float()[:, None, None], sigma_f_mels.float()[:, None, None]
    envelope = torch.exp(-0.5 * (t / st).square() - 0.5 * (f / sf).square())  # (C, Kf, Kt)
    envelope = envelope / envelope.sum(dim=(1, 2), keepdim=True)
    phase = 2.0 * math.pi * (rate_hz.float()[:, None, None] * t + scale_cyc_per_mel.float()[:, None, None] * f)
    real = envelope * torch.cos(phase)
    # DC removal: subtract the envelope-weighted mean so a constant log-mel level gives no response.
    real = real - envelope * real.sum(dim=(1, 2), keepdim=True) / envelope.sum(dim=(1, 2), keepdim=True)
    imag = envelope * torch.sin(phase)
    return torch.stack([real, imag], dim=1)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class GaborStrfFrontend(Frontend):
    """``frontend.name: gabor_strf``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) ->
    tokens (B, N, D), N = max_b ceil(duration_b * token_rate), padding_mask (B, N) True past each clip's count."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.gabor_strf
        c.validate()
        self.cfg, self.c, self.dim = cfg, c, cfg.dim
        self.frame_rate = cfg.token_rate * c.frames_per_token
        self.spectrogram = LogMelSpectrogram(c.logmel_config(), self.frame_rate)
        kt = max(1, int(round(c.kernel_half_s * self.frame_rate)))
        self.register_buffer("t_offsets_s", torch.arange(-kt, kt + 1, dtype=torch.float32) / self.frame_rate,
                             persistent=False)
        self.register_buffer("f_offsets_mels", torch.arange(-c.kernel_half_mels, c.kernel_half_mels + 1,
                                                            dtype=torch.float32), persistent=False)
        n = c.num_filters
        g = torch.Generator().manual_seed(0)  # a spread of initial filters, independent of the global seed

        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=g)

        # Widths through softplus (positive), modulations through tanh (bounded); initial values spread over the
        # plausible range: 20-100 ms, 1-4 mel channels, any rate, up to half the spectral Nyquist.
        self.sigma_t_raw = nn.Parameter(torch.tensor([_inverse_softplus(v) for v in uniform(0.02, 0.1).tolist()]))
        self.sigma_f_raw = nn.Parameter(torch.tensor([_inverse_softplus(v) for v in uniform(1.0, 4.0).tolist()]))
        self.rate_raw = nn.Parameter(torch.atanh(uniform(-0.9, 0.9)))
        self.scale_raw = nn.Parameter(torch.atanh(uniform(-0.5, 0.5)))
        self.proj = nn.Linear(n * c.frequency_groups, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def parameters_physical(self) -> dict[str, Tensor]:
        """(C,) each: sigma_t (s), sigma_f (mel channels), rate (Hz), scale (cycles per mel channel)."""
        c = self.c
        return {"sigma_t_s": F.softplus(self.sigma_t_raw) + 1.0 / self.frame_rate / 4,
                "sigma_f_mels": F.softplus(self.sigma_f_raw) + 0.25,
                "rate_hz": c.max_rate_hz * torch.tanh(self.rate_raw),
                "scale_cyc_per_mel": c.max_scale_cyc_per_mel * torch.tanh(self.scale_raw)}

    def kernels(self) -> Tensor:
        """(C, 2, Kf, Kt) fp32 [real, imag] kernels, built from the current parameters."""
        p = self.parameters_physical()
        return gabor_kernels(p["sigma_t_s"], p["sigma_f_mels"], p["rate_hz"], p["scale_cyc_per_mel"],
                             self.t_offsets_s, self.f_offsets_mels)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.cfg.token_rate)[0])

    def modulation_energy(self, x: Tensor) -> Tensor:
        """x (B, M, Nf) standardised log-mel -> (B, C, M, Nf) fp32 |g_c * x| ('same' size, zeros outside)."""
        k = self.kernels()  # (C, 2, Kf, Kt)
        weight = k.reshape(-1, 1, k.shape[2], k.shape[3])  # (2C, 1, Kf, Kt): real_0, imag_0, real_1, ...
        y = F.conv2d(x[:, None].float(), weight, padding=(k.shape[2] // 2, k.shape[3] // 2))  # (B, 2C, M, Nf)
        y = y.reshape(y.shape[0], -1, 2, y.shape[2], y.shape[3])
        return torch.sqrt(y.square().sum(2) + _ENERGY_EPS)

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        fpt = self.c.frames_per_token
        with torch.autocast(device_type=wave.device.type, enabled=False):
            logmel, n_frames = self.spectrogram(wave, sample_rate, lengths)
            n_tokens = tokens_for_samples(lengths, sample_rate, self.cfg.token_rate)
            n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
            x = standardized_log_mel(logmel, n_frames, band_valid_mask(self.spectrogram, sample_rate))
            x = F.pad(x, (0, n_out * fpt - x.shape[2])) if x.shape[2] < n_out * fpt else x[:, :, : n_out * fpt]
            energy = self.modulation_energy(x)  # (B, C, M, Nf)
            b, c, m, nf = energy.shape
            g = self.c.frequency_groups
            pooled = energy.reshape(b, c, g, m // g, n_out, fpt).mean(dim=(3, 5))  # (B, C, G, N)
            feats = pooled.reshape(b, c * g, n_out).transpose(1, 2)  # (B, N, C * G)
        tokens = self.norm(self.proj(feats))
        padding_mask = torch.arange(n_out, device=wave.device)[None, :] >= n_tokens[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = ["GaborStrfFrontend", "gabor_kernels"]
