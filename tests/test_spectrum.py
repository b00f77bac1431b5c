"""The grid STFT power against a numpy reference: |rfft(frame x hann)|^2 / (sum hann)^2, frames of window_s every
hop_s, on the grid bins at every rate."""

import numpy as np
import pytest
import torch

from a2v_het.frontend.spectrum import _stft_power, grid_power_spectrogram, grid_power_statistics


def numpy_power(x: np.ndarray, sr: int, window_s: float, hop_s: float) -> np.ndarray:
    """(n_fft // 2 + 1, F) float64 power of one clip."""
    n_fft, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[s: s + n_fft] for s in range(0, len(x) - n_fft + 1, hop)])
    return (np.abs(np.fft.rfft(frames * w, axis=-1)) ** 2 / w.sum() ** 2).T


@pytest.mark.parametrize("sr", [8000, 48000, 250000])
@pytest.mark.parametrize("grad", [False, True])
def test_power_matches_numpy(sr, grad):
    rng = np.random.default_rng(sr)
    x = rng.standard_normal((2, int(0.3 * sr))) * np.array([[1.0], [1e-4]])  # a loud and a quiet clip
    wave = torch.tensor(x, dtype=torch.float32, requires_grad=grad)
    lengths = torch.tensor([x.shape[1], x.shape[1]])
    _, power, frame_valid, _, n_fft = _stft_power(wave, torch.arange(2), lengths, sr, 0.02, 0.01)
    assert power.requires_grad == grad
    assert power.shape == (2, n_fft // 2 + 1, frame_valid.shape[1])
    # Handed over frames-major in memory: the evidence's box sums rely on it (call_evidence.py).
    assert power.stride(1) == 1
    for b in range(2):
        ref = numpy_power(x[b].astype(np.float32).astype(np.float64), sr, 0.02, 0.01)
        got = power[b, :, : ref.shape[1]].detach().double().numpy()
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=ref.max() * 1e-6)
    if grad:
        power.sum().backward()
        assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_statistics_on_the_grid_match_the_spectrogram():
    """Mean and variance of grid_power_statistics equal those of the full grid spectrogram, mixed rates."""
    rng = np.random.default_rng(0)
    rates = torch.tensor([8000, 32000])
    t = np.arange(32000) / 32000.0
    x = np.zeros((2, 32000), dtype=np.float32)
    x[0, :8000] = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000.0) + 0.01 * rng.standard_normal(8000)
    x[1] = 0.2 * np.sin(2 * np.pi * 9000 * t) * (t % 0.2 < 0.05) + 0.01 * rng.standard_normal(32000)
    wave, lengths = torch.from_numpy(x), torch.tensor([8000, 32000])
    spec = grid_power_spectrogram(wave, rates, lengths, 0.02, 0.01, 801)
    stats = grid_power_statistics(wave, rates, lengths, 0.02, 0.01, 801)
    for b in range(2):
        p = spec.power[b][:, spec.frame_valid[b]].double()
        torch.testing.assert_close(stats.mean_power[b].double(), p.mean(-1), rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(stats.variance[b].double(), p.var(-1, unbiased=False), rtol=1e-4, atol=1e-14)
    # Bins every 50 Hz: the 1 kHz tone in bin 20, nothing above the 8 kHz clip's Nyquist (bin 80).
    assert stats.mean_power[0, 20].item() > 100 * stats.mean_power[0, 60].item()
    assert stats.mean_power[0, 81:].abs().max().item() == 0.0 and stats.mean_power[1, 81:].abs().max().item() > 0
