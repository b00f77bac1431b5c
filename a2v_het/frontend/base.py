"""The interface every frontend implements: waveforms at any sample rate in, tokens out."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class FrontendOutput:
    tokens: Tensor
    """(B, N, D) tokens for the encoder."""
    padding_mask: Tensor
    """(B, N) bool, True where the token lies beyond the clip's end."""
    band_start_hz: Tensor | None = None
    """(B, K) band start frequencies in Hz (heterodyne only)."""
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    """Scalar fp32 losses the frontend wants added to the objective (heterodyne: energy, surprise)."""
    stats: dict[str, Tensor] = field(default_factory=dict)
    """Scalars for logging only (captured-variance fraction, ...)."""
    band_width_hz: Tensor | None = None
    """(B, K) band widths in Hz (heterodyne only)."""


class Frontend(nn.Module):
    """forward(wave (B, T) float, sample_rate (B,) int Hz, lengths (B,) int samples) -> FrontendOutput.

    ``wave`` is zero-padded after each clip's ``lengths[b]`` samples; clips in a batch may have different rates.
    """

    dim: int

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:  # pragma: no cover
        raise NotImplementedError

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:  # pragma: no cover
        """Tokens produced for a clip of ``duration_s`` seconds at ``sample_rate`` Hz."""
        raise NotImplementedError


def check_inputs(wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes; return ``sample_rate`` and ``lengths`` as int64 tensors on the wave's device."""
    if wave.dim() != 2:
        raise ValueError(f"wave must be (B, T), got shape {tuple(wave.shape)}")
    b = wave.shape[0]
    sample_rate = torch.as_tensor(sample_rate, device=wave.device).long().reshape(-1)
    lengths = torch.as_tensor(lengths, device=wave.device).long().reshape(-1)
    if sample_rate.numel() != b or lengths.numel() != b:
        raise ValueError(f"sample_rate and lengths must have B={b} entries, got {sample_rate.numel()} and {lengths.numel()}")
    if (lengths > wave.shape[1]).any() or (lengths < 0).any():
        raise ValueError("lengths must lie in [0, T]")
    if (sample_rate <= 0).any():
        raise ValueError("sample_rate must be positive")
    return sample_rate, lengths
