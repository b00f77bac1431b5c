"""Band signals read from the statistics' STFT, instead of one long FFT per clip (``band_extraction: stft``).

The picker already needs an STFT of every clip (a periodic Hann window of N samples, 20 ms, every H = N / 2 samples).
Frame t's bins s .. s + m - 1 (m = W x window: 40 bins of 50 Hz for a 2 kHz band) are that frame's share of the
band: their inverse DFT of length m is the band-passed, windowed frame mixed down by s bins and decimated to W Hz
(exactly, since only m bins are left). The window is a partition of unity at hop N / 2 (w(n) + w(n + N/2) = 1), so
the frames' band signals, overlap-added every m / 2 output samples, are the band signal of the whole clip:

    z(q) = 2 m / N  sum_t  (-1)^(s t)  IDFT_m[X_t(s .. s + m - 1)](q - t m / 2)

(-1)^(s t) = exp(-i 2 pi s t H / N) moves frame t's time origin, t H samples into the clip, back to the clip's
start, as the long FFT's single origin has it; 2 m / N calibrates a tone A cos(2 pi f t) to A exp(i 2 pi d t), the
heterodyning's convention. A wide band (n x m bins) is folded onto m bins as there: its bins summed modulo m.

The mixing by whole bins is completed by a rotation of the band signal by the rest of each band's start (under
half a bin, 25 Hz), so a band starts where the picker put it, not on the nearest bin (the long FFT rounds to its
own bins, 1/3 Hz for 3 s). What differs from the long FFT's brick wall: each band's edges are the window's (a
tone within two bins, 100 Hz, of an edge is partly passed), and a strip of up to half a bin at one edge comes from
the other edge of the nearest-bin band; each frame's filtered content wraps around the frame (the window keeps that
small); a clip's first and last half window fade in and out with the window (the fft path fades 5 ms,
``edge_taper_s``). Measured: tones to -59 to -93 dB of their exact envelope (the long FFT: -29 dB); noise
-17 to -28 dB of difference energy against the long-FFT bands at 48-500 kHz; the same detection in the zoo; 0.88x
the frontend's instructions at 500 kHz (docs/frontends/heterodyne.md, "Band extraction").

A rate group is read this way only where the STFT's geometry is exact: N = window x rate a whole even number of
samples (bins of exactly 1 / window Hz) and H = N / 2; its clips must hold a whole window. Everything else returns
``done = False`` and goes the long-FFT way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from a2v_het.frontend.heterodyne import fold_bins, wide_band_groups
from a2v_het.frontend.spectrum import ClipSpectra


def exact_geometry(sample_rate: int, window_s: float, hop_s: float) -> bool:
    """Whether the STFT of ``sample_rate`` has a whole even window of exactly ``window_s`` and a hop of half of it."""
    n_fft = window_s * sample_rate
    return (abs(n_fft - round(n_fft)) < 1e-6 and int(round(n_fft)) % 2 == 0
            and int(round(hop_s * sample_rate)) * 2 == int(round(n_fft)))


def frames_band_signals(spec: Tensor, start_bin: Tensor, m: int, kept: Tensor | None, n_out: int,
                        frame_valid: Tensor | None = None) -> Tensor:
    """Overlap-added band signals of one group of clips.

    Args:
        spec: (b, F, n_bins) complex STFT, hop = half the window (:class:`ClipSpectra`).
        start_bin: (b, K) long, each band's first bin.
        m: bins per band at the band rate (even).
        kept: (b, K) long bins each band covers (None: m; above m: folded onto m), as
            :func:`a2v_het.frontend.heterodyne.band_bins` reads them.
        n_out: output samples per band.
        frame_valid: (b, F) bool, the frames wholly inside each clip (None: all). The others are left out, so a
            clip reads the same beside longer clips (whose length pads it with more frames) as alone.
    Returns: (b, K, n_out) complex64, the band signals at m / window Hz, unscaled by 2 m / N.
    """
    b, n_frames, n_bins = spec.shape
    k = start_bin.shape[1]
    half = m // 2
    # Every frame of a clip reads the same bins: one gather along the bins with the (b, 1, K m) index expanded over
    # the frames (a view), no (b F, K, m) index. Bins past the spectrum, and past a narrow band's kept width, read 0.
    pos = start_bin[..., None] + torch.arange(m, device=spec.device)  # (b, K, m)
    inside = (pos >= 0) & (pos < n_bins)
    if kept is not None:
        inside &= torch.arange(m, device=spec.device) < kept[..., None]
    index = pos.clamp(0, n_bins - 1).view(b, 1, k * m).expand(b, n_frames, k * m)
    bins = torch.gather(spec, 2, index).view(b, n_frames, k, m)
    if not bool(inside.all()):
        bins = bins.masked_fill_(~inside[:, None], 0)
    if kept is not None:  # wide bands folded as the long FFT's are, all of a clip's frames in one sum
        for c, k_idx, s, n_kept, every_clip in wide_band_groups(start_bin, kept, m):
            bins[c, :, k_idx] = fold_bins(spec if every_clip else spec[c], s, n_kept, m)
    t = torch.arange(n_frames, device=spec.device)
    sign = 1.0 - 2.0 * ((start_bin[:, None, :] * t[None, :, None]) % 2).float()  # (b, F, K): (-1)^(s t)
    if frame_valid is not None and not bool(frame_valid.all()):
        sign = sign * frame_valid[:, :, None]
    torch.view_as_real(bins).mul_(sign[..., None, None])  # real x real: the vectorised kernel
    frames = torch.fft.ifft(bins, dim=-1).permute(0, 2, 1, 3)  # (b, K, F, m)
    out = frames.new_zeros(b, k, n_frames + 1, half)
    out[:, :, :n_frames] += frames[..., :half]
    out[:, :, 1:] += frames[..., half:]
    out = out.reshape(b, k, (n_frames + 1) * half)
    if out.shape[2] >= n_out:
        return out[..., :n_out]
    return torch.nn.functional.pad(out, (0, n_out - out.shape[2]))


def rotation(freq_hz: Tensor, n: int, rate_hz: float) -> Tensor:
    """(..., n) complex64 exp(-i 2 pi f q / rate) for q = 0 .. n - 1, f = ``freq_hz`` (...,) in Hz.

    The cycles f q / rate are reduced to [0, 1) in float64 before the float32 cos and sin: a phase of hundreds of
    radians in float32 would lose 1e-4 rad. (torch.polar evaluates scalar sincos per element: 5 % of a 48 kHz
    frontend step's instructions here.) Differentiable in ``freq_hz``."""
    q = torch.arange(n, device=freq_hz.device, dtype=torch.float64) / rate_hz
    cycles = freq_hz.detach().double()[..., None] * q
    phase = (-2 * math.pi) * (cycles - torch.floor(cycles)).float()
    if freq_hz.requires_grad:  # d phase / d f = -2 pi q: the straight-through path
        phase = phase + (-2 * math.pi) * (freq_hz - freq_hz.detach())[..., None] * q.float()
    return torch.complex(torch.cos(phase), torch.sin(phase))


def stft_band_signals(spectra: list[ClipSpectra], band_start_hz: Tensor, band_rate_hz: float,
                      window_s: float, hop_s: float, n_out: int, out_lengths: Tensor,
                      pass_width_hz: Tensor | None = None, straight_through: bool = False) -> tuple[Tensor, Tensor]:
    """The heterodyning's output (:func:`a2v_het.frontend.heterodyne.heterodyne_bands`, quadrature) from kept STFTs.

    Args:
        spectra: the statistics' complex STFTs (``GridPowerStats.spectra``).
        band_start_hz: (B, K) Hz: mixed down by the nearest STFT bin, then rotated by the rest.
        band_rate_hz: W, the band rate; W x window_s must be an even whole number of bins.
        window_s, hop_s: the STFT's window and hop (seconds).
        n_out: output samples per band; out_lengths (B,) those of each clip, zero after.
        pass_width_hz: (B, K) Hz each band covers (None: W), as there.
        straight_through: gradients to ``band_start_hz`` through d/df exp(-i 2 pi f t), as there.
    Returns: (out (B, K, 2, n_out) fp32 [I, Q], with zeros for the clips not done; done (B,) bool: the clips read
        from an exact STFT geometry).
    """
    b_total, k_bands = band_start_hz.shape
    device = band_start_hz.device
    m = int(round(band_rate_hz * window_s))
    if abs(band_rate_hz * window_s - m) > 1e-6 or m % 2:
        raise ValueError(f"band rate {band_rate_hz} Hz x STFT window {window_s} s must be an even whole number of "
                         "bins for band_extraction: stft")
    out = torch.zeros(b_total, k_bands, 2, n_out, device=device)
    done = torch.zeros(b_total, dtype=torch.bool, device=device)
    out_lengths = out_lengths.long().clamp(0, n_out)
    for part in spectra:
        idx = part.idx
        if not exact_geometry(part.sample_rate, window_s, hop_s) or not bool(part.frame_valid[:, 0].all()):
            continue  # a clip shorter than one window has no frame
        bin_hz = part.sample_rate / part.n_fft
        start = torch.round(band_start_hz[idx].detach().double() / bin_hz).long()
        kept = None if pass_width_hz is None else torch.round(pass_width_hz[idx].double() / bin_hz).long()
        z = frames_band_signals(part.spec, start, m, kept, n_out, part.frame_valid).mul_(2.0 * m / part.n_fft)
        # The rest of the mixing, from the bin to the band's own start (under half a bin): a rotation at the band
        # rate, which shifts the band's content by the same few Hz. In float64 first: the starts are up to 2.5e5 Hz.
        rest_hz = (band_start_hz[idx].detach().double() - start.double() * bin_hz).float()  # (b, K)
        if straight_through:
            rest_hz = rest_hz + (band_start_hz[idx].float() - band_start_hz[idx].detach().float())
        z = z * rotation(rest_hz, n_out, band_rate_hz)
        tail = torch.arange(n_out, device=device)[None, :] >= out_lengths[idx][:, None]  # (b, n_out)
        z = z.masked_fill(tail[:, None, :], 0)
        out[idx] = torch.view_as_real(z).transpose(-1, -2)
        done[idx] = True
    return out, done
