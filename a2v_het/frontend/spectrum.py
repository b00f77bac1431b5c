"""Power spectrograms of mixed-rate batches on one absolute-frequency grid.

The STFT window and hop are given in seconds, so the bin spacing (1 / window Hz) and the frame rate are the same at
every sample rate: an 8 kHz clip and a 96 kHz clip land on the same grid, the 8 kHz one simply has no bins above
4 kHz (``freq_valid`` is False there). Everything here runs in fp32 with autocast off, because variances of power
overflow and lose all precision in bf16/fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from a2v_het.frontend.call_evidence import call_evidence, odd_cells
from a2v_het.frontend.cpu_chunks import CpuWorkspace, clip_chunks, consecutive_run


@dataclass
class GridSpectrogram:
    power: Tensor
    """(B, G, F) fp32 power |X|^2 / (sum w)^2, zero at invalid bins/frames (a tone of amplitude A peaks at A^2/4)."""
    freq_valid: Tensor
    """(B, G) bool: grid bin lies at or below the clip's Nyquist."""
    frame_valid: Tensor
    """(B, F) bool: the frame's window lies wholly inside the clip."""
    grid_hz: float
    """Spacing of the grid in Hz; bin g is at g * grid_hz."""

    @property
    def freqs_hz(self) -> Tensor:
        return torch.arange(self.power.shape[1], device=self.power.device, dtype=torch.float32) * self.grid_hz


def _squared(x: Tensor) -> Tensor:
    """x^2, in place on a temporary nothing differentiates."""
    return x.mul_(x) if not x.requires_grad else x * x


def power_mean_and_variance(power: Tensor, frame_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and sigma^2(f) = Var_t P(f, t) over the valid frames (population variance), both (B, G) fp32.

    Args:
        power: (B, G, F) power.
        frame_valid: (B, F) bool.
    Returns: zeros for clips without a valid frame.
    """
    power = power.float()
    # Two-pass variance: subtracting the mean first keeps precision when a loud static hum sits under a call.
    # Written out with one in-place temporary: torch.var_mean is 15x slower on CPU at these shapes (measured), and
    # every fresh multi-MB temporary costs page faults.
    if bool(frame_valid.all()):
        mean = power.mean(-1)
        return mean, _squared(power - mean[..., None]).mean(-1)
    w = frame_valid.float()[:, None, :]
    n = w.sum(-1).clamp(min=1.0)
    mean = (power * w).sum(-1) / n
    return mean, _squared((power - mean[..., None]) * w).sum(-1) / n


def temporal_variance(power: Tensor, frame_valid: Tensor) -> Tensor:
    """(B, G): sigma^2(f) = Var_t P(f, t) over the valid frames (see :func:`power_mean_and_variance`)."""
    return power_mean_and_variance(power, frame_valid)[1]


def mean_power(power: Tensor, frame_valid: Tensor) -> Tensor:
    """(B, G): mean over valid frames of P(f, t)."""
    return power_mean_and_variance(power, frame_valid)[0]


def frequency_grid(max_sample_rate: float, grid_hz: float) -> int:
    """Number of grid bins from 0 Hz to the Nyquist of ``max_sample_rate`` inclusive."""
    return int(round(max_sample_rate / 2 / grid_hz)) + 1


def _interp_onto_grid(power: Tensor, sample_rate: int, n_fft: int, n_grid: int, grid_hz: float) -> Tensor:
    """Linear interpolation of (b, n_fft//2+1, F) STFT bins at k*sr/n_fft Hz onto (b, n_grid, F) at g*grid_hz Hz."""
    bin_hz = sample_rate / n_fft
    n_bins = power.shape[1]
    if abs(bin_hz - grid_hz) < 1e-9 * grid_hz:
        out = power.new_zeros(power.shape[0], n_grid, power.shape[2])
        n = min(n_bins, n_grid)
        out[:, :n] = power[:, :n]
        return out
    pos = torch.arange(n_grid, device=power.device, dtype=torch.float64) * (grid_hz / bin_hz)
    lo = pos.floor().long()
    frac = (pos - lo).to(power.dtype)
    inside = lo <= n_bins - 1
    lo_c = lo.clamp(max=n_bins - 1)
    hi_c = (lo + 1).clamp(max=n_bins - 1)
    out = power[:, lo_c] * (1 - frac)[None, :, None] + power[:, hi_c] * frac[None, :, None]
    return out * inside.to(power.dtype)[None, :, None]


def _stft_power_by_rate(wave: Tensor, sample_rate: Tensor, lengths: Tensor, window_s: float, hop_s: float,
                        chunked: bool = False, spectra: list | None = None, workspace: CpuWorkspace | None = None):
    """Yield (idx, power (b, n_fft//2+1, F_r), frame_valid (b, F_r), sr, n_fft) for each distinct rate, fp32;
    ``chunked``: for each CPU chunk of each rate's clips (:func:`a2v_het.frontend.cpu_chunks.clip_chunks`).
    ``spectra``: a list to append each chunk's :class:`ClipSpectra` to (the complex STFT, kept). ``workspace``
    (CPU): the arrays are views of its buffers, each power valid until the next one is yielded."""
    for sr in sample_rate.unique().tolist():
        group = (sample_rate == sr).nonzero().flatten()
        for idx in clip_chunks(group, int(lengths[group].max())) if chunked else [group]:
            yield _stft_power(wave, idx, lengths, int(sr), window_s, hop_s, spectra, workspace)


@dataclass
class ClipSpectra:
    """The complex STFT of some clips of one rate, as the statistics computed it (periodic Hann window of ``n_fft``
    samples, frames every ``hop`` samples from each clip's first sample, no centring)."""

    idx: Tensor
    """(b,) the clips' rows in the batch."""
    spec: Tensor
    """(b, F, n_fft // 2 + 1) complex64, unnormalised (torch.fft.rfft of the windowed frames)."""
    frame_valid: Tensor
    """(b, F) bool: the frame lies wholly inside its clip."""
    sample_rate: int
    n_fft: int
    hop: int


def _stft_power(wave: Tensor, idx: Tensor, lengths: Tensor, sr: int, window_s: float, hop_s: float,
                spectra: list | None = None, workspace: CpuWorkspace | None = None):
    """(idx, power (b, n_fft//2+1, F), frame_valid (b, F), sr, n_fft) of the clips ``idx``, all at ``sr`` Hz;
    ``spectra``: append the complex STFT to it (:class:`ClipSpectra`), and square a copy of it. ``workspace``: the
    windowed frames, the STFT and the power are written into its buffers (the n-th kept STFT into its own)."""
    device = wave.device
    n_fft = max(4, int(round(window_s * sr)))
    hop = max(1, int(round(hop_s * sr)))
    lens = lengths[idx]
    t_max = max(int(lens.max().item()), n_fft)
    # A run of consecutive clips is read as a view: the framing below copies it anyway, once.
    run = consecutive_run(idx)
    rows = wave[run] if run is not None else wave[idx]
    x = rows[:, : min(t_max, wave.shape[1])].float()
    if x.shape[1] < t_max:
        x = torch.nn.functional.pad(x, (0, t_max - x.shape[1]))
    window = torch.hann_window(n_fft, periodic=True, device=device, dtype=torch.float32)
    # Frames as a strided view times the window, then one batched rfft: the same transform as torch.stft(center=
    # False), 1.5x faster on CPU at 500 kHz (measured), where torch.stft's framing dominates.
    frames = x.unfold(-1, n_fft, hop)
    if workspace is not None:
        spec_shape = frames.shape[:2] + (n_fft // 2 + 1,)
        windowed = torch.mul(frames, window, out=workspace.take("stft_frames", frames.shape, torch.float32))
        spec = torch.fft.rfft(windowed, dim=-1, out=workspace.take(
            f"stft_spectrum_{len(spectra) if spectra is not None else 0}", spec_shape, torch.complex64))
        # |X|^2 = re re + im im, read from the interleaved pairs in the frames' order, into the power's buffer.
        re, im = torch.view_as_real(spec).unbind(-1)
        power = torch.mul(re, re, out=workspace.take("stft_power", spec_shape, torch.float32)).addcmul_(im, im)
        power.div_(window.sum().square())
    else:
        spec = torch.fft.rfft(frames * window, dim=-1)  # (b, F, n_fft//2 + 1)
        # |X|^2: the (real, imaginary) pairs squared where they lie, contiguous (in place where nothing
        # differentiates them: every fresh multi-MB temporary costs page faults), then the two halves added. Through
        # spec.real and spec.imag in the transposed bins-by-frames order the same sums took 2.5x the instructions
        # (callgrind, 500 kHz: a sixth of the STFT), and .sum(-1) over the pairs 9x.
        pairs = torch.view_as_real(spec)
        # A kept spectrum (``spectra``) is squared into a buffer of its own: the same values.
        squares = pairs.square() if pairs.requires_grad or spectra is not None else pairs.square_()
        power = squares[..., 0] + squares[..., 1]
        power = power / window.sum().square() if power.requires_grad else power.div_(window.sum().square())
    power = power.transpose(1, 2)  # (b, n_fft//2 + 1, F), frames-major in memory
    starts = torch.arange(power.shape[2], device=device) * hop
    frame_valid = (starts[None, :] + n_fft) <= lens[:, None]
    if spectra is not None:
        spectra.append(ClipSpectra(idx, spec, frame_valid, int(sr), n_fft, hop))
    return idx, power, frame_valid, int(sr), n_fft


def _freq_valid(sample_rate: Tensor, n_grid: int, grid_hz: float) -> Tensor:
    freqs = torch.arange(n_grid, device=sample_rate.device, dtype=torch.float32) * grid_hz
    return freqs[None, :] <= (sample_rate[:, None].float() / 2 + 1e-6)


def grid_power_spectrogram(
    wave: Tensor,
    sample_rate: Tensor,
    lengths: Tensor,
    window_s: float,
    hop_s: float,
    n_grid: int,
    grid_hz: float | None = None,
) -> GridSpectrogram:
    """STFT power of every clip on the absolute grid.

    Args:
        wave: (B, T) float, zero-padded after ``lengths[b]`` samples.
        sample_rate: (B,) int Hz, may differ per clip.
        lengths: (B,) valid samples per clip.
        window_s, hop_s: Hann window and hop in seconds (rounded to whole samples per rate).
        n_grid: number of grid bins G (see :func:`frequency_grid`).
        grid_hz: grid spacing; default 1 / window_s, where the STFT bins fall exactly on the grid.
    Returns: :class:`GridSpectrogram` with power (B, G, F), F = frames of the longest clip.
    """
    grid_hz = 1.0 / window_s if grid_hz is None else grid_hz
    device = wave.device
    with torch.autocast(device_type=device.type, enabled=False):
        groups = []
        for idx, power, fvalid, sr, n_fft in _stft_power_by_rate(wave, sample_rate, lengths, window_s, hop_s):
            groups.append((idx, _interp_onto_grid(power, sr, n_fft, n_grid, grid_hz), fvalid))
        n_frames = max(g[1].shape[2] for g in groups)
        power_all = torch.zeros(wave.shape[0], n_grid, n_frames, device=device)
        frame_valid = torch.zeros(wave.shape[0], n_frames, dtype=torch.bool, device=device)
        for idx, power, fvalid in groups:
            power_all[idx, :, : power.shape[2]] = power
            frame_valid[idx, : fvalid.shape[1]] = fvalid
        freq_valid = _freq_valid(sample_rate, n_grid, grid_hz)
        power_all = power_all * freq_valid[:, :, None] * frame_valid[:, None, :]
    return GridSpectrogram(power_all, freq_valid, frame_valid, grid_hz)


@dataclass
class GridPowerStats:
    mean_power: Tensor
    """(B, G) fp32 mean over valid frames of P(f, t)."""
    variance: Tensor
    """(B, G) fp32 sigma^2(f) = Var_t P(f, t) over valid frames (population variance)."""
    freq_valid: Tensor
    """(B, G) bool."""
    num_frames: Tensor
    """(B,) valid frames per clip (0 for a clip shorter than one window)."""
    grid_hz: float
    evidence: Tensor | None = None
    """(B, G) fp32 call evidence E(f) in nats (:mod:`a2v_het.frontend.call_evidence`), when asked for."""
    spectra: list[ClipSpectra] | None = None
    """The complex STFT of every clip, by rate and CPU chunk, when asked for (``keep_spectra``)."""

    @property
    def freqs_hz(self) -> Tensor:
        return torch.arange(self.variance.shape[1], device=self.variance.device, dtype=torch.float32) * self.grid_hz


def grid_power_statistics(
    wave: Tensor,
    sample_rate: Tensor,
    lengths: Tensor,
    window_s: float,
    hop_s: float,
    n_grid: int,
    grid_hz: float | None = None,
    power_exponent: float = 1.0,
    evidence: tuple[float, float, float, float] | None = None,
    keep_spectra: bool = False,
    workspace: CpuWorkspace | None = None,
) -> GridPowerStats:
    """Mean and temporal variance of the STFT power per grid bin, without building the (B, G, F) tensor.

    The statistics are taken in each rate's own STFT bins and then placed on the grid; where the window is a
    whole number of samples (every common rate with the default 20 ms window) the bins are the grid bins, and
    otherwise the per-bin statistics are linearly interpolated onto it. Same arguments as
    :func:`grid_power_spectrogram`. ``power_exponent`` != 1 takes the statistics of P^exponent (compressed power).
    ``evidence = (smooth_hz, smooth_s, margin_nats, common_mode_hz)`` (:attr:`HeterodyneConfig.evidence_args`) also computes the call evidence E(f) of the
    (uncompressed) power, with the smoothing kernel rounded to odd whole bins and frames of each rate's own STFT.
    ``keep_spectra`` keeps the complex STFT (``GridPowerStats.spectra``; the heterodyne's band signals can be read
    from it, :mod:`a2v_het.frontend.stft_bands`). ``workspace`` (CPU, where it is used): the STFT's largest
    arrays live in its buffers (:class:`a2v_het.frontend.cpu_chunks.CpuWorkspace`), so the kept spectra are valid
    until the next call with the same workspace.
    """
    grid_hz = 1.0 / window_s if grid_hz is None else grid_hz
    device = wave.device
    b = wave.shape[0]
    with torch.autocast(device_type=device.type, enabled=False):
        mean_all = torch.zeros(b, n_grid, device=device)
        var_all = torch.zeros(b, n_grid, device=device)
        frames = torch.zeros(b, dtype=torch.long, device=device)
        evidence_all = torch.zeros(b, n_grid, device=device) if evidence is not None else None
        spectra: list[ClipSpectra] | None = [] if keep_spectra else None
        workspace = workspace if device.type == "cpu" else None
        for idx, power, fvalid, sr, n_fft in _stft_power_by_rate(wave, sample_rate, lengths, window_s, hop_s,
                                                                 chunked=True, spectra=spectra, workspace=workspace):
            columns = []
            if evidence is not None:
                smooth_hz, smooth_s, margin, common_hz = evidence
                hop = max(1, int(round(hop_s * sr)))
                columns.append(call_evidence(power, fvalid, odd_cells(smooth_hz, sr / n_fft),
                                             odd_cells(smooth_s, hop / sr), margin,
                                             int(round(common_hz / (sr / n_fft)))))
            if power_exponent != 1.0:
                power = power.pow(power_exponent)
            stats = torch.stack(list(power_mean_and_variance(power, fvalid)) + columns, dim=2)
            stats = _interp_onto_grid(stats, sr, n_fft, n_grid, grid_hz)
            mean_all[idx], var_all[idx] = stats[..., 0], stats[..., 1]
            if evidence_all is not None:
                evidence_all[idx] = stats[..., 2]
            frames[idx] = fvalid.sum(-1)
        freq_valid = _freq_valid(sample_rate, n_grid, grid_hz)
        mean_all = mean_all * freq_valid
        var_all = var_all * freq_valid
        if evidence_all is not None:
            evidence_all = evidence_all * freq_valid
    return GridPowerStats(mean_all, var_all, freq_valid, frames, grid_hz, evidence_all, spectra)
