"""The projecting module: 2(K + J) band channels at the band rate R -> tokens of width D at the token rate.

Each band's [I, Q] pair goes through the same strided conv stack (bands are a batch dimension, so the weights do
not care which slot a band sits in), reaching the token rate. Every band's features are then shifted by an
embedding of where the band sits (f_k in Hz, as sinusoids on a log-spaced set of scales): without it, a call at
2 kHz and one at 20 kHz would look identical to the encoder after mixing down. Finally the K band feature vectors
of each token are concatenated and projected to D.

A band wider than R (a context band) comes as several sub-bands of R Hz (a2v_het/frontend/band_widths.py). By
default (``fold``) their signals are summed into one signal at R before the convs: the band's spectrum aliased onto
R Hz, so every band costs the convs once. With ``max`` (``mean``) each sub-band goes through the same convs and gets
the embedding of its own start, and the band's features are their element-wise maximum (mean) per token. Either
way the weights are the same for every width, and a band of exactly R Hz (one sub-band) is left as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from a2v_het.frontend.conv_extractor import masked_instance_norm


def factor_strides(ratio: int) -> list[int]:
    """Conv strides from the band rate down to the token rate: one large first stride (ratio / 2, a learned
    filterbank with windows of 2 tokens and a hop of half a token), then 2. A conv's cost grows with its input
    length, not its stride, so down-sampling early is what keeps the stack cheap. ratio 40 -> [20, 2]."""
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    if ratio == 1:
        return []
    if ratio % 2 or ratio == 2:
        return [ratio]
    return [ratio // 2, 2]


def frequency_embedding(freq_hz: Tensor, dim: int, max_hz: float) -> Tensor:
    """(...,) Hz -> (..., dim) sinusoids of f / max_hz at scales 2^0 .. 2^(dim/2 - 1)."""
    half = dim // 2
    scales = (2.0 ** torch.arange(half, device=freq_hz.device, dtype=torch.float32)) * math.pi
    x = (freq_hz.float() / max_hz)[..., None] * scales
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


def fold_sub_bands(bands: Tensor, start_hz: Tensor, band_index: Tensor, index_in_band: Tensor, num_bands: int
                   ) -> tuple[Tensor, Tensor]:
    """Each band's sub-band signals summed into one signal at the band rate: its spectrum folded (aliased) onto R Hz,
    as decimating it without an anti-alias filter would. bands (B, S, 2, L), start_hz / band_index / index_in_band
    (B, S) -> (B, K, 2, L) and each band's start (B, K), the start of its first sub-band."""
    b, s, _, length = bands.shape
    real = band_index < num_bands
    slots = (torch.arange(b, device=bands.device)[:, None] * num_bands + band_index.clamp(max=num_bands - 1))
    rows = real.flatten().nonzero().flatten()
    slot = slots.flatten()[rows]
    folded = bands.new_zeros(b * num_bands, 2, length).index_add(0, slot, bands.reshape(b * s, 2, length)[rows])
    first = (real & (index_in_band == 0)).flatten().nonzero().flatten()
    starts = start_hz.new_zeros(b * num_bands).index_copy(0, slots.flatten()[first], start_hz.flatten()[first])
    return folded.view(b, num_bands, 2, length), starts.view(b, num_bands)


class SameStrideConv(nn.Module):
    """Conv1d with kernel 2*stride whose output has exactly L / stride samples (L a multiple of stride)."""

    def __init__(self, ch_in: int, ch_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.kernel = 2 * stride
        extra = self.kernel - self.stride
        # An even stride pads both sides alike: the conv pads by itself (no padded copy of x, forward or backward).
        self.pad = None if extra % 2 == 0 else (extra // 2, extra - extra // 2)
        self.conv = nn.Conv1d(ch_in, ch_out, self.kernel, stride=stride, padding=extra // 2 if self.pad is None else 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x if self.pad is None else nn.functional.pad(x, self.pad))


class MaskedInstanceNorm(nn.Module):
    """Per-clip, per-channel norm over each clip's valid frames only (GroupNorm with groups == channels, whose
    statistics would otherwise include the zeros a batch pads shorter clips with)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor, valid_frames: Tensor | None) -> Tensor:
        """x (B, C, L), valid_frames (B,) int (None: all L frames valid) -> (B, C, L), statistics in fp32."""
        frames = torch.arange(x.shape[2], device=x.device)[None, :]
        valid = frames < (valid_frames[:, None] if valid_frames is not None else x.shape[2])
        return masked_instance_norm(x, valid, self.weight, self.bias, self.eps)


class BandProjection(nn.Module):
    def __init__(self, num_bands: int, band_rate_hz: float, token_rate: float, channels: int, dim: int,
                 band_embedding_dim: int, max_hz: float, sub_band_pooling: str = "max"):
        super().__init__()
        if sub_band_pooling not in ("max", "mean", "fold"):
            raise ValueError(f"sub_band_pooling must be 'max', 'mean' or 'fold', got {sub_band_pooling!r}")
        self.sub_band_pooling = sub_band_pooling
        ratio = band_rate_hz / token_rate
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"band rate {band_rate_hz} Hz is not a whole multiple of the token rate {token_rate} Hz")
        self.strides = factor_strides(int(round(ratio)))
        self.max_hz = max_hz
        self.num_bands = num_bands
        self.band_embedding_dim = band_embedding_dim
        convs: list[nn.Module] = []
        ch = 2
        for i, s in enumerate(self.strides or [1]):
            convs.append(SameStrideConv(ch, channels, s))
            # Group norm over time on the first layer (as wav2vec 2.0): removes each band's gain.
            convs.append(MaskedInstanceNorm(channels) if i == 0 else nn.Identity())
            convs.append(nn.GELU())
            ch = channels
        self.convs = nn.Sequential(*convs)
        self.band_embed = nn.Linear(band_embedding_dim, channels)
        self.out = nn.Linear(num_bands * channels, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, bands: Tensor, band_start_hz: Tensor, valid_tokens: Tensor | None = None,
                band_index: Tensor | None = None, index_in_band: Tensor | None = None) -> Tensor:
        """bands (B, S, 2, L) at the band rate, band_start_hz (B, S) each band's (or sub-band's) lower edge in Hz,
        valid_tokens (B,) tokens inside each clip (None: all), band_index (B, S) long, the band 0..K-1 each
        sub-band belongs to, K for padding, and index_in_band (B, S) its place j in its band (both None: S = K
        bands, one each) -> tokens (B, L / prod(strides), D). The norm only sees each clip's valid frames, so a
        clip's valid tokens do not depend on the padding of the batch (nor on the sub-bands of the other clips)."""
        b, s, _, length = bands.shape
        k = self.num_bands
        if self.sub_band_pooling == "fold" and band_index is not None and s != k:
            bands, band_start_hz = fold_sub_bands(bands, band_start_hz, band_index, index_in_band, k)
            band_index = index_in_band = None
            s = k
        one_each = band_index is None or s == k  # S = K sub-bands of K bands: one each
        padded = not one_each and bool((band_index >= k).any())
        rows = (band_index < k).flatten().nonzero().flatten() if padded else None  # the real sub-bands
        h = bands.reshape(b * s, 2, length)
        if rows is not None:
            h = h[rows]
        frames_per_token = math.prod(self.strides) if self.strides else 1
        valid = None
        if valid_tokens is not None and bool((valid_tokens * frames_per_token >= length).all()):
            valid_tokens = None  # every clip fills the batch: nothing to mask
        for module in self.convs:
            if isinstance(module, SameStrideConv):
                frames_per_token //= module.stride
                if valid_tokens is not None:
                    valid = (valid_tokens * frames_per_token).repeat_interleave(s)  # (B*S,) frames after this conv
                    valid = valid if rows is None else valid[rows]
            if isinstance(module, MaskedInstanceNorm):
                h = module(h, valid)
            else:
                h = module(h)
            if isinstance(module, nn.GELU) and valid is not None:
                # Frames past a clip's end must read as zeros to the next conv, exactly as the zero padding of a
                # clip on its own does (after the norm and GELU they would not be zero).
                h = h * (torch.arange(h.shape[2], device=h.device)[None, None, :] < valid[:, None, None]).to(h.dtype)
        emb = self.band_embed(frequency_embedding(band_start_hz, self.band_embedding_dim, self.max_hz))  # (B, S, C)
        if one_each:
            h = h.reshape(b, k, h.shape[1], h.shape[2]) + emb[..., None]
        else:
            h = h + (emb.reshape(b * s, -1) if rows is None else emb.reshape(b * s, -1)[rows])[..., None]
            # Pooled over each band's sub-bands, laid out as (B, K, m_max) slots; empty slots are -inf for the
            # maximum (never taken) and 0 for the mean (divided by the band's own count).
            m_max = int(index_in_band.max()) + 1
            slots = ((torch.arange(b, device=h.device)[:, None] * k + band_index) * m_max + index_in_band).flatten()
            if rows is not None:
                slots = slots[rows]
            use_max = self.sub_band_pooling == "max"
            if m_max * k == s and not padded:  # every band has m_max sub-bands, in order: a plain view
                grid = h
            else:
                empty = float("-inf") if use_max else 0.0
                grid = h.new_full((b * k * m_max, h.shape[1], h.shape[2]), empty).index_copy(0, slots, h)
            grid = grid.view(b, k, m_max, h.shape[1], h.shape[2])
            if use_max:
                h = grid.amax(dim=2)
            else:
                counts = torch.zeros(b * k * m_max, device=h.device).index_fill_(0, slots, 1.0).view(b, k, m_max)
                h = grid.sum(dim=2) / counts.sum(-1).clamp(min=1.0)[..., None, None]
        h = h.permute(0, 3, 1, 2).reshape(b, h.shape[3], k * h.shape[2])  # (B, N, K*C)
        return self.norm(self.out(h))
