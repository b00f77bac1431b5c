"""The heterodyning module: each band [f_k, f_k + W] of each clip is shifted to baseband, everything outside it is
removed, and the result is resampled from the clip's own rate to one fixed rate R >= W (complex) at every input
rate (R = W unless the band is narrower than the band rate; wider bands arrive here as sub-bands of R Hz,
a2v_het/frontend/band_widths.py).

This is the ``band_extraction: fft`` path; the default reads the same bands from the statistics' STFT
(:mod:`a2v_het.frontend.stft_bands`) and sends here only the clips whose rate has no exact STFT geometry.

Fast path. An rfft over a clip of D seconds has bins every 1/D Hz whatever the sample rate, so mixing down by f_k,
low-passing to the band and resampling to W Hz is one rfft per clip, a gather of the W*D bins of each band and a
small inverse FFT of length W*D per band. This is the ideal (brick-wall) version of "multiply by exp(-i 2 pi f_k t),
anti-alias filter, resample_poly" and matches that chain wherever its FIR filter is flat (tests compare them); the
mixing frequency is quantised to the 1/D Hz bin grid (0.33 Hz for a 3 s clip), which is what makes it exact.

Quadrature (complex I/Q) mixing is the default: multiplying by a real cosine instead folds the image band
[f_k - W, f_k] onto the band (a tone at f_k - d appears at d, exactly like one at f_k + d). The seed's cosine mixing
is kept for the ablation; it yields a real signal at 2W Hz, returned as its two polyphase components (even, odd
samples) so that both modes produce the same (B, K, 2, W*D) tensor.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from a2v_het.frontend.cpu_chunks import consecutive_run


def edge_taper(lengths: Tensor, n_samples: int, taper_samples: int) -> Tensor:
    """(b, n_samples) raised-cosine fade-in at 0 and fade-out at each clip's end, zero beyond the end."""
    n = torch.arange(n_samples, device=lengths.device, dtype=torch.float32)[None, :]
    lens = lengths[:, None].float()
    inside = (n < lens).float()
    if taper_samples <= 0:
        return inside
    ramp = lambda x: 0.5 - 0.5 * torch.cos(math.pi * x.clamp(0.0, 1.0))  # noqa: E731
    return ramp((n + 0.5) / taper_samples) * ramp((lens - n - 0.5) / taper_samples) * inside


def apply_edge_taper(x: Tensor, lengths: Tensor, taper_samples: int, inplace: bool = False) -> Tensor:
    """``x * edge_taper(lengths, x.shape[1], taper_samples)`` touching only the faded samples.

    x: (b, n) zero beyond each clip's length (the frontend's input contract). Clips shorter than two fades take the
    full product formula. ``inplace``: fade ``x`` itself (a tensor of the caller's own, nothing differentiates it).
    """
    t = int(taper_samples)
    if t <= 0:
        return x
    short = lengths < 2 * t
    out = x if inplace and not x.requires_grad else x.clone()
    if short.any():
        out[short] = x[short] * edge_taper(lengths[short], x.shape[1], t)
    rows = (~short).nonzero().flatten()
    if rows.numel():
        j = torch.arange(t, device=x.device)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (j.float() + 0.5) / t)
        out[rows, :t] = out[rows, :t] * ramp
        end = lengths[rows, None] - t + j  # the last t samples of each clip
        out[rows[:, None], end] = out[rows[:, None], end] * ramp.flip(0)
    return out


def _group_wave(wave: Tensor, idx: Tensor, n_fft: int) -> Tensor:
    """(b, min(n_fft, T)) fp32 copy of the clips ``idx``: the edge taper then works on it in place."""
    run = consecutive_run(idx)
    x = (wave[run] if run is not None else wave[idx])[:, : min(n_fft, wave.shape[1])]  # wave[idx] copies
    if x.dtype != torch.float32:
        return x.float()  # a copy
    return x.clone() if run is not None else x


def band_bins(spec: Tensor, start: Tensor, m: int, kept: Tensor | None = None) -> Tensor:
    """The rfft bins of every band, each band's bins summed onto m bins when it is wider (folded).

    Args:
        spec: (b, n_bins) complex, one clip's rfft per row.
        start: (b, K) long, each band's first bin (may lie below 0 or past the last bin: those bins read zero).
        m: bins per band at the band rate (the band rate times the analysed seconds).
        kept: (b, K) long, bins each band covers from its start (None: m each). Up to m: the bins from kept on are
            zero. Above m: bin start + j of the band lands on output bin j mod m (the band's spectrum aliased onto
            m bins).
    Returns: (b, K, m) complex, a new tensor.

    Narrow bands are read as one window each of a strided view of the spectrum, with no (b, K, m) index tensor
    and no padded copy of the spectrum (a 500 kHz clip's is 6 MB). A wide band is summed from views of its
    stretch of the spectrum: the bands of one width that start at the same bin in every clip of the group (the
    context bands tile each clip the same way) take one sum over all of those rows at once.
    """
    b, n_bins = spec.shape
    k = start.shape[1]
    device = spec.device
    kept = torch.full_like(start, m) if kept is None else kept
    wide = kept > m  # (b, K)
    rows = torch.arange(b, device=device)[:, None]
    offsets = torch.arange(m, device=device)
    if n_bins >= m:
        bins = spec.unfold(1, m, 1)[rows, start.clamp(0, n_bins - m)]  # (b, K, m), exact where the band fits
        edge = ~wide & ((start < 0) | (start + m > n_bins))
    else:
        bins = spec.new_zeros(b, k, m)
        edge = ~wide
    if bool(edge.any()):  # bands hanging over 0 Hz or the Nyquist bin: read bin by bin, zero outside
        clip, band = edge.nonzero(as_tuple=True)
        pos = start[clip, band][:, None] + offsets  # (E, m)
        inside = (pos >= 0) & (pos < n_bins)
        bins[clip, band] = spec[clip[:, None], pos.clamp(0, n_bins - 1)] * inside
    short = ~wide & (kept < m)
    if bool(short.any()):
        bins = bins.masked_fill(short[..., None] & (offsets >= kept[..., None]), 0)
    for c, k_idx, s, n_kept, every_clip in wide_band_groups(start, kept, m):
        bins[c, k_idx] = fold_bins(spec if every_clip else spec[c], s, n_kept, m)
    return bins


def wide_band_groups(start: Tensor, kept: Tensor, m: int):
    """The bands wider than m bins, grouped by (first bin, bins kept), so that each group is folded in one sum.

    start, kept: (b, K) long. Yields (clips (n,), bands (n,), first bin, bins kept, every_clip): ``every_clip``
    when the group holds one band of each of the b clips, in order (the context bands of one rate), so the
    whole spectrum can be folded without selecting its rows.
    """
    b, device = start.shape[0], start.device
    clip, band = (kept > m).nonzero(as_tuple=True)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(start[clip, band].tolist(), kept[clip, band].tolist())):
        groups.setdefault(key, []).append(i)
    for (s, n_kept), entries in groups.items():
        e = torch.tensor(entries, device=device)
        c = clip[e]
        every_clip = len(entries) == b and bool((c == torch.arange(b, device=device)).all())
        yield c, band[e], s, n_kept, every_clip


def fold_bins(spec: Tensor, start: int, n_kept: int, m: int) -> Tensor:
    """(..., n_bins) complex -> (..., m): sum over bins start .. start + n_kept - 1 (those inside the spectrum) of
    bin start + j onto output bin j mod m, from views of the spectrum (no copy of the stretch)."""
    n_bins, lead = spec.shape[-1], spec.shape[:-1]
    lo, hi = max(start, 0), min(start + n_kept, n_bins)
    out = spec.new_zeros(*lead, m)
    j = lo - start  # output bin of spectrum bin lo, before the mod
    while lo < hi:  # at most one partial window at each end; the whole windows in one strided sum
        head = j % m
        if head == 0 and hi - lo >= m:
            whole = (hi - lo) // m
            out += spec[..., lo: lo + whole * m].reshape(*lead, whole, m).sum(-2)
            lo, j = lo + whole * m, j + whole * m
        else:
            n = min(m - head, hi - lo)
            out[..., head: head + n] += spec[..., lo: lo + n]
            lo, j = lo + n, j + n
    return out


def heterodyne_bands(
    wave: Tensor,
    sample_rate: Tensor,
    lengths: Tensor,
    band_start_hz: Tensor,
    band_width_hz: float,
    n_out: int,
    mixing: Literal["quadrature", "cosine"] = "quadrature",
    taper_s: float = 0.0,
    straight_through: bool = False,
    out_lengths: Tensor | None = None,
    pass_width_hz: Tensor | None = None,
) -> Tensor:
    """Mix every band to baseband and resample it to ``band_width_hz``.

    Args:
        wave: (B, T) float, zero-padded after ``lengths[b]``.
        sample_rate: (B,) int Hz.
        lengths: (B,) samples.
        band_start_hz: (B, K) f_k in Hz; each band must satisfy f_k + W <= sample_rate / 2.
        band_width_hz: W in Hz, also the output rate (the band rate R).
        n_out: output samples per band; the clips are zero-padded to D' = n_out / W seconds.
        pass_width_hz: (B, K) Hz: band k covers [f_k, f_k + pass_width_hz] instead of [f_k, f_k + W]. Up to W: a
            narrower band sampled at the band rate (0 gives an all-zero band). Above W (quadrature only): a wide
            band folded onto the band rate, the sum of the signals of its ceil(width / W) adjacent sub-bands of W Hz
            (its spectrum aliased onto W Hz, as decimating it without an anti-alias filter would), computed as one
            inverse FFT of the summed bins. None: every band passes its whole W.
        mixing: "quadrature" (complex, default) or "cosine" (real, the seed's).
        taper_s: raised-cosine fade at both ends of each clip, seconds.
        straight_through: let gradients reach ``band_start_hz`` through d/df exp(-i 2 pi f t) (quadrature only);
            otherwise the band positions get no gradient from the output.
        out_lengths: (B,) output samples of each clip (<= n_out; default n_out for every clip). Clip b is analysed
            over its own out_lengths[b] / W seconds and is zero after that, so its band signal is the same alone
            or batched with longer clips (the FFT length sets the bin grid the band starts are rounded to, and a
            longer FFT would shift each band by up to half a bin and rotate its complex envelope).
    Returns: (B, K, 2, n_out) fp32. quadrature: [I, Q] of the complex envelope, amplitude-calibrated (a tone
        A cos(2 pi (f_k + d) t) gives A exp(i 2 pi d t)); cosine: [even, odd] samples of the real signal at 2W Hz
        (the same tone gives A cos(2 pi d t)).
    """
    if mixing not in ("quadrature", "cosine"):
        raise ValueError(f"mixing must be 'quadrature' or 'cosine', got {mixing!r}")
    if straight_through and mixing != "quadrature":
        raise ValueError("straight_through gradients are only defined for quadrature mixing")
    if pass_width_hz is not None and mixing != "quadrature" and bool((pass_width_hz > band_width_hz + 1e-3).any()):
        raise ValueError("bands wider than the band rate (folded) are only defined for quadrature mixing")
    b_total, k_bands = band_start_hz.shape
    if out_lengths is None:
        out_lengths = torch.full((b_total,), n_out, dtype=torch.long, device=wave.device)
    out_lengths = out_lengths.long().clamp(1, n_out)
    # Every clip belongs to one group below, which writes its first m_out samples; only the tails past them are
    # zeroed (a zero fill of the whole output is a pass over fresh pages).
    out = wave.new_empty(b_total, k_bands, 2, n_out, dtype=torch.float32)
    with torch.autocast(device_type=wave.device.type, enabled=False):
        groups = torch.stack([sample_rate.long(), out_lengths], dim=1).unique(dim=0).tolist()
        # One FFT per group, not per CPU chunk: a long FFT's setup costs more than the page faults chunking saves
        # (an rfft of 144000 points: 1.2 ms for four clips at once, 6.9 ms one clip at a time, measured).
        for sr, m_out in groups:
            idx = ((sample_rate == sr) & (out_lengths == m_out)).nonzero().flatten()
            if m_out < n_out:
                out[idx, :, :, m_out:] = 0.0
            n_fft = int(round(m_out / band_width_hz * sr))
            x = _group_wave(wave, idx, n_fft)  # (b, <= n_fft) fp32, a tensor of its own
            x = apply_edge_taper(x, lengths[idx], int(round(taper_s * sr)), inplace=True)
            spec = torch.fft.rfft(x, n=n_fft)  # (b, n_fft//2 + 1), bins every sr / n_fft ~= 1 / D' Hz
            n_bins = spec.shape[1]
            start = torch.round(band_start_hz[idx].detach().float() * (n_fft / sr)).long()  # (b, K)
            scale = 2.0 * m_out / n_fft
            # Bins kept per band: offsets d < pass_width * D' (all m_out for a full band).
            kept = None if pass_width_hz is None else torch.round(
                pass_width_hz[idx].double() * (m_out / band_width_hz)).long()  # (b, K)
            if mixing == "quadrature":
                bins = band_bins(spec, start, m_out, kept)  # (b, K, m_out)
                # Scaled in place where nothing differentiates it, and [I, Q] copied once into ``out`` from a view:
                # no extra (b, K, m) temporaries (each costs page faults on CPU).
                z = torch.fft.ifft(bins, dim=-1)
                z = z * scale if z.requires_grad else z.mul_(scale)
                if straight_through:
                    t = torch.arange(m_out, device=wave.device, dtype=torch.float32) / band_width_hz
                    delta = band_start_hz[idx].float() - band_start_hz[idx].detach().float()
                    z = z * torch.polar(torch.ones_like(t), -2 * math.pi * delta[..., None] * t)
                out[idx, :, :, :m_out] = torch.view_as_real(z).transpose(-1, -2)
            else:
                # One zero bin appended: indices past the Nyquist bin point there instead of wrapping.
                spec = torch.cat([spec, spec.new_zeros(spec.shape[0], 1)], dim=1)
                kept = None if kept is None else kept[..., None]  # (b, K, 1)
                d = torch.arange(m_out + 1, device=wave.device)
                up = start[..., None] + d
                up = torch.where(up < n_bins, up, torch.full_like(up, n_bins))
                down = start[..., None] - d
                down_pos = down.abs().clamp(max=n_bins)
                if kept is not None:
                    up = torch.where(d < kept, up, torch.full_like(up, n_bins))
                    down_pos = torch.where(d < kept, down_pos, torch.full_like(down_pos, n_bins))
                spec_b = spec[:, None, :].expand(-1, k_bands, -1)
                upper = torch.gather(spec_b, 2, up)
                lower = torch.gather(spec_b, 2, down_pos)
                # cos mixing adds X(f_k + d) and X(d - f_k) = conj X(f_k - d) (for f_k - d < 0: X(d - f_k)).
                lower = torch.where(down >= 0, lower.conj(), lower)
                y = torch.fft.irfft(upper + lower, n=2 * m_out, dim=-1) * scale
                out[idx, :, :, :m_out] = y.reshape(len(idx), k_bands, m_out, 2).transpose(2, 3)
    return out


def valid_output_samples(lengths: Tensor, sample_rate: Tensor, rate_hz: float) -> Tensor:
    """Samples at ``rate_hz`` that cover each clip: ceil(lengths / sample_rate * rate_hz)."""
    return torch.ceil(lengths.double() / sample_rate.double() * rate_hz - 1e-9).long()
