"""Rate augmentation: exact band-limited up-sampling (scipy's FFT resampler) and an upward single-sideband shift."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample

from a2v_het.data.augment import rate_augment, upsample_and_shift


@pytest.mark.parametrize("n", [800, 801])
def test_upsampling_without_shift_is_scipy_fft_resampling(n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    y = upsample_and_shift(torch.from_numpy(x), 3, 0).numpy()
    np.testing.assert_allclose(y, resample(x, 3 * n), atol=1e-9)


def test_a_shifted_tone_lands_at_f_plus_shift_with_its_amplitude():
    sr, n = 8000, 8000
    t = np.arange(n) / sr
    x = 0.5 * np.sin(2 * math.pi * 1000.0 * t + 0.3)
    shift_hz = 3000.0
    y = upsample_and_shift(torch.from_numpy(x), 4, int(shift_hz * n / sr)).numpy()
    t4 = np.arange(4 * n) / (4 * sr)
    np.testing.assert_allclose(y, 0.5 * np.sin(2 * math.pi * 4000.0 * t4 + 0.3), atol=1e-9)
    # and energy is kept for noise too (Parseval; DC and the old Nyquist bin handled once)
    z = np.random.default_rng(1).standard_normal(n)
    w = upsample_and_shift(torch.from_numpy(z), 2, 500).numpy()
    assert np.mean(w**2) == pytest.approx(np.mean(z**2), rel=1e-3)


def test_shift_beyond_the_new_nyquist_is_refused():
    with pytest.raises(ValueError, match="Nyquist"):
        upsample_and_shift(torch.zeros(100), 2, 60)


def test_rate_augment_keeps_durations_and_caps_the_rate():
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(6, 48000)
    rates = torch.tensor([8000, 16000, 48000, 96000, 8000, 22050])
    lengths = torch.tensor([8000, 16000, 48000, 48000, 4000, 22050])
    wave = wave * (torch.arange(48000)[None] < lengths[:, None])  # zero-padded, as batches are
    out, new_rates, new_lengths = rate_augment(wave, rates, lengths, 1.0, 192000, g)
    assert (new_rates <= 192000).all() and (new_rates % rates == 0).all()
    assert (new_rates[:3] > rates[:3]).all()  # every clip with room was augmented at prob 1
    torch.testing.assert_close(new_lengths.double() / new_rates.double(), lengths.double() / rates.double())
    assert out.shape == (6, int(new_lengths.max()))
    same, *_ = rate_augment(wave, rates, lengths, 0.0, 192000, g)
    torch.testing.assert_close(same, wave[:, : same.shape[1]])
