"""SincNet stem (frontend.name: sincnet): kernels against a numpy windowed-sinc reference (and scipy's firwin),
measured tone responses at several rates, exact silence above a clip's Nyquist, exact frame pooling, the fused FFT
backward against autograd, token counts at every rate, padding invariance, rate independence of the pooled
envelopes, gradients to the cutoffs, numerics (silence / DC / clipping / bf16) and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import firwin

from a2v_het.config import ConfigError, load_config
from a2v_het.frontend import FrontendConfig, SincNetConfig, build_frontend
from a2v_het.frontend.sincnet import (
    ENVELOPE_EPS,
    SincNetFrontend,
    fft_filter_abs,
    fft_filter_same,
    fft_size,
    frame_mean,
    frame_period,
    sinc_bandpass_kernels,
    sinc_taps,
)
from a2v_het.train.config import PretrainConfig

TOKEN_RATE = 50.0


def _fe(dim: int = 16, seed: int = 0, **sincnet) -> SincNetFrontend:
    torch.manual_seed(seed)
    fe = build_frontend(FrontendConfig(name="sincnet", dim=dim, token_rate=TOKEN_RATE,
                                       sincnet=SincNetConfig(**sincnet)))
    assert isinstance(fe, SincNetFrontend)
    return fe


def _set_bands(fe: SincNetFrontend, bands_hz: list[tuple[float, float]]) -> None:
    """Put the learnable cutoffs at the given [f1, f2] Hz."""
    c = fe.c
    with torch.no_grad():
        for i, (f1, f2) in enumerate(bands_hz):
            fe.low_hz_[i] = f1 - c.min_low_hz
            fe.band_hz_[i] = f2 - f1 - c.min_band_hz


def _tone(freq_hz: float, sr: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> torch.Tensor:
    t = torch.arange(int(round(seconds * sr)), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq_hz * t + phase)).float()


def _noise_and_tone(n: int, sr: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(n, generator=g) + _tone(1500.0, sr, n / sr, 0.3)


def numpy_bandpass(f1: float, f2: float, sr: float, taps: int) -> np.ndarray:
    """Reference windowed-sinc band-pass written from the textbook definition (float64): ideal low-pass at f2 minus
    ideal low-pass at f1, impulse responses 2 f sinc(2 f t) sampled at t = n / sr, times a symmetric Hamming window,
    times 1 / sr; cutoffs clipped at the Nyquist."""
    nyq = sr / 2
    f1 = min(f1, nyq)
    f2 = max(min(f2, nyq), f1)
    n = np.arange(taps)
    t = (n - taps // 2) / sr
    h = 2 * f2 * np.sinc(2 * f2 * t) - 2 * f1 * np.sinc(2 * f1 * t)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * n / (taps - 1))
    return h * hamming / sr


# --------------------------------------------------------------------------------------------- filter design


@pytest.mark.parametrize("sr", [8000, 22050, 48000, 96000])
def test_kernels_match_numpy_reference_and_scipy_firwin(sr):
    taps = sinc_taps(0.01, sr)
    assert taps % 2 == 1 and abs(taps - 0.01 * sr) <= 1
    bands = [(300.0, 900.0), (1000.0, 1400.0), (2500.0, 3900.0), (3000.0, 9000.0)]  # the last one crosses 4 kHz
    f1, f2 = torch.tensor([b[0] for b in bands]), torch.tensor([b[1] for b in bands])
    ours = sinc_bandpass_kernels(f1, f2, sr, taps).double().numpy()
    for c, (lo, hi) in enumerate(bands):
        np.testing.assert_allclose(ours[c], numpy_bandpass(lo, hi, sr, taps), atol=2e-6)
        if hi < sr / 2:  # scipy's design, unscaled: an independent implementation of the same filter
            ref = firwin(taps, [lo, hi], pass_zero=False, window="hamming", scale=False, fs=sr)
            np.testing.assert_allclose(ours[c], ref, atol=2e-6)


@pytest.mark.parametrize("sr", [8000, 22050, 48000, 96000])
def test_sinc_stage_passes_tones_in_band_and_attenuates_them_out_of_band(sr):
    """Measured on the stem itself: a tone's RMS through the filter over its RMS in."""
    fe = _fe(num_filters=3)
    _set_bands(fe, [(1000.0, 2000.0), (2500.0, 3500.0), (6000.0, 20000.0)])
    nyq = sr / 2

    def gain(freq, c):
        x = _tone(freq, sr, 0.4)
        y = fe.sinc_stage(x[None], sr)[0, c].detach()
        mid = slice(len(x) // 4, 3 * len(x) // 4)  # away from the clip edges, where the kernel overhangs the clip
        return float(y[mid].square().mean().sqrt() / x[mid].square().mean().sqrt())

    for freq, c in [(1500.0, 0), (1200.0, 0), (1800.0, 0), (3000.0, 1)]:
        assert abs(gain(freq, c) - 1) < 0.02, (sr, freq, c)
    # >= 400 Hz from an edge: past the Hamming transition (~3.3 / 10 ms = 330 Hz); its sidelobes are ~-53 dB.
    for freq, c in [(500.0, 0), (2500.0, 0), (3900.0, 0), (1500.0, 1), (3950.0, 1)]:
        if freq < nyq:
            assert 20 * math.log10(gain(freq, c) + 1e-12) < -40, (sr, freq, c)
    if nyq > 6500:
        assert abs(gain(min(nyq - 1000, 15000.0), 2) - 1) < 0.02  # the wide band, clipped at Nyquist at 16-22 kHz


def test_filters_above_nyquist_output_exactly_zero_and_the_upper_edge_is_clipped():
    k = sinc_bandpass_kernels(torch.tensor([5000.0, 3000.0]), torch.tensor([7000.0, 6000.0]), 8000, 81)
    assert torch.all(k[0] == 0)  # f1 = 5 kHz >= 4 kHz Nyquist
    ref = sinc_bandpass_kernels(torch.tensor([3000.0]), torch.tensor([4000.0]), 8000, 81)
    torch.testing.assert_close(k[1:], ref)  # f2 clipped at the Nyquist

    fe = _fe()
    dead = fe.cutoffs_hz()[:, 0].detach() >= 4000.0
    assert 0 < int(dead.sum()) < fe.c.num_filters
    x = _noise_and_tone(8000, 8000, 0)[None]
    y = fe.sinc_stage(x, 8000)
    assert torch.all(y[0, dead] == 0) and torch.all(y[0, ~dead].abs().amax(dim=1) > 0)
    # In the full forward: the dead filters' pooled envelopes sit at the log floor, and what the conv stack reads
    # for them is exactly zero; the same filters are live for a 48 kHz clip in the same batch.
    seen = {}
    fe.convs[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("h", args[0].detach()))
    wave = torch.stack([x[0], _noise_and_tone(8000, 48000, 1)])
    rates, lengths = torch.tensor([8000, 48000]), torch.tensor([8000, 8000])
    with torch.no_grad():
        env = fe.band_envelopes(wave, rates, lengths, 20)
        fe(wave, rates, lengths)
    assert torch.all(env[0, dead] == math.log(ENVELOPE_EPS))
    assert torch.all(seen["h"][0, dead] == 0) and seen["h"][0, ~dead].abs().amax() > 0.1
    assert seen["h"][1, dead].abs().amax() > 0.1


# ----------------------------------------------------------------------------------- FFT filtering, pooling


def test_fft_filter_matches_numpy_convolve_and_fft_sizes_are_5_smooth():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1000)).astype(np.float32)
    k = rng.standard_normal((3, 41)).astype(np.float32)
    y = fft_filter_same(torch.from_numpy(x), torch.from_numpy(k)).numpy()
    ya = fft_filter_abs(torch.from_numpy(x), torch.from_numpy(k)).numpy()
    for b in range(2):
        for c in range(3):
            ref = np.convolve(x[b], k[c], mode="same")
            np.testing.assert_allclose(y[b, c], ref, atol=1e-4)
            np.testing.assert_allclose(ya[b, c], np.abs(ref), atol=1e-4)
    for n in [1, 7, 97, 1040, 144480, 288960]:
        m = fft_size(n)
        assert m >= n and m < 1.25 * n + 8
        while m % 2 == 0:
            m //= 2
        for p in (3, 5):
            while m % p == 0:
                m //= p
        assert m == 1


def test_fused_abs_backward_matches_autograd():
    torch.manual_seed(0)
    small = (torch.randn(2, 40, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 9, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(fft_filter_abs, small)  # finite differences (small: one pass per element)
    x = torch.randn(3, 300, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 21, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, 300, dtype=torch.float64)
    fused = torch.autograd.grad(fft_filter_abs(x, k), (x, k), g)
    plain = torch.autograd.grad(fft_filter_same(x, k).abs(), (x, k), g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sr,period", [(8000, (40, 1)), (22050, (441, 4)), (44100, (441, 2)), (22051, (22051, 200))])
def test_frame_mean_uses_exact_frame_boundaries_in_seconds(sr, period):
    frame_rate = 200.0
    assert frame_period(sr, frame_rate) == period
    n = int(0.09 * sr)
    y = torch.rand(2, 3, n, dtype=torch.float64)
    n_frames = int(n * frame_rate / sr)  # whole frames only, so every reference frame is full
    got = frame_mean(y, sr, frame_rate, n_frames)
    frame_of = np.floor(np.arange(n) * frame_rate / sr + 1e-12).astype(int)
    ref = torch.stack([y[..., torch.from_numpy(frame_of == f)].mean(-1) for f in range(n_frames)], dim=-1)
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------------------------- frontend contract


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 48000, 96000])
def test_token_count_is_duration_times_token_rate_at_every_rate(sr):
    fe = _fe().eval()
    seconds = [3.0, 1.37, 0.0101, 2.0 + 1.0 / sr, 0.0]  # whole, odd, under one token, one sample over, empty
    lengths = torch.tensor([int(round(s * sr)) for s in seconds])
    wave = torch.zeros(len(seconds), int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        wave[i, :n] = _noise_and_tone(n, sr, i)
    with torch.no_grad():
        out = fe(wave, torch.full((len(seconds),), sr), lengths)
    want = [math.ceil(n * TOKEN_RATE / sr - 1e-9) for n in lengths.tolist()]
    assert want[:4] == [150, 69, 1, 101] and want[4] == 0
    assert out.tokens.shape == (len(seconds), max(want), 16)
    assert (~out.padding_mask).sum(dim=1).tolist() == want
    assert [fe.num_tokens(s, sr) for s in seconds] == want
    assert torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("junk", [False, True])
def test_valid_tokens_do_not_depend_on_batch_padding(junk):
    """A 0.83 s clip at 22.05 kHz alone, then batched after a 1.9 s clip at the same rate (so its FFT is longer) and
    a 1.2 s clip at 48 kHz: the same valid tokens (FFT rounding only) and a mask past exactly its own tokens. With
    junk=True the samples past its end are noise instead of zeros (the stem must not read them)."""
    fe = _fe().eval()
    sr, n = 22050, int(0.83 * 22050)
    clip = _noise_and_tone(n, sr, 1)
    with torch.no_grad():
        alone = fe(clip[None], torch.tensor([sr]), torch.tensor([n]))
        rates = torch.tensor([sr, sr, 48000])
        lengths = torch.tensor([int(1.9 * sr), n, int(1.2 * 48000)])
        wave = 0.5 * torch.randn(3, int(lengths.max())) if junk else torch.zeros(3, int(lengths.max()))
        wave[0, : lengths[0]] = _noise_and_tone(int(lengths[0]), sr, 2)
        wave[1, :n] = clip
        wave[2, : lengths[2]] = _noise_and_tone(int(lengths[2]), 48000, 3)
        both = fe(wave, rates, lengths)
    k = alone.tokens.shape[1]
    assert k == 42 and both.tokens.shape[1] == 95
    assert not both.padding_mask[1, :k].any() and both.padding_mask[1, k:].all()
    torch.testing.assert_close(both.tokens[1, :k], alone.tokens[0], atol=1e-4, rtol=1e-4)


def test_same_band_limited_sound_at_16_and_48_khz_gives_the_same_pooled_envelopes():
    """Cutoffs in Hz, kernels in seconds and frames in seconds: three tones (700, 2300, 5100 Hz; all below 8 kHz)
    recorded at 16 and at 48 kHz give the same log envelopes in every filter that carries them. What may differ is only the
    discretisation: the 16 kHz kernel's response aliases the -53 dB Hamming sidelobes (< 0.3 %), and the frame means
    of |y| are Riemann sums over 80 vs 240 samples of a rectified sinusoid (<= 1 % at 7 samples per cycle, and every
    frame holds a whole number of half cycles). So 0.02 in natural log (0.17 dB). Filters that only see sidelobe
    leakage (more than 40 dB below the loudest) are excluded: there both rates read a -60 to -80 dB residue whose
    exact value depends on where each kernel's spectral nulls fall."""
    fe = _fe().eval()
    cut = fe.cutoffs_hz().detach()
    env = {}
    for sr in (16000, 48000):
        x = _tone(700.0, sr, 1.0, 0.3) + _tone(2300.0, sr, 1.0, 0.1, 1.0) + _tone(5100.0, sr, 1.0, 0.05, 2.0)
        with torch.no_grad():
            env[sr] = fe.band_envelopes(x[None], torch.tensor([sr]), torch.tensor([sr]), 200)[0]  # (C, 200)
    mid = slice(10, 190)  # away from the clip edges, where the kernels overhang the clip (1 frame is enough)
    level = env[48000][:, mid].mean(dim=1)
    carrying = (cut[:, 1] < 7000) & (level > level.max() - math.log(100.0))
    assert int(carrying.sum()) >= 4
    diff = (env[16000][carrying][:, mid] - env[48000][carrying][:, mid]).abs().max()
    assert diff < 0.02, diff
    # and the envelopes carry frequency information: a band between the tones is far quieter than the tones' bands
    between = (cut[:, 0] > 3000) & (cut[:, 1] < 4500)
    assert (level[between] < level.max() - math.log(100.0)).all()


def test_gradients_reach_the_cutoffs_but_not_filters_above_every_nyquist():
    fe = _fe().train()
    rates = torch.tensor([16000, 8000])
    wave = torch.stack([_noise_and_tone(8000, 16000, 0), _noise_and_tone(8000, 8000, 1)])
    out = fe(wave, rates, torch.tensor([8000, 8000]))
    out.tokens.square().mean().backward()
    cut = fe.cutoffs_hz().detach()
    for p in (fe.low_hz_, fe.band_hz_):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    live = cut[:, 0] < 8000
    assert (fe.low_hz_.grad[live].abs() > 0).sum() >= int(live.sum()) - 1
    assert (fe.band_hz_.grad[live].abs() > 0).sum() >= int(live.sum()) - 1
    assert torch.all(fe.low_hz_.grad[~live] == 0) and torch.all(fe.band_hz_.grad[~live] == 0)


def test_silence_dc_clipping_and_bf16_stay_finite():
    rate, n = 16000, 16000
    t = torch.arange(n) / rate
    cases = torch.stack([
        torch.zeros(n),  # digital silence
        torch.full((n,), 0.7),  # DC
        torch.sign(torch.sin(2 * math.pi * 440.0 * t)),  # full-scale square wave (clipping)
        torch.clamp(8 * _noise_and_tone(n, rate, 0), -1, 1),  # hard-clipped noise + tone
    ])
    rates, lengths = torch.full((4,), rate), torch.full((4,), n)
    for bf16 in (False, True):
        fe = _fe().train()
        wave = cases.to(torch.bfloat16) if bf16 else cases
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fe(wave, rates, lengths)
            loss = out.tokens.float().square().mean()
        assert torch.isfinite(out.tokens.float()).all(), bf16
        loss.backward()
        for name, p in fe.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (bf16, name)
        assert fe.low_hz_.grad.abs().sum() > 0
    # the stem itself runs in fp32 under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        env = fe.band_envelopes(cases, rates, lengths, 200)
    assert env.dtype == torch.float32 and torch.isfinite(env).all()
    assert torch.all(env[0] == math.log(ENVELOPE_EPS))  # silence reads the floor exactly


def test_build_frontend_and_mel_spaced_initial_cutoffs():
    fe = build_frontend(FrontendConfig(name="sincnet"))
    assert isinstance(fe, SincNetFrontend) and fe.dim == 256
    cut = fe.cutoffs_hz()
    c = SincNetConfig()
    assert cut.shape == (c.num_filters, 2) and cut.requires_grad
    cut = cut.detach()
    assert abs(float(cut[0, 0]) - c.init_low_hz) < 1e-3 and abs(float(cut[-1, 1]) - c.init_high_hz) < 1
    assert (cut[1:, 0] > cut[:-1, 0]).all() and torch.allclose(cut[1:, 0], cut[:-1, 1])  # adjacent bands
    width = cut[:, 1] - cut[:, 0]
    assert (width[1:] > width[:-1]).all()  # wider with frequency (mel)
    assert (cut[:, 0] >= c.min_low_hz).all() and (width >= c.min_band_hz - 1e-3).all()


@pytest.mark.parametrize("override,key", [
    ({"kernel_s": 0.0}, "frontend.sincnet.kernel_s"),
    ({"frames_per_token": 3}, "frontend.sincnet.frames_per_token"),
    ({"num_filters": 0}, "frontend.sincnet.num_filters"),
    ({"conv_channels": 0}, "frontend.sincnet.conv_channels"),
    ({"conv_layers": 0}, "frontend.sincnet.conv_layers"),
    ({"min_band_hz": 0.0}, "frontend.sincnet.min_band_hz"),
    ({"min_low_hz": -1.0}, "frontend.sincnet.min_low_hz"),
    ({"init_low_hz": 9000.0, "init_high_hz": 8000.0}, "frontend.sincnet.init_low_hz"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="sincnet", sincnet=SincNetConfig(**override)).validate()
    # the same through a recipe override on the command line
    items = ["frontend.name=sincnet"] + [f"frontend.sincnet.{k}={v}" for k, v in override.items()]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PretrainConfig, overrides=items)
