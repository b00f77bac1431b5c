"""The heterodyning module against a slow reference: explicit mixing, scipy anti-alias filter, resample_poly."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.signal import chirp, resample_poly

from a2v_het.frontend.heterodyne import edge_taper, heterodyne_bands

RATES = [8000, 16000, 22050, 32000, 44100, 48000, 96000]
W = 2000.0


def quantised(f_hz: float, sr: int, n_fft: int) -> float:
    """The mixing frequency the fast path really uses: f rounded to the rfft bin grid."""
    return round(f_hz * n_fft / sr) * sr / n_fft


def reference(x: np.ndarray, sr: int, f_start: float, n_out: int, mixing: str) -> np.ndarray:
    """Slow path: mix by the band centre, low-pass + resample with resample_poly, mix back to [0, W).

    Returns (2, n_out): [I, Q] (quadrature) or [even, odd] samples at 2W (cosine).
    """
    t = np.arange(len(x)) / sr
    if mixing == "quadrature":
        centre = f_start + W / 2
        y = 2 * x * np.exp(-2j * np.pi * centre * t)
        ratio = Fraction(int(W), sr)
        kw = dict(window=("kaiser", 10.0))
        yr = resample_poly(y.real, ratio.numerator, ratio.denominator, **kw) + 1j * resample_poly(
            y.imag, ratio.numerator, ratio.denominator, **kw)
        yr = yr[:n_out] * np.exp(2j * np.pi * (W / 2) * np.arange(n_out) / W)
        return np.stack([yr.real, yr.imag])
    y = 2 * x * np.cos(2 * np.pi * f_start * t)
    ratio = Fraction(int(2 * W), sr)
    yr = resample_poly(y, ratio.numerator, ratio.denominator, window=("kaiser", 10.0))[: 2 * n_out]
    return np.stack([yr[0::2], yr[1::2]])


def fast(x: np.ndarray, sr: int, f_start: float, n_out: int, mixing: str, taper_s: float = 0.0) -> np.ndarray:
    out = heterodyne_bands(torch.tensor(x, dtype=torch.float32)[None], torch.tensor([sr]), torch.tensor([len(x)]),
                           torch.tensor([[f_start]]), W, n_out, mixing=mixing, taper_s=taper_s)
    return out[0, 0].numpy()


@pytest.mark.parametrize("mixing", ["quadrature", "cosine"])
@pytest.mark.parametrize("sr", RATES)
def test_tone_matches_reference(sr, mixing):
    duration = 1.0
    n = int(sr * duration)
    n_out = int(W * duration)
    f_start = 0.31 * (sr / 2 - W)
    if mixing == "cosine":
        # keep the sum frequency 2 f_k + d above W: near W the reference FIR's transition band would attenuate
        # what the ideal filter passes (a property of real mixing, not an error of either path)
        f_start = max(f_start, 0.75 * W)
    f_start = quantised(f_start, sr, n)
    for offset in (0.23 * W, 0.61 * W):
        f_tone = f_start + round(offset)  # a whole number of Hz: periodic over 1 s, no edge effects in the fast path
        x = 0.7 * np.cos(2 * np.pi * f_tone * np.arange(n) / sr + 0.3)
        got = fast(x, sr, f_start, n_out, mixing)
        ref = reference(x, sr, f_start, n_out, mixing)
        inner = slice(n_out // 10, -n_out // 10)  # the reference FIR has start-up transients
        np.testing.assert_allclose(got[:, inner], ref[:, inner], atol=0.7 * 2e-3)
        # and the analytic answer: amplitude 0.7 at baseband frequency (f_tone - f_start)
        if mixing == "quadrature":
            amp = np.abs(got[0] + 1j * got[1])
            np.testing.assert_allclose(amp, 0.7, rtol=1e-4)


@pytest.mark.parametrize("mixing", ["quadrature", "cosine"])
@pytest.mark.parametrize("sr", RATES)
def test_chirp_matches_reference(sr, mixing):
    duration = 1.0
    n = int(sr * duration)
    n_out = int(W * duration)
    f_start = quantised(max(0.5 * (sr / 2 - W), 0.75 * W), sr, n)
    t = np.arange(n) / sr
    x = 0.5 * chirp(t, f0=f_start + 0.2 * W, t1=duration, f1=f_start + 0.8 * W)
    taper = edge_taper(torch.tensor([n]), n, int(0.02 * sr))[0].numpy()
    got = fast(x, sr, f_start, n_out, mixing, taper_s=0.02)
    ref = reference(x * taper, sr, f_start, n_out, mixing)
    inner = slice(n_out // 10, -n_out // 10)
    err = np.sqrt(np.mean((got[:, inner] - ref[:, inner]) ** 2))
    rms = np.sqrt(np.mean(ref[:, inner] ** 2))
    assert err < 1e-2 * rms, f"relative RMS error {err / rms:.2e}"


@pytest.mark.parametrize("mixing", ["quadrature", "cosine"])
@pytest.mark.parametrize("sr", RATES)
def test_tone_outside_every_band_is_suppressed(sr, mixing):
    """A tone 300 Hz or more outside every band leaves less than -40 dB (a non-bin frequency, so it leaks)."""
    duration = 1.0
    n = int(sr * duration)
    n_out = int(W * duration)
    nyq = sr / 2
    bands = np.array([[50.0, nyq - W]]) if nyq - W > 50 + 2 * W else np.array([[50.0]])
    t = np.arange(n) / sr
    inside = np.cos(2 * np.pi * (bands[0, 0] + 0.5 * W + 0.37) * t)
    ref_out = heterodyne_bands(torch.tensor(inside, dtype=torch.float32)[None], torch.tensor([sr]), torch.tensor([n]),
                               torch.tensor(bands, dtype=torch.float32), W, n_out, mixing=mixing, taper_s=0.005)
    ref_energy = ref_out[:, 0].square().sum().item()
    outside_freqs = [bands[0, 0] + W + 300.37]
    if mixing == "quadrature" and bands[0, 0] >= 350:
        outside_freqs.append(bands[0, 0] - 300.37)
    for f in outside_freqs:
        if f >= nyq:
            continue
        x = np.cos(2 * np.pi * f * t)
        out = heterodyne_bands(torch.tensor(x, dtype=torch.float32)[None], torch.tensor([sr]), torch.tensor([n]),
                               torch.tensor(bands, dtype=torch.float32), W, n_out, mixing=mixing, taper_s=0.005)
        ratio_db = 10 * np.log10(out.square().sum().item() / ref_energy / bands.shape[1] + 1e-30)
        assert ratio_db < -40, f"tone at {f:.0f} Hz leaves {ratio_db:.1f} dB"


def test_quadrature_rejects_the_image_that_cosine_folds():
    """A tone at f_k - d: the cosine mixer puts it at d (the image), the quadrature mixer removes it."""
    sr, n, n_out, f_k, d = 48000, 48000, 2000, 10000.0, 400.0
    x = np.cos(2 * np.pi * (f_k - d) * np.arange(n) / sr)
    q = fast(x, sr, f_k, n_out, "quadrature", taper_s=0.005)
    c = fast(x, sr, f_k, n_out, "cosine", taper_s=0.005)
    assert np.sqrt(np.mean(q**2)) < 1e-2
    assert np.sqrt(np.mean(c**2)) > 0.5


def test_mixed_rate_batch_equals_one_clip_at_a_time():
    rng = np.random.default_rng(0)
    clips = [(8000, 0.8), (48000, 1.0), (22050, 0.5)]
    t_max = max(int(sr * d) for sr, d in clips)
    wave = torch.zeros(len(clips), t_max)
    for i, (sr, d) in enumerate(clips):
        wave[i, : int(sr * d)] = torch.tensor(rng.standard_normal(int(sr * d)), dtype=torch.float32)
    rates = torch.tensor([sr for sr, _ in clips])
    lengths = torch.tensor([int(sr * d) for sr, d in clips])
    bands = torch.tensor([[100.0, 1900.0], [5000.0, 20000.0], [3000.0, 8000.0]])
    batch = heterodyne_bands(wave, rates, lengths, bands, W, 2000, taper_s=0.005)
    for i in range(len(clips)):
        single = heterodyne_bands(wave[i : i + 1, : lengths[i]], rates[i : i + 1], lengths[i : i + 1], bands[i : i + 1],
                                  W, 2000, taper_s=0.005)
        torch.testing.assert_close(batch[i], single[0], atol=1e-5, rtol=1e-4)


def test_straight_through_gradient_reaches_band_start():
    sr, n = 16000, 16000
    x = torch.tensor(np.cos(2 * np.pi * 3300 * np.arange(n) / sr), dtype=torch.float32)[None]
    f = torch.tensor([[3000.0]], requires_grad=True)
    out = heterodyne_bands(x, torch.tensor([sr]), torch.tensor([n]), f, W, 2000, straight_through=True)
    # the output's value does not depend on the straight-through path
    plain = heterodyne_bands(x, torch.tensor([sr]), torch.tensor([n]), f.detach(), W, 2000)
    torch.testing.assert_close(out, plain)
    (out[0, 0, 0] * torch.linspace(0, 1, 2000)).sum().backward()
    assert f.grad is not None and f.grad.abs().item() > 0
    g = torch.tensor([[3000.0]], requires_grad=True)
    assert not heterodyne_bands(x, torch.tensor([sr]), torch.tensor([n]), g, W, 2000).requires_grad


def test_fast_edge_taper_equals_the_product_formula():
    from a2v_het.frontend.heterodyne import apply_edge_taper

    lengths = torch.tensor([1000, 37, 640, 5, 999])
    x = torch.randn(5, 1000) * (torch.arange(1000)[None, :] < lengths[:, None])
    for t in (0, 1, 20, 300):
        want = x * edge_taper(lengths, 1000, t) if t else x
        torch.testing.assert_close(apply_edge_taper(x, lengths, t), want, atol=1e-6, rtol=1e-5)
