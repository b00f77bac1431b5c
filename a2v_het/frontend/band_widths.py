"""Band widths: how wide each clip's bands are, and how a wide band is cut into sub-bands at one fixed rate.

One width cannot serve every recording: eight 2 kHz bands hold 16 kHz, a sixth of a 192 kHz recording's band and
nothing like a bat's 28-113 kHz FM sweep, while eight 16 kHz bands do not fit in an 8 kHz collar recording at all.
So each clip's K bands share a width W chosen from a set (octaves, 0.5-32 kHz by default): the narrowest for which
the K bands can span the clip's whole band, K * W >= nyquist - f_min, or the widest that fits when none can. Below
that width greedy bands would leave calls out wherever a clip's calls spread over more than K * W Hz; above it
they would give up frequency resolution (the same C channels per band for more Hz) for nothing they could add
(docs/frontends/heterodyne.md "Band widths" has the measurements).

The projection reads every band at one complex rate R (``band_rate_hz``), whatever its width, so its weights are
the same for every width: a band of W > R Hz is heterodyned as W / R adjacent sub-bands of R Hz each, and a band
of W < R Hz is sampled at R with nothing above W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from a2v_het.frontend.hypernetwork import band_capture, valid_starts


def clip_band_width(sample_rate: Tensor, widths_hz: tuple[float, ...], num_bands: int, band_min_hz: float,
                    band_span: float = 1.0) -> Tensor:
    """(B,) Hz: the band width of each clip.

    The narrowest of ``widths_hz`` with num_bands * W >= band_span * (nyquist - band_min_hz) and
    W <= nyquist - band_min_hz;
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
    spans = fits & (num_bands * w[None, :] >= band_span * span - 1e-6)
    j_span = torch.where(spans, torch.arange(len(w), device=w.device), len(w)).amin(-1)  # narrowest that spans
    j_fit = torch.where(fits, torch.arange(len(w), device=w.device), -1).amax(-1)  # widest that fits
    j = torch.where(j_span < len(w), j_span, j_fit.clamp(min=0))
    return w[j].float()


@torch.no_grad()
def evidence_band_width(statistic: Tensor, sample_rate: Tensor, span_width_hz: Tensor, widths_hz: tuple[float, ...],
                        num_bands: int, band_min_hz: float, grid_hz: float, capture_fraction: float) -> Tensor:
    """(B,) Hz: the narrowest width, at most the clip's spanning width, whose K bands still hold its calls.

    For each candidate width W (from ``widths_hz``, below ``span_width_hz``), K hard bands are placed greedily (each
    on the most statistic not yet held, [f, f + W]); W is taken when they hold >= ``capture_fraction`` of what K
    bands of the spanning width hold. A clip whose calls sit in a few narrow places (a bird at 3 kHz in a 384 kHz
    recording) gets narrow bands and their frequency resolution; one whose calls spread (a bat's 80 kHz sweeps)
    keeps wide bands; a clip with nothing to hold (silence, stationary noise) keeps the spanning width.

    Args:
        statistic: (B, G) >= 0 on the analysis grid, zero above each clip's Nyquist (the call evidence).
        sample_rate: (B,) Hz.
        span_width_hz: (B,) the spanning width (:func:`clip_band_width`), the widest a clip can get.
        widths_hz: the candidate widths, Hz.
        num_bands, band_min_hz, grid_hz: K, f_min and the grid spacing (Hz).
        capture_fraction: in (0, 1].
    """
    b, g = statistic.shape
    freqs = torch.arange(g, device=statistic.device, dtype=torch.float32) * grid_hz
    grid = torch.arange(g, device=statistic.device)[None, :]
    values = statistic.float().clamp(min=0.0)

    def greedy_hold(width: Tensor) -> Tensor:  # (B,) statistic held by K greedy hard bands of ``width``
        bins = torch.round(width / grid_hz).long()
        ok = valid_starts(freqs, sample_rate, band_min_hz, width)
        residual = values.clone()
        held = torch.zeros(b, device=statistic.device)
        for _ in range(num_bands):
            best, start = band_capture(residual, bins).masked_fill(~ok, -1.0).max(-1)
            held += best.clamp(min=0.0)
            residual.masked_fill_((grid >= start[:, None]) & (grid <= (start + bins)[:, None]), 0.0)
        return held

    span_width_hz = span_width_hz.float()
    reference = greedy_hold(span_width_hz)
    out = span_width_hz.clone()
    for w in sorted(set(widths_hz), reverse=True):  # the narrowest width that holds enough is written last
        narrower = (w < span_width_hz - 1e-3) & (reference > 0)
        if not narrower.any():
            continue
        held = greedy_hold(torch.where(narrower, torch.full_like(span_width_hz, w), span_width_hz))
        out = torch.where(narrower & (held >= capture_fraction * reference), torch.full_like(out, w), out)
    return out


@dataclass
class SubBands:
    """The bands of a batch cut into sub-bands of at most ``band_rate_hz`` Hz; S = the most sub-bands of any clip."""

    start_hz: Tensor  # (B, S) Hz, each sub-band's lower edge
    width_hz: Tensor  # (B, S) Hz, <= band_rate_hz (0 for padding)
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
