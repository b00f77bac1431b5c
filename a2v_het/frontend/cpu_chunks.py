"""The statistics' clip groups split into chunks on CPU, so each chunk's temporaries are reused instead of
page-faulted in.

glibc hands large blocks back to the kernel when they are freed (mmap for single blocks above its threshold, heap
trimming above twice that), so a step that allocates tens of MB of short-lived spectrogram buffers at once pays a
page fault for every 4 KiB of them, every step: measured, 4 ms of the statistics' 8 ms at 48 kHz (4 x 3 s, 2
threads), as much as the arithmetic. Work split into chunks of a few megabytes reuses the same freed blocks from
one chunk to the next. CUDA has a caching allocator, so there a group stays one chunk. The heterodyne's long FFTs
are not chunked: their setup costs more per call than the faults (see :mod:`a2v_het.frontend.heterodyne`).
"""

from __future__ import annotations

import torch
from torch import Tensor

CPU_CHUNK_SAMPLES = 1 << 20
"""Samples (of the input wave) per chunk on CPU: 1048576, four 3 s clips at 48-87 kHz, one clip at 192 kHz and up.
Against 2^18 (one 3 s clip at 48 kHz per chunk), 8-10 % off the whole 48 kHz step (4 x 3 s, 2 threads; fewer, larger
ops) and 3 % at 96 kHz, measured interleaved in one process."""


def clip_chunks(idx: Tensor, samples_per_clip: int) -> list[Tensor]:
    """``idx`` (n,) clip indices -> consecutive chunks of them, each of at most CPU_CHUNK_SAMPLES samples (at least
    one clip); a single chunk off the CPU."""
    if idx.device.type != "cpu":
        return [idx]
    per_chunk = max(1, CPU_CHUNK_SAMPLES // max(1, samples_per_clip))
    return list(idx.split(per_chunk))


def consecutive_run(idx: Tensor) -> slice | None:
    """``idx`` (n,) clip indices -> the slice they form when consecutive and ascending (every CPU chunk of
    :func:`clip_chunks`, every single-rate batch), else None: rows read through the slice are a view, not a copy."""
    first, n = int(idx[0]), len(idx)
    run = torch.arange(first, first + n, device=idx.device)
    return slice(first, first + n) if bool((idx == run).all()) else None
