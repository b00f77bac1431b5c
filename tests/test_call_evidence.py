"""Call evidence E(f): zero on stationary noise and hum at any level and colour, level-free for calls, the same for
the same call at every sample rate, finite on silence, DC and clipping."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from a2v_het.frontend.call_evidence import box_sum, call_evidence, lower_median, odd_cells
from a2v_het.frontend.spectrum import grid_power_statistics

WINDOW_S, HOP_S = 0.02, 0.01
EVIDENCE = (150.0, 0.05, 1.0, 0.0)  # smoothing, margin; common-mode removal off except where a test turns it on


def evidence(x: np.ndarray, sr: int, n_grid: int | None = None, common_mode_hz: float = 0.0) -> torch.Tensor:
    """(G,) E(f) of one clip on the 50 Hz grid."""
    n_grid = n_grid or int(sr / 2 / 50) + 1
    wave = torch.as_tensor(x, dtype=torch.float32)[None]
    stats = grid_power_statistics(wave, torch.tensor([sr]), torch.tensor([wave.shape[1]]), WINDOW_S, HOP_S, n_grid,
                                  evidence=EVIDENCE[:3] + (common_mode_hz,))
    return stats.evidence[0]


def pink(rng, n, sr):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec /= np.sqrt(np.maximum(f, 20.0))
    return np.fft.irfft(spec, n)


def tone_burst(n, sr, f_hz, start_s, dur_s, amp):
    t = np.arange(n) / sr
    env = ((t >= start_s) & (t < start_s + dur_s)).astype(float)
    return amp * env * np.sin(2 * math.pi * f_hz * t)


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize("dim", [-1, -2])
def test_box_sum_matches_numpy_and_its_step_keeps_every_step_th_cell(size, step, dim):
    x = torch.rand(2, 9, 23, generator=torch.Generator().manual_seed(size * 10 + step), dtype=torch.float64)
    axis = x.dim() + dim
    padded = np.pad(x.numpy(), [(0, 0)] * axis + [(size // 2, size // 2)] + [(0, 0)] * (x.dim() - 1 - axis))
    ref = sum(np.take(padded, np.arange(s, s + x.shape[dim]), axis=axis) for s in range(size))
    ref = np.take(ref, np.arange(0, x.shape[dim], step), axis=axis)
    np.testing.assert_allclose(box_sum(x, size, dim, step).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 37, 38])
def test_lower_median_is_torch_median_and_nanmedian_exactly(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, 50, n, generator=g).round(decimals=1)  # ties
    frames_major = x.transpose(1, 2).contiguous().transpose(1, 2)  # the layout call_evidence hands it
    assert torch.equal(lower_median(frames_major), x.median(dim=-1).values)
    valid = torch.rand(3, 50, n, generator=g) > 0.3
    valid[0, :5] = False  # rows without a valid value give 0
    expected = torch.nan_to_num(x.masked_fill(~valid, float("nan")).nanmedian(dim=-1).values, nan=0.0)
    got = lower_median(x, valid)
    assert torch.equal(got, expected) and got.dtype == x.dtype
    assert torch.equal(got[0, :5], torch.zeros(5))


def test_odd_cells():
    assert odd_cells(150.0, 50.0) == 3 and odd_cells(0.05, 0.01) == 5 and odd_cells(0.001, 0.01) == 1
    assert odd_cells(100.0, 50.0) == 3  # even counts round up to the next odd one (a centred kernel)


def test_stationary_noise_and_hum_give_almost_nothing_a_call_gives_a_lot():
    sr, n = 16000, 3 * 16000
    rng = np.random.default_rng(0)
    t = np.arange(n) / sr
    hum = 0.5 * np.sin(2 * math.pi * 1000.0 * t)
    for background in (0.1 * rng.standard_normal(n), 100.0 * pink(rng, n, sr), hum + 0.01 * rng.standard_normal(n)):
        e = evidence(background, sr)
        assert float(e.max()) < 0.02, float(e.max())
        call = evidence(background + tone_burst(n, sr, 5000.0, 1.0, 0.4, 3 * np.std(background)), sr)
        at_call = float(call[98:103].max())
        assert at_call > 0.3 and at_call > 20 * float(e.max())


def test_a_quiet_call_counts_like_a_loud_one_and_gain_changes_nothing():
    """Per bin and in nats: scaling the clip changes nothing; a call 20 dB above the floor of its bins counts within
    a factor of a few of one 40 dB above, where the seed's variance of power differs 10^4 times."""
    sr, n = 48000, 3 * 48000
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(n)
    quiet = noise + tone_burst(n, sr, 3000.0, 0.5, 0.3, 1.0)
    loud = noise + tone_burst(n, sr, 3000.0, 0.5, 0.3, 10.0)
    torch.testing.assert_close(evidence(1000.0 * quiet, sr), evidence(quiet, sr), atol=1e-4, rtol=1e-3)
    e_quiet, e_loud = float(evidence(quiet, sr)[60]), float(evidence(loud, sr)[60])
    assert 0.1 < e_quiet < e_loud < 4 * e_quiet


@pytest.mark.parametrize("low_sr", [8000, 22050])
def test_the_same_call_gives_the_same_evidence_at_every_rate(low_sr):
    """A call at 1.5 kHz in a 96 kHz clip, and the same clip resampled to 48 kHz and low_sr: E agrees where all of
    them have bins (an upsampled clip's empty top, where there is nothing, reads 0)."""
    rng = np.random.default_rng(2)
    sr = 96000
    n = 3 * sr
    x = 0.1 * rng.standard_normal(n) + tone_burst(n, sr, 1500.0, 1.0, 0.5, 0.3)
    g = math.gcd(sr, low_sr)
    ref = evidence(x, sr)
    for rate, y in ((48000, resample_poly(x, 1, 2)), (low_sr, resample_poly(x, low_sr // g, sr // g))):
        e = evidence(y, rate)
        top = int(0.8 * rate / 2 / 50)  # below the resampler's transition band
        torch.testing.assert_close(e[25:top], ref[25:top], atol=0.03, rtol=0.1)
    assert float(ref[30]) > 0.3  # the call


@pytest.mark.parametrize("kind", ["silence", "dc", "clipped", "tiny", "short"])
def test_finite_and_nonnegative_on_degenerate_clips(kind):
    sr = 16000
    rng = np.random.default_rng(3)
    x = {"silence": np.zeros(sr), "dc": np.full(sr, 0.7), "tiny": 1e-30 * rng.standard_normal(sr),
         "clipped": np.clip(50 * rng.standard_normal(sr), -1, 1), "short": rng.standard_normal(sr // 100)}[kind]
    e = evidence(x, sr)
    assert torch.isfinite(e).all() and (e >= 0).all()
    if kind in ("silence", "dc", "short"):
        assert float(e.max()) == 0.0


def test_padding_frames_do_not_change_a_clip():
    """A clip padded into a longer batch (frames past its end invalid) gets the same E as alone."""
    sr = 16000
    rng = np.random.default_rng(4)
    x = 0.1 * rng.standard_normal(sr) + tone_burst(sr, sr, 2000.0, 0.3, 0.3, 0.5)
    power = torch.rand(1, 161, 99) + 0.5
    frame_valid = torch.ones(1, 99, dtype=torch.bool)
    alone = call_evidence(power, frame_valid, 3, 5, 1.0)
    padded = torch.cat([power, torch.zeros(1, 161, 40)], dim=-1)
    valid = torch.cat([frame_valid, torch.zeros(1, 40, dtype=torch.bool)], dim=-1)
    torch.testing.assert_close(call_evidence(padded, valid, 3, 5, 1.0), alone, atol=1e-6, rtol=1e-5)
    del x


def test_common_mode_removal_keeps_a_tone_and_drops_broadband_drops():
    """Rain-like drops (short broadband bursts) lift every bin at once: the +-1 kHz common mode removes most of their
    evidence, while a tone, which lifts only its own bins, keeps most of its own."""
    sr, n = 16000, 3 * 16000
    rng = np.random.default_rng(5)
    drops = np.zeros(n)
    for start in rng.integers(0, n - 40, 60):
        drops[start : start + 40] += rng.standard_normal(40) * np.exp(-np.arange(40) / 10.0)
    x = 0.01 * rng.standard_normal(n) + 0.5 * drops + tone_burst(n, sr, 5000.0, 1.0, 0.4, 0.2)
    off, on = evidence(x, sr), evidence(x, sr, common_mode_hz=1000.0)
    far = np.r_[20:80, 120:150]  # 1-4 kHz and 6-7.5 kHz: drops only
    tone = slice(99, 102)
    assert float(on[far].sum()) < 0.3 * float(off[far].sum())
    assert float(on[tone].sum()) > 0.5 * float(off[tone].sum())
