"""The statistics' clip groups split into chunks on CPU, so each chunk's temporaries are reused instead of
page-faulted in.

glibc hands large blocks back to the kernel when they are freed (mmap for single blocks above its threshold, heap
trimming above twice that), so a step that allocates tens of MB of short-lived spectrogram buffers at once pays a
page fault for every 4 KiB of them, every step: measured, 4 ms of the statistics' 8 ms at 48 kHz (4 x 3 s, 2
threads), as much as the arithmetic. Work split into chunks of a few megabytes reuses the same freed blocks from
one chunk to the next. CUDA has a caching allocator, so there a group stays one chunk. The heterodyne's long FFTs
are not chunked: their setup costs more per call than the faults (see :mod:`a2v_het.frontend.heterodyne`).

Chunks do not help the buffers that must all live at once: the heterodyne keeps every chunk's complex STFT until
its bands are read from it (12 MB a 3 s clip at 500 kHz). Those, and the largest per-chunk buffers, come from a
:class:`CpuWorkspace` the frontend keeps from step to step: at 500 kHz (4 x 3 s, 2 threads) 0.89x the step's time
and 22,600 -> 800 page faults per step (BENCHMARKS.md, "Frontend cost").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CPU_CHUNK_SAMPLES = 1 << 22
"""Samples (of the input wave) per chunk on CPU: 4194304, four 3 s clips up to 349 kHz, two at 500 kHz. Against
2^18 (one 3 s clip at 48 kHz per chunk), 8-10 % off the whole 48 kHz step (4 x 3 s, 2 threads; fewer, larger ops).
Against 2^20, once the STFT's buffers came from the :class:`CpuWorkspace`: 0.92x the step at 192 kHz, 0.96x at 96,
0.96-1.0x at 250-500 kHz; 2^23 (all four 500 kHz clips at once) 1.13x at 500 kHz, its evidence temporaries faulted
in anew (measured interleaved in one process)."""


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


class CpuWorkspace:
    """Named CPU buffers kept from one call to the next, handed out as views of the requested shape.

    A buffer grows to the largest request made of it and is never shrunk (:meth:`release` frees all): the memory
    held between steps is the peak the step needs anyway. A view handed out stays valid until the same name is
    requested again, so every name is used for one array per step (the caller's contract).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised contiguous (shape) tensor of ``dtype`` in buffer ``name``."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = self._buffers[name] = torch.empty(max(numel, 1), dtype=dtype)
        return buf[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def __deepcopy__(self, memo: dict) -> "CpuWorkspace":
        return CpuWorkspace()  # scratch, not state: a copied module (an EMA teacher) starts with its own, empty

    def __getstate__(self) -> dict:
        return {"_buffers": {}}

    def release(self) -> None:
        """Free every buffer (the next requests allocate afresh)."""
        self._buffers.clear()
