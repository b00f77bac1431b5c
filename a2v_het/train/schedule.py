"""Schedules as arrays indexed by step (as in dinov2): easy to plot, to test and to resume."""

from __future__ import annotations

import numpy as np


def cosine_with_warmup(max_steps: int, peak: float, warmup_steps: int, final_ratio: float = 0.0) -> np.ndarray:
    """(max_steps,) learning rates: linear warm-up from 0 to ``peak`` over ``warmup_steps``, cosine to
    ``final_ratio * peak`` at the last step."""
    steps = np.arange(max_steps, dtype=np.float64)
    warm = max(0, min(warmup_steps, max_steps))
    lr = np.empty(max_steps, dtype=np.float64)
    if warm:
        lr[:warm] = peak * (steps[:warm] + 1) / warm
    rest = max_steps - warm
    if rest:
        progress = np.arange(rest) / max(1, rest - 1)
        lr[warm:] = peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + np.cos(np.pi * progress)))
    return lr
