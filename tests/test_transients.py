"""Transient energy (rise above each bin's median) and its capture by the bands, against numpy."""

from __future__ import annotations

import numpy as np
import torch

from a2v_het.eval.transients import transient_capture, transient_energy
from a2v_het.frontend.spectrum import frequency_grid, grid_power_spectrogram


def test_transient_energy_matches_numpy_over_valid_frames():
    rng = np.random.default_rng(0)
    power = rng.exponential(size=(2, 7, 30)).astype(np.float32)
    valid = np.ones((2, 30), dtype=bool)
    valid[1, 21:] = False
    got = transient_energy(torch.from_numpy(power), torch.from_numpy(valid)).numpy()
    for b in range(2):
        p = power[b][:, valid[b]]
        floor = np.sort(p, axis=-1)[:, (p.shape[-1] - 1) // 2, None]  # the lower median, as torch takes it
        np.testing.assert_allclose(got[b], ((p - floor) * (p > floor * 10 ** 0.6)).sum(-1), rtol=1e-5)


def test_a_sweep_counts_and_a_hum_does_not():
    sr, seconds = 192000, 1.0
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(1)
    hum = 0.5 * np.sin(2 * np.pi * 60000 * t)  # loud, constant: no transient energy
    sweep = np.zeros_like(t)
    on = (t > 0.4) & (t < 0.41)  # 10 ms FM sweep 80 -> 30 kHz
    tau = t[on] - 0.4
    sweep[on] = 0.2 * np.sin(2 * np.pi * (80000 * tau - 0.5 * 5e6 * tau**2))
    wave = torch.from_numpy((hum + sweep + 1e-3 * rng.standard_normal(t.shape)).astype(np.float32))[None]
    spec = grid_power_spectrogram(wave, torch.tensor([sr]), torch.tensor([wave.shape[1]]), 0.002, 0.001,
                                  frequency_grid(sr, 500.0))
    energy = transient_energy(spec.power, spec.frame_valid)
    freqs = spec.freqs_hz
    hum_bin = int(round(60000 / spec.grid_hz))
    assert energy[0, hum_bin] == 0.0
    # every bin the sweep crosses holds transient energy, except the hum's own and the two beside it (its leakage
    # raises their floor above the sweep)
    assert (energy[0, (freqs > 30000) & (freqs < 80000)] > 0).float().mean() > 0.9
    # Bands over the sweep capture most of it; one band at the hum captures almost none.
    over_sweep = transient_capture(energy, freqs, torch.tensor([[28000.0, 52000.0]]), 26000.0, 15000, 120000)
    at_hum = transient_capture(energy, freqs, torch.tensor([[58000.0]]), 4000.0, 15000, 120000)
    assert over_sweep.item() > 0.9
    assert at_hum.item() < 0.2


def test_capture_takes_per_band_widths_and_is_one_without_transients():
    freqs = torch.arange(11, dtype=torch.float32) * 10.0  # 0..100 Hz
    energy = torch.zeros(2, 11)
    energy[0, 2] = 1.0  # 20 Hz
    energy[0, 8] = 3.0  # 80 Hz
    starts = torch.tensor([[15.0, 75.0], [0.0, 0.0]])
    widths = torch.tensor([[10.0, 2.0], [5.0, 5.0]])  # the second band [75, 77] misses 80 Hz
    got = transient_capture(energy, freqs, starts, widths, 0.0, 100.0)
    torch.testing.assert_close(got, torch.tensor([0.25, 1.0]))
    wide = transient_capture(energy, freqs, starts, torch.tensor([[10.0, 10.0], [5.0, 5.0]]), 0.0, 100.0)
    torch.testing.assert_close(wide, torch.tensor([1.0, 1.0]))
    only_high = transient_capture(energy, freqs, starts, widths, 50.0, 100.0)  # the 20 Hz energy does not count
    torch.testing.assert_close(only_high, torch.tensor([0.0, 1.0]))
