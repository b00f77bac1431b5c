"""Baseline frontend: log-mel spectrogram on the absolute-Hz grid, then a linear projection to tokens.

Window and hop are in seconds (``cfg.logmel.window_s``, hop = 1 / ``cfg.token_rate``) and the mel filterbank is
built once on the absolute frequency grid of :func:`grid_power_spectrogram` (bin g at g / window_s Hz, up to
``cfg.logmel.f_max_hz``), so a filter means the same Hz range at every input rate and every clip of the same
duration gets the same number of tokens, ``ceil(duration_s * token_rate)``. A filter that reaches above a clip's
Nyquist is silenced for that clip (log(eps)) rather than reading a partial, rate-dependent energy: the features of
two recordings of the same band-limited content at different rates then differ only through the content.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig, LogMelConfig
from a2v_het.frontend.spectrum import frequency_grid, grid_power_spectrogram

LOG_EPS = 1e-10
"""Floor added to mel power before the log. Power is |X|^2 / (sum w)^2 (a full-scale tone peaks at 0.25), so this
is about -94 dB re full scale: above 16-bit quantisation noise per filter, far below any audible content, and
log(eps) = -23 keeps silence finite."""

_TOKEN_TOL = 1e-6
"""Float slack in ceil(n_samples * token_rate / sample_rate): an exact whole count must not round up."""


def hz_to_mel(f_hz: Tensor | np.ndarray | float) -> Tensor | np.ndarray | float:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    if isinstance(f_hz, Tensor):
        return 2595.0 * torch.log10(1.0 + f_hz / 700.0)
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: Tensor | np.ndarray | float) -> Tensor | np.ndarray | float:
    """Inverse of :func:`hz_to_mel`: 700 * (10^(m / 2595) - 1)."""
    if isinstance(mel, Tensor):
        return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)
    return 700.0 * (np.power(10.0, np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_edges_hz(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """(n_mels + 2,) float64 Hz: filter m spans [edges[m], edges[m + 2]] and peaks at edges[m + 1]; the points are
    equally spaced on the HTK mel scale between ``f_min`` and ``f_max``."""
    if n_mels < 1 or not (0.0 <= f_min < f_max):
        raise ValueError(f"need n_mels >= 1 and 0 <= f_min < f_max, got {n_mels}, {f_min}, {f_max}")
    mels = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64)
    return mel_to_hz(mels)


def mel_filterbank(n_mels: int, grid_freqs_hz: Tensor, f_min: float, f_max: float) -> Tensor:
    """Triangular HTK-mel filterbank sampled on an arbitrary frequency grid.

    Args:
        n_mels: number of filters M.
        grid_freqs_hz: (G,) frequencies of the spectrogram bins in Hz (any spacing).
        f_min, f_max: lowest filter's lower edge and highest filter's upper edge, Hz.
    Returns: (M, G) float32 weights: filter m rises linearly from 0 at edges[m] to 1 at edges[m + 1] and falls back
    to 0 at edges[m + 2] (peak-normalised, no area normalisation, as torchaudio ``norm=None``).
    """
    f = torch.as_tensor(grid_freqs_hz, dtype=torch.float64).reshape(-1)
    edges = mel_edges_hz(n_mels, f_min, f_max).to(f.device)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1)
    up = (f[None, :] - lo) / (mid - lo)
    down = (hi - f[None, :]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def tokens_for_samples(n_samples: Tensor, sample_rate: Tensor, token_rate: float) -> Tensor:
    """(B,) int64 ceil(n_samples / sample_rate * token_rate): frames covering the whole clip, rate-independent for
    equal durations. The product is formed before the division so exact whole counts stay exact in float64."""
    x = n_samples.double() * float(token_rate) / sample_rate.double()
    return torch.ceil(x - _TOKEN_TOL).clamp_min(0).long()


class _Framing:
    """Per-rate STFT geometry (samples) for hop_s = 1 / token_rate: the wave is shifted right by ``left`` samples
    so frame n's window is centred on the middle of token n's interval [n / rate, (n + 1) / rate)."""

    def __init__(self, sample_rate: int, window_s: float, hop_s: float):
        # Same rounding as grid_power_spectrogram, so our frame arithmetic matches its STFT exactly.
        self.n_fft = max(4, int(round(window_s * sample_rate)))
        self.hop = max(1, int(round(hop_s * sample_rate)))
        self.left = max(0, (self.n_fft - self.hop) // 2)

    def span(self, n_frames: Tensor) -> Tensor:
        """Samples spanned by ``n_frames`` center=False frames (0 frames -> 0 samples)."""
        return torch.where(n_frames > 0, (n_frames - 1) * self.hop + self.n_fft, 0)


def _frame_aligned_wave(wave: Tensor, sample_rate: Tensor, lengths: Tensor, n_frames: Tensor, window_s: float,
                        hop_s: float) -> tuple[Tensor, Tensor]:
    """Shift each clip right by its rate's ``left`` pad and report a length spanning exactly ``n_frames[b]`` frames.

    Returns (wave' (B, T'), lengths' (B,)): wave' is zero outside each clip; with center=False the STFT of clip b
    over lengths'[b] samples has exactly n_frames[b] frames whose windows lie wholly inside lengths'[b], so
    :func:`grid_power_spectrogram` marks them all valid. Samples past lengths'[b] (at most a fraction of a hop when
    the hop was rounded to whole samples) are dropped.
    """
    b, t = wave.shape
    geo = {int(sr): _Framing(int(sr), window_s, hop_s) for sr in sample_rate.unique().tolist()}
    new_lens = torch.zeros_like(lengths)
    t_new = 1
    for sr, g in geo.items():
        idx = sample_rate == sr
        new_lens[idx] = g.span(n_frames[idx])
        t_new = max(t_new, int(new_lens[idx].max().item()), g.left + t)
    valid = torch.arange(t, device=wave.device)[None, :] < lengths[:, None]
    wave = wave * valid.to(wave.dtype)  # the contract says zero-padded; make sure padding adds no energy
    parts = []
    for sr, g in geo.items():
        sel = (sample_rate == sr).nonzero().flatten()
        parts.append((sel, F.pad(wave[sel], (g.left, t_new - g.left - t))))
    if len(parts) == 1:
        out = parts[0][1]
    else:  # scatter the groups back into batch order (differentiable, unlike in-place slice writes on a leaf)
        order = torch.cat([sel for sel, _ in parts])
        out = torch.cat([p for _, p in parts])[torch.argsort(order)]
    # Drop what lies past each clip's frame span, so frame validity in grid_power_spectrogram is exact.
    keep = torch.arange(t_new, device=wave.device)[None, :] < new_lens[:, None]
    return out * keep.to(out.dtype), new_lens


def _log_mel(wave: Tensor, sample_rate: Tensor, lengths: Tensor, logmel_cfg: LogMelConfig, frame_rate: float,
             fbank: Tensor, upper_edge_hz: Tensor) -> tuple[Tensor, Tensor]:
    """Shared core: (B, M, N) fp32 log-mel at ``frame_rate`` frames/s and (B,) frame counts.
    ``fbank`` (M, G), ``upper_edge_hz`` (M,)."""
    window_s = float(logmel_cfg.window_s)
    hop_s = 1.0 / float(frame_rate)
    n_tok = tokens_for_samples(lengths, sample_rate, frame_rate)  # (B,)
    n_out = max(1, int(n_tok.max().item())) if n_tok.numel() else 1
    with torch.autocast(device_type=wave.device.type, enabled=False):
        x, span = _frame_aligned_wave(wave.float(), sample_rate, lengths, n_tok, window_s, hop_s)
        # Only the grid up to the batch's highest Nyquist: every filter reaching above it is silenced below anyway,
        # so the cut is exact and spares an 8 kHz batch 96% of a 96 kHz-wide grid.
        n_grid = min(fbank.shape[1], frequency_grid(float(sample_rate.max().item()), 1.0 / window_s))
        spec = grid_power_spectrogram(x, sample_rate, span, window_s, hop_s, n_grid=n_grid, grid_hz=1.0 / window_s)
        power = spec.power[:, :, :n_out]  # (B, G', F<=N)
        if power.shape[2] < n_out:
            power = F.pad(power, (0, n_out - power.shape[2]))
        mel = torch.einsum("mg,bgn->bmn", fbank[:, :n_grid].float(), power)  # (B, M, N)
        # A filter reaching past the Nyquist would read a partial, rate-dependent energy: silence it instead.
        inside = upper_edge_hz.float()[None, :] <= sample_rate.float()[:, None] / 2 + 1e-6  # (B, M)
        mel = mel * inside[:, :, None].to(mel.dtype)
        logmel = torch.log(mel + LOG_EPS)
    return logmel, n_tok


def _build_bank(logmel_cfg: LogMelConfig, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Filterbank (M, G) on the grid up to ``logmel_cfg.f_max_hz`` and each filter's upper edge (M,) in Hz."""
    grid_hz = 1.0 / float(logmel_cfg.window_s)
    n_grid = frequency_grid(2.0 * float(logmel_cfg.f_max_hz), grid_hz)
    freqs = torch.arange(n_grid, dtype=torch.float64) * grid_hz
    fbank = mel_filterbank(logmel_cfg.n_mels, freqs, 0.0, float(logmel_cfg.f_max_hz))
    upper = mel_edges_hz(logmel_cfg.n_mels, 0.0, float(logmel_cfg.f_max_hz))[2:].float()
    return fbank.to(device), upper.to(device)


_BANK_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


def bare_log_mel(wave: Tensor, sample_rate: Tensor, lengths: Tensor, cfg: FrontendConfig) -> Tensor:
    """Spectrogram + mel + log with no learnable part (the benchmark's "bare log-mel" row).

    Args: wave (B, T) float zero-padded after lengths[b] samples; sample_rate (B,) Hz; lengths (B,) samples.
    Returns: (B, n_mels, N) fp32 log(mel power + eps), N = max(1, max_b ceil(lengths[b] / sample_rate[b] *
    token_rate)); frames past a clip's own count hold log(eps). Differentiable w.r.t. ``wave``.
    """
    sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
    key = (cfg.logmel, str(wave.device))
    if key not in _BANK_CACHE:
        _BANK_CACHE[key] = _build_bank(cfg.logmel, wave.device)
    fbank, upper = _BANK_CACHE[key]
    return _log_mel(wave, sample_rate, lengths, cfg.logmel, cfg.token_rate, fbank, upper)[0]


class LogMelSpectrogram(nn.Module):
    """Rate-independent log-mel frames, the shared input of every spectrogram frontend (log-mel, patch, Gabor STRF,
    AaPE).

    forward(wave (B, T) float zero-padded after lengths[b], sample_rate (B,) Hz, lengths (B,) samples) ->
    (logmel (B, n_mels, N) fp32 = log(mel power + LOG_EPS), n_frames (B,) int64) with
    n_frames[b] = ceil(lengths[b] / sample_rate[b] * frame_rate), N = max(1, max_b n_frames[b]).
    Frame n is centred at (n + 0.5) / frame_rate seconds; window ``logmel.window_s`` seconds; filters on the absolute
    Hz grid up to ``logmel.f_max_hz`` (silenced, log(eps), above each clip's Nyquist). Frames past a clip's count hold
    log(eps). No learnable parameters; the filterbank is a non-persistent buffer (derived from the config).
    """

    def __init__(self, logmel: LogMelConfig, frame_rate: float):
        super().__init__()
        if logmel.window_s <= 0 or frame_rate <= 0 or logmel.f_max_hz <= 0 or logmel.n_mels < 1:
            raise ValueError("logmel.window_s, logmel.f_max_hz, logmel.n_mels and the frame rate must be > 0")
        self.logmel_cfg = logmel
        self.frame_rate = float(frame_rate)
        fbank, upper = _build_bank(logmel)
        self.register_buffer("fbank", fbank, persistent=False)
        self.register_buffer("upper_edge_hz", upper, persistent=False)

    @property
    def n_mels(self) -> int:
        return int(self.logmel_cfg.n_mels)

    def num_frames(self, duration_s: float, sample_rate: int) -> int:
        """ceil(duration_s * frame_rate) for a clip of round(duration_s * sample_rate) samples."""
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.frame_rate)[0])

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        return _log_mel(wave, sample_rate, lengths, self.logmel_cfg, self.frame_rate, self.fbank, self.upper_edge_hz)


class LogMelFrontend(Frontend):
    """Log-mel spectrogram tokens: forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) ->
    tokens (B, N, D) = Linear(n_mels -> D)(log-mel frames), N = max(1, max_b ceil(duration_b * token_rate)),
    padding_mask (B, N) True past each clip's own count. Frame n is centred at (n + 0.5) / token_rate seconds."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        if cfg.logmel.window_s <= 0 or cfg.token_rate <= 0 or cfg.logmel.f_max_hz <= 0:
            raise ValueError("frontend.logmel.window_s, frontend.token_rate and frontend.logmel.f_max_hz must be > 0")
        self.cfg = cfg
        self.dim = cfg.dim
        self.spectrogram = LogMelSpectrogram(cfg.logmel, cfg.token_rate)
        self.proj = nn.Linear(cfg.logmel.n_mels, cfg.dim)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        """ceil(duration_s * token_rate) for a clip of round(duration_s * sample_rate) samples (same at every rate
        whenever the duration is a whole number of samples)."""
        return self.spectrogram.num_frames(duration_s, sample_rate)

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        logmel, n_tok = self.spectrogram(wave, sample_rate, lengths)
        tokens = self.proj(logmel.transpose(1, 2))  # (B, N, D); autocast may run this in bf16, fine after the log
        padding_mask = torch.arange(tokens.shape[1], device=wave.device)[None, :] >= n_tok[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = [
    "LOG_EPS",
    "LogMelFrontend",
    "LogMelSpectrogram",
    "bare_log_mel",
    "hz_to_mel",
    "mel_edges_hz",
    "mel_filterbank",
    "mel_to_hz",
    "tokens_for_samples",
]
