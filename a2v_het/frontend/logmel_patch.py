"""AST-style log-mel + patch embedding: the common spectrogram baseline, as a 1-D token sequence at the token rate.

    wave (any rate) -> log-mel at patch_frames x token_rate frames/s (absolute-Hz mel filters, silenced above each
    clip's Nyquist) -> per-clip standardisation over the valid cells -> Conv2d patch embedding, kernel = stride =
    (patch_mels, patch_frames) -> the F' = n_mels / patch_mels frequency patches of one time step concatenated ->
    Linear -> D, LayerNorm

AST cuts a spectrogram into 16 x 16 patches and hands the transformer a 2-D grid of them. The data2vec encoder here
reads one token per 1 / token_rate seconds, so the frequency patches of one time step are concatenated (their
order is their frequency position, so no frequency embedding is needed) and projected to one token. Every time
patch is exactly one token, so the token count is ceil(duration * token_rate) at every sample rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig, LogMelConfig
from a2v_het.frontend.logmel import LOG_EPS, LogMelSpectrogram, tokens_for_samples


def standardized_log_mel(logmel: Tensor, n_frames: Tensor, band_valid: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-clip standardisation of a log-mel over its valid cells; invalid cells become exactly 0.

    Args:
        logmel: (B, M, N) fp32 log power.
        n_frames: (B,) frames inside each clip.
        band_valid: (B, M) bool, the mel filter lies below the clip's Nyquist.
    Returns: (B, M, N) fp32, zero mean and unit variance over each clip's valid (band, frame) cells. A clip's values
    do not depend on what else is in the batch, and the log(eps) floor of bands above its Nyquist never enters the
    statistics (it would dominate them: -23 against about -8 for real content).
    """
    with torch.autocast(device_type=logmel.device.type, enabled=False):
        x = logmel.float()
        frame_valid = torch.arange(x.shape[2], device=x.device)[None, :] < n_frames[:, None]  # (B, N)
        cell = (band_valid[:, :, None] & frame_valid[:, None, :]).float()
        count = cell.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
        mean = (x * cell).sum(dim=(1, 2), keepdim=True) / count
        var = ((x - mean).square() * cell).sum(dim=(1, 2), keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + eps) * cell


def band_valid_mask(spectrogram: LogMelSpectrogram, sample_rate: Tensor) -> Tensor:
    """(B, M) bool: mel filter m lies wholly at or below clip b's Nyquist (else it was silenced to log(eps))."""
    return spectrogram.upper_edge_hz[None, :] <= sample_rate.float()[:, None] / 2 + 1e-6


def patch_embed_reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Patch embedding as explicit reshape + matmul (the definition the Conv2d implements; used by the tests).

    x (B, M, N) with M, N multiples of the patch size, weight (E, 1, pm, pf), bias (E,) -> (B, E, M / pm, N / pf).
    """
    b, m, n = x.shape
    e, _, pm, pf = weight.shape
    patches = x.reshape(b, m // pm, pm, n // pf, pf).permute(0, 1, 3, 2, 4).reshape(b, m // pm, n // pf, pm * pf)
    out = patches @ weight.reshape(e, pm * pf).T + bias  # (B, M/pm, N/pf, E)
    return out.permute(0, 3, 1, 2)


class LogMelPatches(nn.Module):
    """Shared body of ``logmel_patch`` and ``aape``: waves -> standardised log-mel at ``patch_frames x token_rate``
    frames/s -> patch embeddings.

    forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) -> (patches (B, N, F' * E) with F' = n_mels /
    patch_mels frequency patches of E channels per token, x (B, M, N * patch_frames) the standardised log-mel
    (zero past each clip and above its Nyquist), n_tokens (B,), band_valid (B, M)).
    """

    def __init__(self, logmel: LogMelConfig, token_rate: float, patch_mels: int, patch_frames: int, channels: int):
        super().__init__()
        if logmel.n_mels % patch_mels:
            raise ValueError(f"n_mels ({logmel.n_mels}) must be a multiple of patch_mels ({patch_mels})")
        self.token_rate = float(token_rate)
        self.patch_mels, self.patch_frames = int(patch_mels), int(patch_frames)
        self.spectrogram = LogMelSpectrogram(logmel, token_rate * patch_frames)
        self.embed = nn.Conv2d(1, channels, kernel_size=(patch_mels, patch_frames), stride=(patch_mels, patch_frames))
        self.out_features = channels * (logmel.n_mels // patch_mels)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.token_rate)[0])

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        logmel, n_frames = self.spectrogram(wave, sample_rate, lengths)  # (B, M, Nf)
        n_tokens = tokens_for_samples(lengths, sample_rate, self.token_rate)
        n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
        band_valid = band_valid_mask(self.spectrogram, sample_rate)
        x = standardized_log_mel(logmel, n_frames, band_valid)
        want = n_out * self.patch_frames  # whole patches; frames past a clip are zero already
        x = F.pad(x, (0, want - x.shape[2])) if x.shape[2] < want else x[:, :, :want]
        with torch.autocast(device_type=x.device.type, enabled=False):
            p = self.embed(x[:, None].float())  # (B, E, F', N): the patch cells are fp32 like the spectrogram
        patches = p.permute(0, 3, 2, 1).flatten(2)  # (B, N, F' * E), frequency patches in order
        return patches, x, n_tokens, band_valid


class LogMelPatchFrontend(Frontend):
    """``frontend.name: logmel_patch``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) ->
    tokens (B, N, D), N = max_b ceil(duration_b * token_rate); padding_mask (B, N) True past each clip's count."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.logmel_patch
        c.validate()
        self.cfg = cfg
        self.dim = cfg.dim
        self.patches = LogMelPatches(c.logmel_config(), cfg.token_rate, c.patch_mels, c.patch_frames, c.channels)
        self.proj = nn.Linear(self.patches.out_features, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        return self.patches.num_tokens(duration_s, sample_rate)

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        patches, _, n_tokens, _ = self.patches(wave, sample_rate, lengths)
        tokens = self.norm(self.proj(patches))
        padding_mask = torch.arange(tokens.shape[1], device=wave.device)[None, :] >= n_tokens[:, None]
        return FrontendOutput(tokens=tokens, padding_mask=padding_mask)


__all__ = ["LOG_EPS", "LogMelPatchFrontend", "LogMelPatches", "band_valid_mask", "patch_embed_reference",
           "standardized_log_mel"]
