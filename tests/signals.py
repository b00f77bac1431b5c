"""Test signals shared by the frontend tests (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import math

import torch


def noise_and_tone(n: int, rate: int, seed: int = 0) -> torch.Tensor:
    """(n,) float32: white noise (std 0.05) plus a 1.5 kHz tone of amplitude 0.3 at ``rate`` Hz, built in float64
    so the tone's phase is exact for long clips."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / rate
    return (0.05 * torch.randn(n, generator=g, dtype=torch.float64) + 0.3 * torch.sin(2 * math.pi * 1500.0 * t)).float()
