"""SincNet stem: the band-pass kernels against scipy's windowed-sinc FIR design, the FFT convolution against numpy,
filters in Hz at every rate, Nyquist handling, gradients to the cutoffs, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import firwin

from a2v_het.config import ConfigError
from a2v_het.frontend import FrontendConfig, SincNetConfig, build_frontend
from a2v_het.frontend.sincnet import SincNetFrontend, fft_filter_same, sinc_bandpass_kernels, sinc_taps


@pytest.mark.parametrize("sr", [8000, 22050, 96000])
def test_kernels_match_scipy_firwin_hamming_bandpass(sr):
    taps = sinc_taps(0.01, sr)
    f1, f2 = torch.tensor([300.0, 1000.0, 2500.0]), torch.tensor([900.0, 1400.0, 3900.0])
    ours = sinc_bandpass_kernels(f1, f2, sr, taps).numpy()
    for c in range(3):
        # scale=False: the unscaled ideal band-pass times the window, the SincNet definition.
        ref = firwin(taps, [float(f1[c]), float(f2[c])], pass_zero=False, window="hamming", scale=False, fs=sr)
        np.testing.assert_allclose(ours[c], ref, atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 48000, 96000])
def test_passband_gain_one_and_stopband_attenuated_at_every_rate(sr):
    f1, f2 = 1000.0, 2000.0
    taps = sinc_taps(0.01, sr)
    h = sinc_bandpass_kernels(torch.tensor([f1]), torch.tensor([f2]), sr, taps)[0].double().numpy()
    freqs = np.fft.rfftfreq(1 << 18, 1 / sr)
    gain = np.abs(np.fft.rfft(h, 1 << 18))
    inside = (freqs > f1 + 200) & (freqs < f2 - 200)
    outside = (freqs < f1 - 400) | ((freqs > f2 + 400) & (freqs < 4000))
    assert np.all(np.abs(gain[inside] - 1) < 0.02)
    assert 20 * np.log10(gain[outside].max()) < -40  # Hamming: about -53 dB sidelobes


def test_fft_filter_same_matches_numpy_convolve():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1000)).astype(np.float32)
    k = rng.standard_normal((3, 41)).astype(np.float32)
    y = fft_filter_same(torch.from_numpy(x), torch.from_numpy(k)).numpy()
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(y[b, c], np.convolve(x[b], k[c], mode="same"), atol=1e-4)


def test_bands_above_nyquist_are_silent_and_clipped_at_nyquist():
    k = sinc_bandpass_kernels(torch.tensor([5000.0, 3000.0]), torch.tensor([7000.0, 6000.0]), 8000, 81)
    assert torch.all(k[0] == 0)  # f1 = 5 kHz >= 4 kHz Nyquist
    ref = sinc_bandpass_kernels(torch.tensor([3000.0]), torch.tensor([4000.0]), 8000, 81)
    torch.testing.assert_close(k[1:], ref)  # f2 clipped at the Nyquist


def test_same_tone_gives_the_same_envelopes_at_16_and_48_khz():
    """The filters are defined in Hz and the envelope frames in seconds: a tone (about 1 kHz) recorded at 16 kHz and at
    48 kHz gives the same log envelopes in the filters that pass it (up to the discretisation of two different
    FIR kernels of the same design, well under 0.05 in natural log = 0.4 dB)."""
    torch.manual_seed(0)
    fe = SincNetFrontend(FrontendConfig(name="sincnet", dim=32)).eval()
    cut = fe.cutoffs_hz().detach()
    tone_hz = float(cut[:, 0][cut[:, 0] > 1000][0] + cut[:, 1][cut[:, 0] > 1000][0]) / 2  # centre of a band
    env = {}
    for sr in (16000, 48000):
        t = torch.arange(sr, dtype=torch.float64) / sr
        x = (0.3 * torch.sin(2 * math.pi * tone_hz * t)).float()[None]
        with torch.no_grad():
            env[sr] = fe.band_envelopes(x, torch.tensor([sr]), torch.tensor([sr]), 200)[0]  # (C, 200)
    passing = (cut[:, 0] < tone_hz - 50) & (cut[:, 1] > tone_hz + 50)
    assert passing.sum() == 1
    mid = slice(20, 180)  # away from the clip edges, where the kernels overhang the clip
    diff = (env[16000][passing][:, mid] - env[48000][passing][:, mid]).abs().max()
    assert diff < 0.05, diff
    # and a filter far from the tone sees far less (it is a real band-pass, not an all-pass)
    far = cut[:, 0] > 4000
    assert (env[16000][far][:, mid].mean() < env[16000][passing][:, mid].mean() - 3).all()


def test_cutoffs_get_gradients_and_respect_minimums():
    torch.manual_seed(0)
    fe = build_frontend(FrontendConfig(name="sincnet", dim=16))
    cut = fe.cutoffs_hz()
    assert cut.shape == (32, 2)
    assert (cut[:, 0] >= 50).all() and (cut[:, 1] - cut[:, 0] >= 50 - 1e-3).all()
    assert (cut[1:, 0] > cut[:-1, 0]).all()  # mel-spaced initial bands, ascending
    x = 0.1 * torch.randn(2, 32000)
    out = fe(x, torch.tensor([32000, 16000]), torch.tensor([32000, 16000]))
    out.tokens.square().mean().backward()
    assert fe.low_hz_.grad is not None and fe.low_hz_.grad.abs().sum() > 0
    assert fe.band_hz_.grad is not None and fe.band_hz_.grad.abs().sum() > 0


@pytest.mark.parametrize("override,key", [({"kernel_s": 0.0}, "frontend.sincnet.kernel_s"),
                                          ({"frames_per_token": 3}, "frontend.sincnet.frames_per_token"),
                                          ({"num_filters": 0}, "frontend.sincnet.num_filters")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="sincnet", sincnet=SincNetConfig(**override)).validate()
