"""The band picker: its untrained start is the greedy maximiser of the call evidence; a trained picker gives the
same call the same bands at every sample rate; the non-learned baselines behave as described."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from signals import clip_batch, heterodyne_frontend
from a2v_het.frontend.band_selectors import (
    entropy_starts,
    flux_starts,
    greedy_starts,
    random_starts,
    uniform_starts,
)
from a2v_het.frontend import hypernetwork
from a2v_het.frontend.config import HeterodyneConfig
from a2v_het.frontend.hypernetwork import BandPicker, band_capture
from a2v_het.frontend.spectrum import grid_power_spectrogram
from a2v_het.train.objective import CoverageObjective
from data_tools.synth import make_clip

TRAIN_RATES = (8000, 16000, 22050, 32000, 44100, 48000)


frontend = heterodyne_frontend
batch = clip_batch


def train_picker(fe, steps=40, clips=6, seconds=2.0, lr=3e-3, seed=0):
    """A short coverage training on synthetic field clips at the training rates; returns the final loss."""
    objective = CoverageObjective(fe)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    loss = None
    for _ in range(steps):
        rates = rng.choice(TRAIN_RATES, clips)
        data = [(int(sr), make_clip(rng, "field", int(sr), seconds)[0]) for sr in rates]
        loss, _ = objective(*batch(data))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def call_clip(sr=96000, seconds=2.0, f_hz=1200.0, seed=0):
    """A 0.6 s tone of amplitude 0.3 over unit-variance pink noise (most of its power at low frequencies, as wind)
    and faint white noise: the mean power over a clip's valid bins, and so any input normalised over them, changes
    by an order of magnitude between 8 and 96 kHz while the call does not change at all."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    spec = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0))
    pink = np.fft.irfft(spec, n)
    env = ((t > 0.6) & (t < 1.2)).astype(float)
    return 0.3 * pink / pink.std() + 0.02 * rng.standard_normal(n) + 0.3 * env * np.sin(2 * math.pi * f_hz * t)


def test_untrained_picker_is_the_greedy_evidence_maximiser():
    """The head's output layer starts at zero, so the first band is where a band captures the most evidence (up to
    the local soft-argmax around it), whatever the random weights of the rest of the picker."""
    for seed in range(3):
        fe = frontend(seed)
        assert fe.picker.head_out.weight.abs().sum() == 0
        sr = 48000
        rng = np.random.default_rng(seed)
        n = 2 * sr
        t = np.arange(n) / sr
        x = 0.05 * rng.standard_normal(n)
        for f, amp in ((3000.0, 0.1), (11000.0, 0.3), (19000.0, 0.05)):
            x = x + amp * ((t > 0.5) & (t < 1.0)) * np.sin(2 * math.pi * f * t)
        a = fe.analyze(*batch([(sr, x)]))
        greedy = greedy_starts(a.statistic, torch.tensor([sr]), 8, 2000.0, 50.0, 200.0, 50.0)
        for f in (3000.0, 11000.0, 19000.0):  # every call lies inside a hard passband, for both
            for starts in (a.band_start_hz[0, :8], greedy[0]):  # the 8 detail bands (the context bands follow)
                assert ((starts <= f) & (starts + 2000.0 >= f)).any()


@pytest.mark.slow
def test_a_trained_picker_gives_the_same_call_the_same_bands_at_8_48_and_96_khz():
    """Train briefly at 8-48 kHz, then the same call (a 96 kHz clip and its 48 kHz and 8 kHz resamplings): the first
    band takes the call and starts at the same frequency at all three rates, to a fifth of a grid bin (10 Hz; the
    issue asks for one bin). Measured: 0.1 Hz apart; the earlier picker (inputs normalised over the valid bins,
    power variance, random head) trained the same way put its first band on the pink noise, 17 Hz apart."""
    fe = frontend()
    train_picker(fe)
    assert fe.picker.head_out.weight.abs().sum() > 0  # the picker did learn something
    x96 = call_clip()
    clips = [(96000, x96), (48000, resample_poly(x96, 1, 2)), (8000, resample_poly(x96, 1, 12))]
    with torch.no_grad():
        starts = [fe.analyze(*batch([clip])).band_start_hz[0] for clip in clips]
    first = [float(s[0]) for s in starts]
    assert first[0] <= 1200.0 <= first[0] + 2000.0  # the first band takes the call
    assert max(first) - min(first) <= 10.0, first


def test_uniform_tiles_and_random_stays_inside():
    sr = torch.tensor([8000, 48000, 96000])
    u = uniform_starts(sr, 8, 2000.0, 50.0)
    assert torch.allclose(u[:, 0], torch.full((3,), 50.0)) and torch.allclose(u[:, -1], sr / 2 - 2000.0)
    assert (u[:, 1:] > u[:, :-1]).all() or sr.min() <= 2 * (50 + 2000)  # an 8 kHz clip has a 1950 Hz range
    g = torch.Generator().manual_seed(0)
    r = random_starts(sr, 8, 2000.0, 50.0, g)
    assert (r >= 50.0).all() and (r <= sr[:, None] / 2 - 2000.0).all()
    r2 = random_starts(sr, 8, 2000.0, 50.0, torch.Generator().manual_seed(0))
    assert torch.equal(r, r2)


def test_spectral_flux_and_entropy_selectors():
    """Flux picks the band of an on-off call over stationary noise; entropy never picks the band of a loud tone (its
    power over the band's bins is peaked) while bands of flat noise remain, however quiet the noise."""
    sr, n = 48000, 48000 * 2
    rng = np.random.default_rng(0)
    t = np.arange(n) / sr
    x = 0.01 * rng.standard_normal(n) + 0.5 * ((t % 0.2) < 0.05) * np.sin(2 * math.pi * 9000.0 * t)
    flat = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * ((np.fft.rfftfreq(n, 1 / sr) > 15000)
                                                                 & (np.fft.rfftfreq(n, 1 / sr) < 17000)), n)
    y = 0.001 * rng.standard_normal(n) + 0.5 * np.sin(2 * math.pi * 4000.0 * t) + 0.5 * flat / flat.std()
    wave, rates, lengths = batch([(sr, x), (sr, y)])
    spec = grid_power_spectrogram(wave, rates, lengths, 0.02, 0.01, 481)
    fl = flux_starts(spec.power, spec.frame_valid, spec.freqs_hz, rates, 1, 2000.0, 50.0)
    assert float(fl[0, 0]) <= 9000.0 <= float(fl[0, 0]) + 2000.0
    en = entropy_starts(spec.power, spec.frame_valid, spec.freqs_hz, rates, 8, 2000.0, 50.0)
    assert not ((en[1] <= 4000.0) & (en[1] + 2000.0 >= 4000.0)).any()
    many = flux_starts(spec.power, spec.frame_valid, spec.freqs_hz, rates, 8, 2000.0, 50.0)
    assert (many[0].sort().values.diff() >= 2000.0).all()  # no overlaps while non-overlapping candidates remain


@pytest.mark.parametrize("g,band_bins", [(1, 0), (5, 0), (5, 4), (5, 9), (40, 39), (100, 40)])
def test_band_capture_sums_each_start_window(g, band_bins):
    values = torch.rand(2, g, generator=torch.Generator().manual_seed(g), dtype=torch.float64)
    expected = torch.stack([values[:, i: i + band_bins + 1].sum(-1) for i in range(g)], dim=1)
    torch.testing.assert_close(band_capture(values, band_bins), expected, rtol=1e-12, atol=1e-12)


def test_the_body_differentiated_on_the_windows_alone_gives_the_grid_pass_bands_and_gradients(monkeypatch):
    """BandPicker.body_on_windows: the same bands and parameter gradients (float64, to round-off) as differentiating
    the body on the whole grid, for clips whose windows touch the grid's ends and a clip whose bands crowd."""
    torch.manual_seed(0)
    picker = BandPicker(HeterodyneConfig(), 50.0).double()
    for p in picker.parameters():  # away from the greedy start, so the head and body matter
        p.data.normal_(0.0, 0.3)
    g = 5000
    sample_rate = torch.tensor([500000, 384000, 16000])
    freqs = torch.arange(g, dtype=torch.float64) * 50.0
    freq_valid = freqs[None] <= sample_rate[:, None] / 2
    gen = torch.Generator().manual_seed(1)
    statistic = torch.rand(3, g, generator=gen, dtype=torch.float64) * freq_valid
    statistic[0, :60] += 5.0  # calls at the grid's lowest valid starts and at the top of the 500 kHz clip
    statistic[0, -60:] += 5.0
    mean_power = torch.rand(3, g, generator=gen, dtype=torch.float64) * freq_valid + 1e-3

    def bands_and_grads(fraction):
        monkeypatch.setattr(hypernetwork, "CROP_FRACTION", fraction)
        picker.zero_grad()
        f = picker(statistic, mean_power, freq_valid, sample_rate)
        (f * torch.arange(1.0, f.shape[1] + 1, dtype=f.dtype)).sum().backward()
        return f.detach(), {n: p.grad.clone() for n, p in picker.named_parameters()}

    f_grid, grad_grid = bands_and_grads(0.0)
    f_win, grad_win = bands_and_grads(1.0)
    torch.testing.assert_close(f_win, f_grid, rtol=0, atol=1e-9)
    scale = max(float(grad.abs().max()) for grad in grad_grid.values())
    for name, grad in grad_grid.items():
        # head_out.bias shifts every logit of a window alike: the softmax ignores it, its gradient is round-off
        assert name == "head_out.bias" or grad.abs().max() > 1e-6 * scale, name
        torch.testing.assert_close(grad_win[name], grad, rtol=1e-9, atol=1e-12 * scale, msg=name)
