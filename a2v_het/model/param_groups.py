"""The one weight-decay split of every objective's optimizer groups (pretraining, coverage, fine-tuning)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def weight_decay_groups(params: Iterable[nn.Parameter], weight_decay: float, **extra) -> list[dict]:
    """AdamW groups: ``weight_decay`` on matrices and conv kernels (ndim >= 2), none on 1-D and scalar parameters
    (biases, norms, ALiBi scales, the mask embedding). Frozen parameters are left out, and so are empty groups;
    ``extra`` keys (e.g. ``name``) go into both groups. Parameter order is kept (checkpoints depend on it)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **extra},
              {"params": no_decay, "weight_decay": 0.0, **extra}]
    return [g for g in groups if g["params"]]
