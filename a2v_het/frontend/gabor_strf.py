"""Learnable spectro-temporal Gabor filters (STRFs) on a log-mel spectrogram, after Riad, Karadayi, Bachoud-Levi &
Dupoux, "Learning spectro-temporal representations of complex sounds with parameterized neural networks" (JASA
2021, arXiv:2103.07125). ``frontend.name: gabor_strf``; doc: docs/frontends/gabor_strf.md.

    wave (B, T), any rate
      -> log-mel (B, M, Nf) at frames_per_token x token_rate frames/s (absolute-Hz mel filters, shared module)
      -> minus the clip's mean over its valid cells, / level_scale_db; held (edge values repeated) above the clip's
         Nyquist and past its end
      -> C complex Gabor kernels, one conv2d ('same' in time and frequency, replicate borders) -> modulus
         (B, C, M, Nf)
      -> 0 outside the valid cells -> mean over G groups of mel channels -> (B, C, G, Nf)
      -> the frames_per_token frames of each token concatenated -> Linear -> tokens (B, N, D)

Kernel c is a Gaussian envelope times a complex plane wave on the (time offset t [s], mel-channel offset f) plane:

    g_c(t, f) = exp(-t^2 / (2 sigma_t^2) - f^2 / (2 sigma_f^2)) * exp(i 2 pi (omega t + Omega f))

with four learned numbers in physical units: sigma_t (seconds), sigma_f (mel channels), the temporal modulation
rate omega (Hz, signed) and the spectral modulation Omega (cycles per mel channel, > 0). The sign of omega is the
orientation: the phase is constant along f = const - (omega / Omega) t, so omega > 0 matches a downward-moving
ripple (a falling sweep) and omega < 0 an upward one; |omega| = 0 is a purely spectral, Omega -> 0 a purely
temporal filter. Riad et al. write the plane wave as exp(i 2 pi F (t cos gamma + f sin gamma)); that
is the same family with (omega, Omega) = F (cos gamma, sin gamma). Both parts are divided by the discrete envelope
sum (the sampled form of the paper's 1 / (2 pi sigma_t sigma_f)) and the real part is made exactly zero-mean, so a
kernel answers to modulation and not to level (the imaginary part is odd, hence zero-mean already).

Rate awareness: the input frames are in seconds and the mel channels in absolute Hz, so the same parameters are
the same filter at 8 kHz and at 192 kHz; a clip simply has fewer valid channels when its Nyquist is lower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.config import ConfigError
from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.logmel import LogMelSpectrogram, tokens_for_samples

MODULUS_EPS = 1e-8
"""Added under the square root of re^2 + im^2: the modulus and its gradient stay finite where both parts are 0
(silence); the floor sqrt(1e-8) = 1e-4 is far below a 1 dB modulation (0.05 at the default 20 dB scale)."""

DB_PER_NEPER_POWER = 10.0 / math.log(10.0)
"""dB per unit of natural-log power (4.34): the log-mel is ln(power), a level_scale_db contrast spans
level_scale_db / 4.34 of it."""

_LOGIT_CLAMP = 1e-6
"""Inverse maps clamp their sigmoid argument to [eps, 1 - eps] so a bound itself maps to a finite raw value."""


# ------------------------------------------------------------------------------------------------ pure math


def bounded_log(raw: Tensor, lo: float, hi: float) -> Tensor:
    """lo * (hi / lo) ** sigmoid(raw): a positive width in [lo, hi], uniform in log, so a step of the raw value
    changes the width by a fixed ratio at every width. lo == hi gives the constant."""
    if hi <= lo:
        return torch.full_like(raw, lo)
    return torch.exp(math.log(lo) + torch.sigmoid(raw) * (math.log(hi) - math.log(lo)))


def inverse_bounded_log(value: Tensor, lo: float, hi: float) -> Tensor:
    """raw such that bounded_log(raw, lo, hi) == value (value clamped into the range)."""
    if hi <= lo:
        return torch.zeros_like(value)
    u = (torch.log(value.clamp(lo, hi)) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return torch.logit(u.clamp(_LOGIT_CLAMP, 1 - _LOGIT_CLAMP))


def gabor_kernels(sigma_t_s: Tensor, sigma_f_mels: Tensor, rate_hz: Tensor, scale_cyc_per_mel: Tensor,
                  t_offsets_s: Tensor, f_offsets_mels: Tensor) -> Tensor:
    """All C Gabor STRFs at once, by broadcasting the (C,) parameters over the (Kf, Kt) offset grid.

    Args:
        sigma_t_s: (C,) temporal Gaussian widths, seconds.
        sigma_f_mels: (C,) spectral Gaussian widths, mel channels.
        rate_hz: (C,) temporal modulation rates omega, Hz (signed).
        scale_cyc_per_mel: (C,) spectral modulations Omega, cycles per mel channel.
        t_offsets_s: (Kt,) time offsets of the taps, seconds, symmetric around 0 (Kt odd).
        f_offsets_mels: (Kf,) mel-channel offsets, symmetric around 0 (Kf odd).
    Returns: (C, 2, Kf, Kt) fp32, [:, 0] the real (cosine) part, [:, 1] the imaginary (sine) part, both divided by
    the envelope's sum; the real part has its envelope-weighted mean removed, so its sum is exactly 0.
    """
    t = t_offsets_s.float()[None, None, :]  # (1, 1, Kt)
    f = f_offsets_mels.float()[None, :, None]  # (1, Kf, 1)
    st = sigma_t_s.float()[:, None, None]  # (C, 1, 1)
    sf = sigma_f_mels.float()[:, None, None]
    envelope = torch.exp(-0.5 * (t / st).square() - 0.5 * (f / sf).square())  # (C, Kf, Kt)
    envelope = envelope / envelope.sum(dim=(1, 2), keepdim=True)  # sums to 1: unit gain for a matched ripple
    phase = 2.0 * math.pi * (rate_hz.float()[:, None, None] * t + scale_cyc_per_mel.float()[:, None, None] * f)
    real = envelope * torch.cos(phase)
    # Remove the DC the truncated cosine keeps (envelope-shaped, so the kernel stays a windowed wave): a constant
    # log-mel level (the recording's gain) then gives exactly no response.
    real = real - envelope * real.sum(dim=(1, 2), keepdim=True)
    imag = envelope * torch.sin(phase)
    return torch.stack([real, imag], dim=1)


def band_valid_mask(upper_edge_hz: Tensor, sample_rate: Tensor) -> Tensor:
    """(B, M) bool: mel filter m (upper edge ``upper_edge_hz[m]`` Hz) lies wholly at or below clip b's Nyquist;
    the shared log-mel holds log(eps) for the others."""
    return upper_edge_hz.float()[None, :] <= sample_rate.float()[:, None] / 2 + 1e-6


def valid_cells(band_valid: Tensor, n_frames: Tensor, n: int) -> Tensor:
    """(B, M, n) bool: band below the clip's Nyquist and frame before the clip's end (``n_frames`` (B,))."""
    frame_valid = torch.arange(n, device=n_frames.device)[None, :] < n_frames[:, None]  # (B, n)
    return band_valid[:, :, None] & frame_valid[:, None, :]


def normalise_log_mel(logmel: Tensor, cells: Tensor, level_scale_db: float) -> Tensor:
    """(logmel - clip mean over its valid cells) / level_scale_db (in ln-power units); invalid cells exactly 0.

    Args: logmel (B, M, N) ln(mel power + eps); cells (B, M, N) bool from :func:`valid_cells`.
    Returns: (B, M, N) fp32. The mean only sees the clip's own valid cells, so neither the log(eps) floor above the
    Nyquist (-23 against about -8 for real content) nor the batch's padding moves it; the scale is fixed, so the
    same content gives the same values in the channels two rates share. Silence gives exactly 0.
    """
    w = cells.float()
    x = logmel.float()
    mean = (x * w).sum(dim=(1, 2), keepdim=True) / w.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (x - mean) * (DB_PER_NEPER_POWER / level_scale_db) * w


def hold_edges(x: Tensor, n_bands: Tensor, n_frames: Tensor) -> Tensor:
    """Extend each clip's valid region by holding its edge values: (B, M, N) -> (B, M, N).

    Channel m >= n_bands[b] takes the value of the clip's top valid channel n_bands[b] - 1 (frame by frame), then
    frame n >= n_frames[b] the value of its last valid frame. Why: the kernels are zero-mean, so on held values they
    answer only to what the clip contains. Filling with a constant instead (e.g. 0 = the clip's mean) would put a
    step at every edge whose height depends on that mean, which itself depends on how many channels the clip's rate
    leaves valid: the same sound would get different edge responses at 16 and 48 kHz. Only the clip's own cells are
    read, so the result does not depend on the batch. A clip with no valid cell (all 0 from
    :func:`normalise_log_mel`) stays all 0.
    """
    b, m, n = x.shape
    top = (n_bands.long() - 1).clamp_min(0)[:, None]  # (B, 1)
    last = (n_frames.long() - 1).clamp_min(0)[:, None]
    m_idx = torch.minimum(torch.arange(m, device=x.device)[None, :], top)  # (B, M)
    t_idx = torch.minimum(torch.arange(n, device=x.device)[None, :], last)  # (B, N)
    x = x.gather(1, m_idx[:, :, None].expand(b, m, n))
    return x.gather(2, t_idx[:, None, :].expand(b, m, n))


def strf_responses(x: Tensor, kernels: Tensor) -> Tensor:
    """x (B, M, N) -> (B, C, 2, M, N) fp32 real / imaginary STRF responses, one conv2d over all 2C kernels.

    'Same' size in time and frequency; the borders of the array are padded by replicating its edge values (the
    boundary rule of :func:`hold_edges`, which has already extended each clip to the whole array), not zeros.
    """
    c, _, kf, kt = kernels.shape
    weight = kernels.reshape(2 * c, 1, kf, kt).float()  # real_0, imag_0, real_1, imag_1, ...
    padded = F.pad(x[:, None].float(), (kt // 2, kt // 2, kf // 2, kf // 2), mode="replicate")
    # conv2d cross-correlates; the true convolution uses g(-t, -f) = conj(g): the same real part and the opposite
    # imaginary part, so the modulus (the feature) is the same and no flip is needed.
    y = F.conv2d(padded, weight)  # (B, 2C, M, N)
    return y.unflatten(1, (c, 2))


def modulus(responses: Tensor) -> Tensor:
    """(B, C, 2, M, N) real / imaginary -> (B, C, M, N) sqrt(re^2 + im^2 + eps): the local modulation energy,
    invariant to the ripple's phase."""
    return torch.sqrt(responses.square().sum(dim=2) + MODULUS_EPS)


# --------------------------------------------------------------------------------------------------- module


class GaborStrfFrontend(Frontend):
    """``frontend.name: gabor_strf``: forward(wave (B, T) float zero-padded after lengths[b], sample_rate (B,) Hz,
    lengths (B,) samples) -> FrontendOutput(tokens (B, N, D), padding_mask (B, N) True past each clip's count),
    N = max(1, max_b ceil(lengths[b] / sample_rate[b] x token_rate)). See the module docstring."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.gabor_strf
        c.validate()
        self.cfg, self.c, self.dim = cfg, c, cfg.dim
        self.frame_rate = float(cfg.token_rate) * c.frames_per_token  # frames/s of the log-mel
        if not c.max_rate_hz < self.frame_rate / 2:
            raise ConfigError(f"frontend.gabor_strf.max_rate_hz must be < frames_per_token x token_rate / 2 = "
                              f"{self.frame_rate / 2:g} Hz (the frame Nyquist), got {c.max_rate_hz}")
        self.spectrogram = LogMelSpectrogram(c.logmel_config(), self.frame_rate)
        kt = max(1, int(round(c.kernel_half_s * self.frame_rate)))
        self.register_buffer("t_offsets_s", torch.arange(-kt, kt + 1, dtype=torch.float32) / self.frame_rate,
                             persistent=False)
        self.register_buffer("f_offsets_mels", torch.arange(-c.kernel_half_mels, c.kernel_half_mels + 1,
                                                            dtype=torch.float32), persistent=False)
        n = c.num_filters
        # Initial filters spread over the allowed ranges (global RNG, like every other init): widths log-uniform,
        # |omega| log-uniform from 1 Hz (slow envelopes) to the bound with random orientation, Omega uniform.
        sigma_t = c.min_sigma_t_s * (c.max_sigma_t_s / c.min_sigma_t_s) ** torch.rand(n)
        sigma_f = c.min_sigma_f_mels * (c.max_sigma_f_mels / c.min_sigma_f_mels) ** torch.rand(n)
        lo_rate = min(1.0, 0.5 * c.max_rate_hz)
        rate = lo_rate * (0.9 * c.max_rate_hz / lo_rate) ** torch.rand(n)
        rate = rate * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        scale = c.max_scale_cyc_per_mel * (0.05 + 0.85 * torch.rand(n))
        self.sigma_t_raw = nn.Parameter(inverse_bounded_log(sigma_t, c.min_sigma_t_s, c.max_sigma_t_s))
        self.sigma_f_raw = nn.Parameter(inverse_bounded_log(sigma_f, c.min_sigma_f_mels, c.max_sigma_f_mels))
        self.rate_raw = nn.Parameter(torch.atanh(rate / c.max_rate_hz))
        self.scale_raw = nn.Parameter(torch.logit(scale / c.max_scale_cyc_per_mel))
        # No norm over the feature vector before the projection: it would mix the frequency groups, so a low band's
        # value would depend on whether the groups above it were recorded (48 kHz) or are 0 (8 kHz). Through the
        # Linear alone a group's contribution is the same at every rate; the model's token LayerNorm follows.
        self.proj = nn.Linear(c.frames_per_token * n * c.frequency_groups, cfg.dim)

    # ------------------------------------------------------------------------------------ the Gabor parameters

    def physical_parameters(self) -> dict[str, Tensor]:
        """(C,) each, in physical units: sigma_t_s (s), sigma_f_mels (mel channels), rate_hz (Hz, signed),
        scale_cyc_per_mel (cycles per mel channel, > 0)."""
        c = self.c
        return {
            "sigma_t_s": bounded_log(self.sigma_t_raw, c.min_sigma_t_s, c.max_sigma_t_s),
            "sigma_f_mels": bounded_log(self.sigma_f_raw, c.min_sigma_f_mels, c.max_sigma_f_mels),
            "rate_hz": c.max_rate_hz * torch.tanh(self.rate_raw),
            "scale_cyc_per_mel": c.max_scale_cyc_per_mel * torch.sigmoid(self.scale_raw),
        }

    @torch.no_grad()
    def set_physical_parameters(self, **values: Tensor | list[float] | float) -> None:
        """Set any of the four (C,) parameters of :meth:`physical_parameters` by their physical values (for tests,
        plots and hand-made initialisations); values are clamped into the configured ranges."""
        c = self.c
        inverse = {
            "sigma_t_s": (self.sigma_t_raw, lambda v: inverse_bounded_log(v, c.min_sigma_t_s, c.max_sigma_t_s)),
            "sigma_f_mels": (self.sigma_f_raw,
                             lambda v: inverse_bounded_log(v, c.min_sigma_f_mels, c.max_sigma_f_mels)),
            "rate_hz": (self.rate_raw, lambda v: torch.atanh((v / c.max_rate_hz).clamp(-1 + 1e-6, 1 - 1e-6))),
            "scale_cyc_per_mel": (self.scale_raw, lambda v: torch.logit(
                (v / c.max_scale_cyc_per_mel).clamp(_LOGIT_CLAMP, 1 - _LOGIT_CLAMP))),
        }
        for key, value in values.items():
            if key not in inverse:
                raise KeyError(f"unknown Gabor parameter {key!r}; expected one of {sorted(inverse)}")
            raw, inv = inverse[key]
            v = torch.as_tensor(value, dtype=torch.float32).expand(raw.shape)
            raw.copy_(inv(v.to(raw.device)))

    def kernels(self) -> Tensor:
        """(C, 2, Kf, Kt) fp32 [real, imag] kernels built from the current parameters (the conv's weights);
        Kt = 2 round(kernel_half_s x frame rate) + 1 frames, Kf = 2 kernel_half_mels + 1 mel channels."""
        with torch.autocast(device_type=self.t_offsets_s.device.type, enabled=False):
            p = self.physical_parameters()
            return gabor_kernels(p["sigma_t_s"], p["sigma_f_mels"], p["rate_hz"], p["scale_cyc_per_mel"],
                                 self.t_offsets_s, self.f_offsets_mels)

    def modulation_energy(self, x: Tensor) -> Tensor:
        """x (B, M, N) normalised log-mel -> (B, C, M, N) fp32 modulus |g_c * x| ('same' size, zeros outside)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return modulus(strf_responses(x, self.kernels()))

    # ----------------------------------------------------------------------------------------------- forward

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        """ceil(duration_s x token_rate) for a clip of round(duration_s x sample_rate) samples."""
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.cfg.token_rate)[0])

    def strf_input(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor,
                   n_frames_out: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The kernels' input: waves -> normalised, edge-held log-mel.

        Args: wave (B, T) zero-padded after lengths[b]; sample_rate (B,) Hz; lengths (B,) samples; n_frames_out:
            frames to return (default: the batch's longest clip).
        Returns: x (B, M, Nf) fp32 (see :func:`normalise_log_mel` and :func:`hold_edges`), cells (B, M, Nf) bool
        (channel below the clip's Nyquist and frame inside the clip), n_frames (B,) frames inside each clip.
        """
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            logmel, n_frames = self.spectrogram(wave, sample_rate, lengths)  # (B, M, N'), (B,)
            nf = logmel.shape[2] if n_frames_out is None else int(n_frames_out)
            logmel = F.pad(logmel, (0, nf - logmel.shape[2])) if nf >= logmel.shape[2] else logmel[:, :, :nf]
            band_valid = band_valid_mask(self.spectrogram.upper_edge_hz, sample_rate)  # (B, M), a prefix of bands
            cells = valid_cells(band_valid, n_frames, nf)
            x = normalise_log_mel(logmel, cells, self.c.level_scale_db)
            return hold_edges(x, band_valid.sum(dim=1), n_frames), cells, n_frames

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        c, fpt = self.c, self.c.frames_per_token
        n_tokens = tokens_for_samples(lengths, sample_rate, self.cfg.token_rate)  # (B,)
        n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
        # ceil(d x fpt x r) <= fpt x ceil(d x r): every clip's frames fit in its tokens.
        x, cells, _ = self.strf_input(wave, sample_rate, lengths, n_out * fpt)  # (B, M, Nf), fp32
        with torch.autocast(device_type=wave.device.type, enabled=False):
            # Outside the valid cells the output describes held values, not content: drop it, so a group of
            # channels above the clip's Nyquist reads exactly 0 and frames past its end add nothing.
            energy = self.modulation_energy(x) * cells[:, None].float()  # (B, C, M, Nf)
            b = energy.shape[0]
            pooled = energy.unflatten(2, (c.frequency_groups, -1)).mean(dim=3)  # (B, C, G, Nf)
            feats = pooled.unflatten(3, (n_out, fpt)).permute(0, 3, 1, 2, 4).reshape(b, n_out, -1)  # (B, N, C*G*fpt)
        tokens = self.proj(feats)  # (B, N, D); may run in bf16 under autocast (the moduli are O(1))
        padding_mask = torch.arange(n_out, device=wave.device)[None, :] >= n_tokens[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = [
    "GaborStrfFrontend",
    "band_valid_mask",
    "bounded_log",
    "gabor_kernels",
    "hold_edges",
    "inverse_bounded_log",
    "modulus",
    "normalise_log_mel",
    "strf_responses",
    "valid_cells",
]
