"""Test signals shared by the frontend tests (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import math

import numpy as np
import torch

from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.frontend.config import HeterodyneConfig


def noise_and_tone(n: int, rate: int, seed: int = 0) -> torch.Tensor:
    """(n,) float32: white noise (std 0.05) plus a 1.5 kHz tone of amplitude 0.3 at ``rate`` Hz, built in float64
    so the tone's phase is exact for long clips."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / rate
    return (0.05 * torch.randn(n, generator=g, dtype=torch.float64) + 0.3 * torch.sin(2 * math.pi * 1500.0 * t)).float()


def clip_batch(clips) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(sample_rate, samples), ...] -> the frontend's inputs: wave (B, T) zero-padded, sample_rate (B,), lengths (B,)."""
    t_max = max(len(x) for _, x in clips)
    wave = torch.zeros(len(clips), t_max)
    for i, (_, x) in enumerate(clips):
        wave[i, : len(x)] = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return wave, torch.tensor([sr for sr, _ in clips]), torch.tensor([len(x) for _, x in clips])


def heterodyne_frontend(seed: int = 0, dim: int = 32, **heterodyne):
    """A seeded heterodyne frontend of width ``dim`` with ``heterodyne`` config overrides."""
    torch.manual_seed(seed)
    return build_frontend(FrontendConfig(dim=dim, heterodyne=HeterodyneConfig(**heterodyne)))
