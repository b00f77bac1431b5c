"""Batching decoded clips of different sample rates and lengths.

Mixed-rate batches are padded, not bucketed: the heterodyne frontend takes ``(wave, sample_rate, lengths)`` with a
different rate per row and produces the same token count for every clip of a given duration, so grouping clips by
rate would only cost shuffling quality. The price is padding: a 8 kHz clip next to a 96 kHz clip occupies a row of
the 96 kHz length, which the frontend ignores via ``lengths``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor


def collate_audio(samples: Sequence[dict[str, Any]], num_skipped: int = 0) -> dict[str, Any]:
    """Stack decoded clips into one zero-padded batch.

    Args:
        samples: B >= 1 dicts with ``key`` (str), ``wave`` (float32 array (T_b,)), ``sample_rate`` (int, Hz) and
            optionally ``events`` (list of event dicts, times in seconds from the clip start), ``labelled`` (bool)
            and ``meta`` (dict).
        num_skipped: corrupt samples skipped by the stream since the previous batch (see ``stream.py``).
    Returns: dict with
        ``wave``: float32 (B, T_max), zero after each clip's end;
        ``lengths``: int64 (B,) valid samples per row;
        ``sample_rate``: int64 (B,) Hz;
        ``duration_s``: float, seconds of the longest clip (max over b of lengths[b] / sample_rate[b]);
        ``keys``: list[str]; ``events``: list[list[dict]]; ``labelled``: bool (B,); ``meta``: list[dict];
        ``num_skipped``: int.
    Raises: ValueError on an empty list or a wave that is not 1-D.
    """
    if len(samples) == 0:
        raise ValueError("collate_audio needs at least one sample")
    waves = [np.asarray(s["wave"], dtype=np.float32) for s in samples]
    for s, w in zip(samples, waves):
        if w.ndim != 1:
            raise ValueError(f"sample {s.get('key')!r}: wave must be 1-D (T,), got shape {w.shape}")
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64)
    sample_rate = torch.tensor([int(s["sample_rate"]) for s in samples], dtype=torch.int64)
    batch = _padded(waves, int(lengths.max()))
    return {
        "wave": batch,
        "lengths": lengths,
        "sample_rate": sample_rate,
        "duration_s": float((lengths.double() / sample_rate.double()).max()),
        "keys": [str(s["key"]) for s in samples],
        "events": [list(s.get("events", [])) for s in samples],
        "labelled": torch.tensor([bool(s.get("labelled", False)) for s in samples], dtype=torch.bool),
        "meta": [dict(s.get("meta", {})) for s in samples],
        "num_skipped": int(num_skipped),
    }


def _padded(waves: Sequence[np.ndarray], width: int) -> Tensor:
    """(B, width) float32: row b is ``waves[b]`` followed by zeros.

    In the main process the buffer is numpy zeros (calloc: the padding stays the kernel's zero page until written,
    where torch.zeros writes every byte first; a 96 kHz clip pads 8 kHz rows 12x). In a DataLoader worker it is
    allocated in shared memory, as torch's own default_collate does, so handing the batch to the main process does
    not copy it into shared memory a second time; each byte is then written once (copy or zero).
    """
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # private API: fall back if a release drops it
    if torch.utils.data.get_worker_info() is None or new_shared is None:
        padded = np.zeros((len(waves), width), dtype=np.float32)
        for b, w in enumerate(waves):
            padded[b, : w.shape[0]] = w
        return torch.from_numpy(padded)
    storage = new_shared(len(waves) * width * 4)
    batch = torch.empty(0, dtype=torch.float32).set_(storage, 0, (len(waves), width), (width, 1))
    for b, w in enumerate(waves):
        batch[b, : w.shape[0]] = torch.from_numpy(w)
        batch[b, w.shape[0] :] = 0.0
    return batch


def normalize_wave(wave: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """The one per-clip z-norm: zero mean and unit variance over the valid samples; padding stays 0.
    (B, T) -> (B, T) fp32. The model applies it before the frontend (``model.z_normalize``).

    ``eps`` is added to the variance (as in data2vec's ``F.layer_norm`` of the wave) and acts as a noise floor:
    silence stays 0 instead of NaN, and a near-silent clip (variance << eps) is not blown up to unit variance.
    """
    if wave.dim() != 2:
        raise ValueError(f"wave must be (B, T), got shape {tuple(wave.shape)}")
    with torch.autocast(device_type=wave.device.type, enabled=False):
        t = wave.shape[1]
        valid = (torch.arange(t, device=wave.device)[None, :] < lengths[:, None]).float()
        x = wave.float() * valid
        count = valid.sum(1, keepdim=True).clamp_min(1.0)
        mean = x.sum(1, keepdim=True) / count
        var = ((x - mean).square() * valid).sum(1, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + eps) * valid


znorm = normalize_wave  # the name a2v_het.data exported first
