"""AST-style log-mel + patch embedding as a 1-D token sequence at the token rate. ``frontend.name: logmel_patch``;
doc: docs/frontends/logmel_patch.md.

    wave (B, T), any rate
      -> log-mel (B, M, Nf) at patch_frames x token_rate frames/s (shared LogMelSpectrogram: absolute-Hz mel filters,
         silenced to log(eps) = -100 dB above each clip's Nyquist)
      -> level normalisation (per clip or fixed), silence -> exactly 0            (B, M, N x patch_frames)
      -> Conv2d(1, E, kernel = stride = (patch_mels, patch_frames))             (B, E, F', N), F' = M / patch_mels
      -> the F' frequency patches of each time step concatenated in frequency order -> Linear(F' E -> D) -> LayerNorm

AST cuts the spectrogram into 16 x 16 patches and hands a 2-D grid of them to the transformer. The data2vec encoder
here reads one token per 1 / token_rate seconds, so every time patch is one token and its F' frequency patches are
merged. They are concatenated and projected rather than embedded to D and summed with a learned frequency-position
embedding: in the sum every frequency patch goes through the same projection and its position only adds a constant
offset, so the token cannot tell in which band a pattern occurred (a sum of patch codes is order-free); in the
concatenation each frequency patch owns its slot of the Linear, so position is part of the map. It costs F' E x D
weights (33k at D = 256), which is nothing next to the encoder. Conv2d + Linear with no non-linearity between is one
linear map from the token's M x patch_frames cells, factorised so that the E-dim patch code is shared by all
frequencies (AST's weight sharing).

Normalisation. A cell's level x (natural-log power, converted to dB where a config field says dB) becomes

    u = max(x - floor, 0) / scale

``clip``: mean and std (std >= min_std_db) over the clip's sounding cells (valid frame, filter below the Nyquist,
level above silence_db), floor = max(mean - floor_std x std, silence_db), scale = std. ``fixed``: floor = silence_db,
scale = fixed_scale_db. Silence, filters above a clip's Nyquist (they hold -100 dB, below silence_db) and frames
past its end all read exactly 0, which is also what every zero-padding reads, so (1) the log(eps) floor never enters
the statistics, (2) a band-limited recording gives the same values at 16 and at 48 kHz (its empty upper bands are
silence either way) and (3) a clip's values do not depend on the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig, LogMelPatchConfig
from a2v_het.frontend.logmel import LogMelSpectrogram, tokens_for_samples

DB_PER_NEPER_POWER = 10.0 / math.log(10.0)
"""dB per unit of natural-log power (4.34): the log-mel is ln(power); a config level L dB is L / 4.34 in it."""


# ------------------------------------------------------------------------------------------------ pure math


def db_to_log_power(db: float) -> float:
    """A level in dB as natural-log power (the log-mel's unit)."""
    return float(db) / DB_PER_NEPER_POWER


def sounding_cells(logmel: Tensor, n_frames: Tensor, band_valid: Tensor, silence_log: float) -> Tensor:
    """(B, M, N) bool: frame inside the clip, filter below its Nyquist, level above ``silence_log`` (ln power)."""
    frame_valid = torch.arange(logmel.shape[2], device=logmel.device)[None, :] < n_frames[:, None]  # (B, N)
    return band_valid[:, :, None] & frame_valid[:, None, :] & (logmel > silence_log)


def clip_level_statistics(logmel: Tensor, cells: Tensor, min_std_log: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and standard deviation of each clip's log-mel over ``cells`` (population std, floored).

    Args:
        logmel: (B, M, N) fp32 ln power.
        cells: (B, M, N) bool, the cells to average over.
        min_std_log: lower bound of the std (ln power).
    Returns: mean (B,), std (B,) >= min_std_log, count (B,) cells; a clip without cells gets mean 0, std floor.
    """
    w = cells.float()
    count = w.sum(dim=(1, 2))
    n = count.clamp_min(1.0)
    mean = (logmel * w).sum(dim=(1, 2)) / n
    # Two-pass variance (subtract the mean first): one pass loses precision on a loud, nearly constant clip.
    var = ((logmel - mean[:, None, None]).square() * w).sum(dim=(1, 2)) / n
    std = torch.sqrt(var + min_std_log**2)  # a smooth floor: exact min_std_log at var 0, finite gradient
    return mean, std, count


def normalize_levels(logmel: Tensor, n_frames: Tensor, band_valid: Tensor, cfg: LogMelPatchConfig) -> Tensor:
    """Level normalisation of a log-mel (module docstring): u = max(x - floor, 0) / scale, silence -> 0.

    Args:
        logmel: (B, M, N) ln(mel power + eps) from :class:`LogMelSpectrogram`.
        n_frames: (B,) frames inside each clip.
        band_valid: (B, M) bool, filter m lies below clip b's Nyquist.
        cfg: normalization, silence_db, floor_std, min_std_db, fixed_scale_db.
    Returns: (B, M, N) fp32 >= 0, exactly 0 at silent cells, above the Nyquist and past each clip's end; computed in
    fp32 with autocast off.
    """
    with torch.autocast(device_type=logmel.device.type, enabled=False):
        x = logmel.float()
        silence = db_to_log_power(cfg.silence_db)
        cells = sounding_cells(x, n_frames, band_valid, silence)
        # Filters above the Nyquist and frames past the end hold -100 dB < silence_db, so the relu zeroes them
        # already; the explicit mask keeps that true whatever the spectrogram puts there.
        frame_valid = torch.arange(x.shape[2], device=x.device)[None, :] < n_frames[:, None]
        inside = band_valid[:, :, None] & frame_valid[:, None, :]
        if cfg.normalization == "clip":
            mean, std, _ = clip_level_statistics(x, cells, db_to_log_power(cfg.min_std_db))
            floor = torch.clamp(mean - cfg.floor_std * std, min=silence)  # (B,)
            scale = std
        else:
            floor = x.new_full((x.shape[0],), silence)
            scale = x.new_full((x.shape[0],), db_to_log_power(cfg.fixed_scale_db))
        u = torch.relu(x - floor[:, None, None]) / scale[:, None, None]
        return u * inside.float()


def flatten_frequency_patches(patches: Tensor) -> Tensor:
    """(B, E, F', N) patch embeddings -> (B, N, F' x E) token features; feature index = f' x E + e (frequency patch
    f' in ascending frequency, channel e), so each frequency patch owns a fixed slot of the following Linear."""
    return patches.permute(0, 3, 2, 1).flatten(2)


# ------------------------------------------------------------------------------------------------ modules


@dataclass
class PatchOutput:
    """What :class:`LogMelPatches` hands to a frontend."""

    features: Tensor
    """(B, N, F' x E) concatenated patch embeddings, one row per token (see :func:`flatten_frequency_patches`)."""
    level: Tensor
    """(B, M, N x patch_frames) fp32 normalised log-mel (>= 0; 0 = silence, also above the Nyquist and past the end)."""
    n_tokens: Tensor
    """(B,) int64 tokens inside each clip: ceil(duration x token_rate)."""
    band_valid: Tensor
    """(B, M) bool, the mel filter lies below the clip's Nyquist."""

    @property
    def token_valid(self) -> Tensor:
        """(B, N) bool, True for tokens inside the clip (the complement of the padding mask)."""
        return torch.arange(self.features.shape[1], device=self.features.device)[None, :] < self.n_tokens[:, None]


class LogMelPatches(nn.Module):
    """The patch-token body shared by ``logmel_patch`` and ``aape``.

    forward(wave (B, T) zero-padded after lengths[b], sample_rate (B,) Hz, lengths (B,) samples) -> PatchOutput with
    N = max(1, max_b ceil(lengths[b] / sample_rate[b] x token_rate)) tokens; frame n of the log-mel is centred at
    (n + 0.5) / frame_rate s, so token n covers [n / token_rate, (n + 1) / token_rate) s at every rate.
    """

    def __init__(self, cfg: LogMelPatchConfig, token_rate: float):
        super().__init__()
        if token_rate <= 0:
            raise ValueError(f"token_rate must be > 0, got {token_rate}")
        self.cfg = cfg
        self.token_rate = float(token_rate)
        self.patch_mels, self.patch_frames = int(cfg.patch_mels), int(cfg.patch_frames)
        self.frame_rate = self.token_rate * self.patch_frames
        self.spectrogram = LogMelSpectrogram(cfg.logmel_config(), self.frame_rate)
        self.embed = nn.Conv2d(1, cfg.channels, kernel_size=(cfg.patch_mels, cfg.patch_frames),
                               stride=(cfg.patch_mels, cfg.patch_frames))
        self.freq_patches = cfg.n_mels // cfg.patch_mels
        self.out_features = cfg.channels * self.freq_patches

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        """ceil(duration_s x token_rate) for a clip of round(duration_s x sample_rate) samples."""
        n = torch.tensor([int(round(duration_s * sample_rate))])
        return int(tokens_for_samples(n, torch.tensor([int(sample_rate)]), self.token_rate)[0])

    def band_valid(self, sample_rate: Tensor) -> Tensor:
        """(B, M) bool: filter m lies wholly at or below clip b's Nyquist (else the spectrogram silenced it)."""
        return self.spectrogram.upper_edge_hz[None, :] <= sample_rate.float()[:, None] / 2 + 1e-6

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> PatchOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        logmel, n_frames = self.spectrogram(wave, sample_rate, lengths)  # (B, M, Nf) fp32
        n_tokens = tokens_for_samples(lengths, sample_rate, self.token_rate)
        n_out = max(1, int(n_tokens.max())) if n_tokens.numel() else 1
        band_valid = self.band_valid(sample_rate)
        level = normalize_levels(logmel, n_frames, band_valid, self.cfg)
        # Whole patches only. ceil(d x P x r) <= P ceil(d x r), so this only appends silence (0) past the clips.
        want = n_out * self.patch_frames
        level = F.pad(level, (0, want - level.shape[2])) if level.shape[2] < want else level[:, :, :want]
        with torch.autocast(device_type=wave.device.type, enabled=False):
            patches = self.embed(level[:, None])  # (B, E, F', N) fp32, like the spectrogram
        return PatchOutput(features=flatten_frequency_patches(patches), level=level, n_tokens=n_tokens,
                           band_valid=band_valid)


class LogMelPatchFrontend(Frontend):
    """``frontend.name: logmel_patch``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) ->
    FrontendOutput(tokens (B, N, D) = LayerNorm(Linear(concatenated patch embeddings)), padding_mask (B, N) True
    past each clip's ceil(duration x token_rate) tokens)."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        cfg.logmel_patch.validate()
        self.cfg = cfg
        self.dim = cfg.dim
        self.patches = LogMelPatches(cfg.logmel_patch, cfg.token_rate)
        self.proj = nn.Linear(self.patches.out_features, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        return self.patches.num_tokens(duration_s, sample_rate)

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        p = self.patches(wave, sample_rate, lengths)
        tokens = self.norm(self.proj(p.features))  # autocast may run the Linear in bf16: fine after the log
        return FrontendOutput(tokens=tokens, padding_mask=~p.token_valid)


__all__ = [
    "DB_PER_NEPER_POWER",
    "LogMelPatchFrontend",
    "LogMelPatches",
    "PatchOutput",
    "clip_level_statistics",
    "db_to_log_power",
    "flatten_frequency_patches",
    "normalize_levels",
    "sounding_cells",
]
