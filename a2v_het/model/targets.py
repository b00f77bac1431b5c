"""Regression targets from the teacher's layers (data2vec 2.0): instance-norm each of the top-K layers over time,
average, optionally instance-norm the average again. Everything in fp32 with autocast off, statistics over each
clip's valid tokens only, so the amount of padding in a batch never changes a clip's targets."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_instance_norm(x: Tensor, padding_mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Per clip and channel, normalise over the valid time steps: (B, N, D) -> (B, N, D) fp32.

    Biased variance and eps as ``F.instance_norm``. Padded tokens come out as 0; a clip with no valid token (or a
    channel that is constant over time) comes out as 0 too, never NaN.
    """
    x = x.float()
    if padding_mask is None:
        valid = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
    else:
        valid = (~padding_mask).float()
    w = valid[..., None]  # (B, N, 1)
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * w).sum(1, keepdim=True) / count
    var = ((x - mean).square() * w).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * w


def build_targets(layer_outputs: list[Tensor], top_k: int, padding_mask: Tensor | None,
                  instance_norm: bool = True, eps: float = 1e-5) -> Tensor:
    """Targets (B, N, D) fp32 from the teacher's per-block outputs.

    Args:
        layer_outputs: ``depth`` tensors (B, N, D), lowest block first.
        top_k: average the last ``top_k`` of them, each instance-normalised first (their scales differ a lot).
        padding_mask: (B, N) True = padding, excluded from every mean / variance; targets there are 0.
        instance_norm: also instance-normalise the average (data2vec 2.0's ``instance_norm_targets``).
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"top_k={top_k} must lie in [1, {len(layer_outputs)}]")
    with torch.autocast(device_type=layer_outputs[0].device.type, enabled=False):
        y = sum(masked_instance_norm(layer, padding_mask, eps) for layer in layer_outputs[-top_k:]) / top_k
        if instance_norm:
            y = masked_instance_norm(y, padding_mask, eps)
    return y
