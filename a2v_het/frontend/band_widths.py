"""Band widths: the context bands' width, and how a wide band is cut into sub-bands at one fixed rate.

One width cannot serve every recording. Eight 2 kHz bands hold 16 kHz: a sixth of a 192 kHz recording's band,
and nothing like a bat's 28-113 kHz FM sweep. Bands wide enough to span a 500 kHz recording would give up the
frequency resolution a detector needs on the narrowband calls of every other one (measured, BENCHMARKS.md). So a
clip gets two kinds of band (docs/frontends/heterodyne.md "Band widths"):

- K detail bands of ``band_width_hz`` (2 kHz), placed by the band picker on the calls;
- J context bands that tile the clip's whole band evenly, at the narrowest width of a set (octaves, 1-64 kHz) for
  which J * W_c >= nyquist - f_min (:func:`clip_band_width`): whatever a clip holds lies inside some band.

The projection reads every band at one complex rate R (the detail width), whatever its width, so its weights are
the same for every band: a band of W > R Hz is heterodyned as W / R adjacent sub-bands of R Hz each
(:func:`split_sub_bands`), and a band of W < R Hz is sampled at R with nothing above W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def clip_band_width(sample_rate: Tensor, widths_hz: tuple[float, ...], num_bands: int, band_min_hz: float
                    ) -> Tensor:
    """(B,) Hz: the width at which ``num_bands`` bands tile each clip's band.

    The narrowest of ``widths_hz`` with num_bands * W >= nyquist - band_min_hz and W <= nyquist - band_min_hz;
    when no width spans the clip, the widest that fits; when none fits, the narrowest (the picker then rejects the
    clip with a clear error).

    Args:
        sample_rate: (B,) Hz.
        widths_hz: candidate widths in Hz.
        num_bands: K.
        band_min_hz: f_min, the lowest band start.
    """
    w = torch.tensor(sorted(widths_hz), dtype=torch.float64, device=sample_rate.device)  # (J,)
    span = sample_rate.double()[:, None] / 2 - band_min_hz  # (B, 1) Hz a clip's bands can start in and reach
    fits = w[None, :] <= span + 1e-6
    spans = fits & (num_bands * w[None, :] >= span - 1e-6)
    j_span = torch.where(spans, torch.arange(len(w), device=w.device), len(w)).amin(-1)  # narrowest that spans
    j_fit = torch.where(fits, torch.arange(len(w), device=w.device), -1).amax(-1)  # widest that fits
    j = torch.where(j_span < len(w), j_span, j_fit.clamp(min=0))
    return w[j].float()


@dataclass
class SubBands:
    """The bands of a batch cut into sub-bands of at most the band rate R Hz; S = the most sub-bands of any clip."""

    start_hz: Tensor  # (B, S) Hz, each sub-band's lower edge
    width_hz: Tensor  # (B, S) Hz, <= R (0 for padding)
    band_index: Tensor  # (B, S) long, the band (0..K-1) each sub-band belongs to; K for padding
    index_in_band: Tensor  # (B, S) long, j: the sub-band is the band's j-th from its start (0 for padding)
    valid: Tensor  # (B, S) bool, False for padding


def split_sub_bands(band_start_hz: Tensor, band_width_hz: Tensor, band_rate_hz: float) -> SubBands:
    """Cut each band [f_k, f_k + W_k] into ceil(W_k / R) sub-bands [f_k + j R, f_k + j R + min(R, W_k - j R)].

    Args:
        band_start_hz: (B, K) Hz (may carry gradient; the sub-band starts keep it).
        band_width_hz: (B, K) Hz.
        band_rate_hz: R, the widest sub-band (the projection's band rate).
    Returns: :class:`SubBands`; with every W_k <= R it is the bands themselves (S = K, band_index = 0..K-1).
    """
    b, k = band_start_hz.shape
    counts = torch.ceil(band_width_hz.detach().double() / band_rate_hz - 1e-9).long().clamp(min=1)  # (B, K)
    s = int(counts.sum(-1).max())
    ends = counts.cumsum(-1)  # (B, K)
    slot = torch.arange(s, device=band_start_hz.device)
    band_index = torch.searchsorted(ends, slot.expand(b, -1).contiguous(), right=True)  # (B, S), K past the end
    valid = band_index < k
    owner = band_index.clamp(max=k - 1)
    first = torch.gather(ends - counts, 1, owner)  # first slot of each sub-band's band
    j_long = torch.where(valid, slot[None, :] - first, torch.zeros_like(first))  # sub-band number within its band
    j = j_long.double()
    w_band = torch.gather(band_width_hz.double(), 1, owner)
    width = (w_band - j * band_rate_hz).clamp(min=0.0, max=band_rate_hz)
    start = torch.gather(band_start_hz, 1, owner) + (j * band_rate_hz).to(band_start_hz.dtype)
    return SubBands(start_hz=torch.where(valid, start, torch.zeros_like(start)),
                    width_hz=torch.where(valid, width, torch.zeros_like(width)).float(),
                    band_index=torch.where(valid, band_index, torch.full_like(band_index, k)), index_in_band=j_long,
                    valid=valid)
