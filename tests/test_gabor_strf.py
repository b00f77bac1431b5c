"""Learnable Gabor STRFs (``frontend.name: gabor_strf``): the vectorised kernel builder against a per-channel numpy
reference, the conv's alignment, modulation-rate and orientation selectivity (on a synthetic spectrogram and on
amplitude-modulated sound through the whole log-mel path), the same moduli at 16 and 48 kHz, token counts at every
rate, padding invariance, gradients to every Gabor parameter, numerics on hostile inputs, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError, load_config
from a2v_het.frontend import FrontendConfig, GaborStrfConfig, build_frontend
from a2v_het.frontend.gabor_strf import (
    GaborStrfFrontend,
    gabor_kernels,
    hold_edges,
    normalise_log_mel,
    strf_responses,
    valid_cells,
)
from a2v_het.train.config import PretrainConfig

TOKEN_RATE = 50.0


def _fe(dim: int = 16, seed: int = 0, **overrides) -> GaborStrfFrontend:
    torch.manual_seed(seed)
    fe = build_frontend(FrontendConfig(name="gabor_strf", dim=dim, gabor_strf=GaborStrfConfig(**overrides)))
    assert isinstance(fe, GaborStrfFrontend)
    return fe


def _numpy_gabor(st, sf, rate, scale, t, f):
    """One kernel written out the long way: Gaussian envelope normalised to sum 1, complex plane wave, the
    envelope-weighted mean removed from the real part."""
    tt, ff = np.meshgrid(t, f)  # (Kf, Kt)
    env = np.exp(-(tt**2) / (2 * st**2) - ff**2 / (2 * sf**2))
    env = env / env.sum()
    phase = 2 * np.pi * (rate * tt + scale * ff)
    real = env * np.cos(phase)
    real = real - env * real.sum()
    return real, env * np.sin(phase)


def _noise_and_tone(n: int, rate: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / rate
    return (0.05 * torch.randn(n, generator=g, dtype=torch.float64) + 0.3 * torch.sin(2 * math.pi * 1500.0 * t)).float()


# ------------------------------------------------------------------------------------------------- kernels


def test_vectorised_kernels_match_a_per_channel_numpy_reference():
    rng = np.random.default_rng(0)
    c = 7
    st, sf = rng.uniform(0.01, 0.1, c), rng.uniform(0.5, 5, c)
    rate, scale = rng.uniform(-25, 25, c), rng.uniform(0.0, 0.5, c)
    t = np.arange(-10, 11) / 100.0
    f = np.arange(-6, 7, dtype=float)
    k = gabor_kernels(*(torch.tensor(v) for v in (st, sf, rate, scale, t, f))).numpy()
    assert k.shape == (c, 2, 13, 21) and k.dtype == np.float32
    for i in range(c):  # the reference loops over channels; the builder must not need to
        real, imag = _numpy_gabor(st[i], sf[i], rate[i], scale[i], t, f)
        np.testing.assert_allclose(k[i, 0], real, atol=1e-5)
        np.testing.assert_allclose(k[i, 1], imag, atol=1e-5)
        assert abs(k[i, 0].sum()) < 1e-5 and abs(k[i, 1].sum()) < 1e-5  # no response to a constant level

    # The module's kernels() (the conv's weights) are the same function of its physical parameters, on its grid:
    # 2 x round(0.1 s x 100 frames/s) + 1 = 21 taps in time, 2 x 6 + 1 = 13 mel channels.
    fe = _fe()
    p = {k: v.detach().double().numpy() for k, v in fe.physical_parameters().items()}
    km = fe.kernels().detach().numpy()
    assert km.shape == (16, 2, 13, 21)
    t_mod, f_mod = np.arange(-10, 11) / 100.0, np.arange(-6, 7, dtype=float)
    for i in range(16):
        real, imag = _numpy_gabor(p["sigma_t_s"][i], p["sigma_f_mels"][i], p["rate_hz"][i],
                                  p["scale_cyc_per_mel"][i], t_mod, f_mod)
        np.testing.assert_allclose(km[i, 0], real, atol=1e-5)
        np.testing.assert_allclose(km[i, 1], imag, atol=1e-5)


def test_physical_parameters_stay_in_their_ranges_and_round_trip():
    fe = _fe(num_filters=5)
    c = fe.c
    fe.set_physical_parameters(sigma_t_s=[0.02, 0.001, 1.0, 0.03, 0.05], sigma_f_mels=1.5,
                               rate_hz=[-8.0, 0.0, 3.0, 100.0, -24.0], scale_cyc_per_mel=[0.1, 0.0, 0.25, 0.49, 2.0])
    p = {k: v.detach() for k, v in fe.physical_parameters().items()}
    torch.testing.assert_close(p["sigma_t_s"], torch.tensor([0.02, c.min_sigma_t_s, c.max_sigma_t_s, 0.03, 0.05]))
    torch.testing.assert_close(p["sigma_f_mels"], torch.full((5,), 1.5))
    torch.testing.assert_close(p["rate_hz"][[0, 1, 2, 4]], torch.tensor([-8.0, 0.0, 3.0, -24.0]))
    assert 24.9 < p["rate_hz"][3] < c.max_rate_hz  # clamped inside the open bound
    torch.testing.assert_close(p["scale_cyc_per_mel"][[0, 2, 3]], torch.tensor([0.1, 0.25, 0.49]))
    assert 0 < p["scale_cyc_per_mel"][1] < 1e-5 and p["scale_cyc_per_mel"][4] < c.max_scale_cyc_per_mel
    with pytest.raises(KeyError, match="sigma_t_s"):
        fe.set_physical_parameters(sigma_t=0.02)


def test_conv_is_centred_on_the_cell_it_reports():
    """A single cell at (mel 20, frame 50) comes out as the (flipped) kernel centred on that cell: 'same' padding
    without a shift, so a token does not lag or lead its audio."""
    fe = _fe(num_filters=3)
    k = fe.kernels().detach()
    kf, kt = k.shape[2], k.shape[3]
    x = torch.zeros(1, 64, 120)
    x[0, 20, 50] = 1.0
    y = strf_responses(x, k)[0]  # (C, 2, M, N)
    patch = y[:, :, 20 - kf // 2: 20 + kf // 2 + 1, 50 - kt // 2: 50 + kt // 2 + 1]
    torch.testing.assert_close(patch, k.flip(-1, -2), atol=1e-6, rtol=0)
    outside = y.clone()
    outside[:, :, 20 - kf // 2: 20 + kf // 2 + 1, 50 - kt // 2: 50 + kt // 2 + 1] = 0
    assert outside.abs().max() < 1e-7


# ---------------------------------------------------------------------------------------------- selectivity


def _tuned(rates_hz, scales, sigma_t=0.04, sigma_f=2.5) -> GaborStrfFrontend:
    fe = _fe(num_filters=len(rates_hz))
    fe.set_physical_parameters(sigma_t_s=sigma_t, sigma_f_mels=sigma_f, rate_hz=rates_hz, scale_cyc_per_mel=scales)
    return fe


def test_ripple_spectrogram_drives_the_kernel_tuned_to_its_rate_and_orientation():
    """A moving ripple at 8 Hz and 0.1 cycles per channel (log-mel plane, 100 frames/s) drives the (8 Hz, 0.1)
    kernel most among kernels at 2, 8 and 20 Hz, and far more than the opposite orientation (-8 Hz)."""
    fe = _tuned([2.0, 8.0, 20.0, -8.0], [0.1] * 4)
    t = torch.arange(300) / fe.frame_rate
    f = torch.arange(64, dtype=torch.float32)
    x = torch.cos(2 * math.pi * (8.0 * t[None, :] + 0.1 * f[:, None]))[None]  # (1, M, N)
    with torch.no_grad():
        energy = fe.modulation_energy(x)[0, :, 20:44, 50:250].mean(dim=(1, 2))  # away from the edges
    assert int(energy.argmax()) == 1, energy
    assert energy[1] > 5 * energy[3], energy


def _am_tones(rate: int, seconds: float, am_hz: float, seed: int = 0) -> torch.Tensor:
    """Tones at 400 Hz to 3 kHz (below every tested Nyquist), amplitude-modulated together at ``am_hz``."""
    t = torch.arange(int(round(seconds * rate)), dtype=torch.float64) / rate
    g = torch.Generator().manual_seed(seed)
    phases = 2 * math.pi * torch.rand(5, generator=g, dtype=torch.float64)
    carrier = sum(torch.sin(2 * math.pi * fc * t + ph) for fc, ph in zip((400, 700, 1200, 2000, 3000), phases))
    return (0.1 * carrier * (1.0 + 0.9 * torch.sin(2 * math.pi * am_hz * t))).float()


@pytest.mark.parametrize("am_hz,best", [(4.0, 0), (10.0, 1), (20.0, 2)])
def test_amplitude_modulated_sound_drives_the_kernel_at_its_rate_through_the_log_mel(am_hz, best):
    """Real audio through the whole path (log-mel, normalisation, STRFs): temporal kernels (Omega ~ 0) at 4, 10 and
    20 Hz; the one at the sound's modulation rate answers most in the channels that hold the tones."""
    fe = _tuned([4.0, 10.0, 20.0], [1e-4] * 3, sigma_t=0.05, sigma_f=1.0)
    rate = 16000
    wave = _am_tones(rate, 2.0, am_hz)[None]
    with torch.no_grad():
        x, _, _ = fe.strf_input(wave, torch.tensor([rate]), torch.tensor([wave.shape[1]]))
        energy = fe.modulation_energy(x)[0]  # (C, M, N)
    mid = energy[:, :20, 40:160].mean(dim=(1, 2))  # 400 Hz - 3 kHz lie in the lowest ~20 channels
    assert int(mid.argmax()) == best, mid


@pytest.mark.parametrize("falling", [True, False])
def test_sweep_direction_selects_the_orientation(falling):
    """Repeated FM sweeps between 500 Hz and 8 kHz, linear on the mel scale (about 100 mel channels per second):
    falling sweeps drive the kernel with omega > 0 (same sign as Omega: the doc's convention), rising ones the
    kernel with omega < 0, by a clear margin."""
    from a2v_het.frontend.logmel import hz_to_mel, mel_to_hz

    fe = _tuned([10.0, -10.0], [0.1, 0.1], sigma_t=0.04, sigma_f=2.5)
    rate, period = 16000, 0.25
    t = torch.arange(rate, dtype=torch.float64) / rate
    u = (t % period) / period  # 0 -> 1 within each sweep
    lo, hi = float(hz_to_mel(500.0)), float(hz_to_mel(8000.0) * 0.97)
    mel = hi - (hi - lo) * u if falling else lo + (hi - lo) * u
    phase = 2 * math.pi * torch.cumsum(mel_to_hz(mel), 0) / rate
    wave = (0.3 * torch.sin(phase)).float()[None]
    with torch.no_grad():
        x, _, _ = fe.strf_input(wave, torch.tensor([rate]), torch.tensor([rate]))
        energy = fe.modulation_energy(x)[0, :, 8:30, 10:90].mean(dim=(1, 2))  # (2,): [omega > 0, omega < 0]
    want, other = (0, 1) if falling else (1, 0)
    assert energy[want] > 4 * energy[other], energy


def test_same_band_limited_sound_gives_the_same_moduli_at_16_and_48_khz():
    """Rate awareness: kernels in seconds and absolute-Hz mel channels see the same sound the same way at two rates
    (channels well below 8 kHz, away from the 16 kHz clip's Nyquist edge and the clip's ends)."""
    fe = _fe(num_filters=8)
    moduli = []
    for rate in (16000, 48000):
        wave = _am_tones(rate, 1.0, 6.0, seed=3)[None]
        with torch.no_grad():
            x, cells, _ = fe.strf_input(wave, torch.tensor([rate]), torch.tensor([wave.shape[1]]))
            moduli.append(fe.modulation_energy(x)[0])
        want = int((fe.spectrogram.upper_edge_hz <= rate / 2).sum())  # channels wholly below the Nyquist
        assert int(cells[0, :, 0].sum()) == want and want == {16000: 32, 48000: 45}[rate]
    assert moduli[0].max() > 0.05  # there is something to compare
    # All 100 frames, clip edges included, in the channels that hold the tones (to 3 kHz, channel ~20) and two
    # above; higher up both rates hold only the window's leakage at the log(eps) floor, which differs at -90 dB.
    torch.testing.assert_close(moduli[1][:, :22], moduli[0][:, :22], atol=1e-3, rtol=1e-2)


def test_normalisation_ignores_floors_above_nyquist_and_padding():
    logmel = torch.full((2, 8, 10), math.log(1e-10))  # the log(eps) floor everywhere ...
    logmel[:, :4, :6] = torch.randn(2, 4, 6) - 8.0  # ... but for 4 valid channels x 6 valid frames
    band_valid = torch.tensor([[True] * 4 + [False] * 4] * 2)
    cells = valid_cells(band_valid, torch.tensor([6, 6]), 10)
    x = normalise_log_mel(logmel, cells, 20.0)
    valid = x[:, :4, :6]
    torch.testing.assert_close(valid.mean(dim=(1, 2)), torch.zeros(2), atol=1e-6, rtol=0)
    scale = 20.0 / (10.0 / math.log(10.0))  # 20 dB in ln-power units
    torch.testing.assert_close(valid * scale, logmel[:, :4, :6] - logmel[:, :4, :6].mean(dim=(1, 2), keepdim=True))
    assert (x[:, 4:] == 0).all() and (x[:, :, 6:] == 0).all()
    silence = normalise_log_mel(torch.full((1, 8, 10), -23.0), cells[:1], 20.0)
    assert (silence == 0).all()


def test_hold_edges_repeats_the_top_channel_and_the_last_frame_of_each_clip():
    x = torch.zeros(2, 5, 6)
    x[0, :3, :4] = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 1  # 3 valid channels x 4 valid frames
    x[1, :5, :2] = -torch.arange(10, dtype=torch.float32).reshape(5, 2) - 1  # all channels, 2 frames
    y = hold_edges(x, torch.tensor([3, 5]), torch.tensor([4, 2]))
    torch.testing.assert_close(y[0, :3, :4], x[0, :3, :4])
    torch.testing.assert_close(y[0, 3:, :4], x[0, 2:3, :4].expand(2, 4))  # channels above the Nyquist
    torch.testing.assert_close(y[0, :, 4:], y[0, :, 3:4].expand(5, 2))  # frames past the end (corner included)
    torch.testing.assert_close(y[1, :, 2:], x[1, :, 1:2].expand(5, 4))


# ----------------------------------------------------------------------------------------- frontend contract


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000, 96000])
def test_token_count_is_duration_times_token_rate_at_every_rate(rate):
    fe = _fe().eval()
    for seconds in (1.0, 0.437, 0.013, 1.999):
        n = int(round(seconds * rate))
        with torch.no_grad():
            out = fe(_noise_and_tone(n, rate)[None], torch.tensor([rate]), torch.tensor([n]))
        want = math.ceil(n * TOKEN_RATE / rate - 1e-9)
        assert out.tokens.shape == (1, want, 16), (rate, seconds)
        assert fe.num_tokens(seconds, rate) == want
        assert not out.padding_mask.any() and torch.isfinite(out.tokens).all()


def test_valid_tokens_do_not_depend_on_batch_padding():
    """A 0.73 s clip at 22.05 kHz alone, then batched after a 1.5 s clip at 48 kHz with garbage (not zeros) in its
    padding: the same valid tokens, and the mask marks exactly the tokens past its end."""
    fe = _fe().eval()
    short_n, long_n = int(0.73 * 22050), int(1.5 * 48000)
    short, long = _noise_and_tone(short_n, 22050, 1), _noise_and_tone(long_n, 48000, 2)
    with torch.no_grad():
        alone = fe(short[None], torch.tensor([22050]), torch.tensor([short_n]))
        wave = torch.randn(2, long_n)  # the padding of clip 1 is loud noise: it must not be read
        wave[0] = long
        wave[1, :short_n] = short
        both = fe(wave, torch.tensor([48000, 22050]), torch.tensor([long_n, short_n]))
    n_short = alone.tokens.shape[1]
    assert n_short == 37 and both.tokens.shape[1] == 75
    assert not both.padding_mask[1, :n_short].any() and both.padding_mask[1, n_short:].all()
    assert not both.padding_mask[0].any()
    torch.testing.assert_close(both.tokens[1, :n_short], alone.tokens[0], atol=1e-4, rtol=1e-4)


def test_gradients_reach_every_gabor_parameter_of_every_filter():
    fe = _fe().train()
    rates = torch.tensor([16000, 8000, 48000])
    lengths = torch.tensor([16000, 6000, 30000])
    wave = torch.zeros(3, 30000)
    for i in range(3):
        n, r = int(lengths[i]), int(rates[i])
        t = torch.arange(n) / r
        sweep = 0.3 * torch.sin(2 * math.pi * (500 + 1500 * t) * t)  # spectro-temporal structure
        wave[i, :n] = _noise_and_tone(n, r, i) + sweep
    out = fe(wave, rates, lengths)
    loss = (out.tokens.square().mean(-1) * (~out.padding_mask)).sum()
    loss.backward()
    for name in ("sigma_t_raw", "sigma_f_raw", "rate_raw", "scale_raw"):
        g = getattr(fe, name).grad
        assert g is not None and g.shape == (16,) and torch.isfinite(g).all(), name
        assert (g.abs() > 0).all(), (name, g)  # every one of the C filters learns


def test_silence_dc_clipping_and_bf16_stay_finite_with_finite_gradients():
    fe = _fe().train()
    rate, n = 16000, 8000
    t = torch.arange(n) / rate
    wave = torch.stack([
        torch.zeros(n),  # silence
        torch.full((n,), 0.7),  # DC
        torch.sign(torch.sin(2 * math.pi * 440.0 * t)),  # full-scale square wave (clipped)
        100.0 * torch.sin(2 * math.pi * 440.0 * t),  # far beyond full scale
    ])
    rates, lengths = torch.full((4,), rate), torch.full((4,), n)
    for bf16 in (False, True):
        fe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fe(wave, rates, lengths)
            loss = out.tokens.float().square().mean()
        assert torch.isfinite(out.tokens.float()).all(), bf16
        loss.backward()
        for name, p in fe.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, bf16)
        assert fe.rate_raw.grad.abs().sum() > 0, bf16
    with torch.no_grad():  # silence is exactly "nothing": every token equals the projection's bias
        silent = fe(wave[:1], rates[:1], lengths[:1]).tokens[0]
    assert (silent - fe.proj.bias).abs().max() < 1e-3


# ------------------------------------------------------------------------------------------------ config


def test_build_frontend_from_the_config_system():
    cfg = load_config(PretrainConfig, None, ["frontend.name=gabor_strf", "frontend.dim=24",
                                             "frontend.gabor_strf.num_filters=4", "frontend.gabor_strf.n_mels=32",
                                             "frontend.gabor_strf.frequency_groups=4"])
    fe = build_frontend(cfg.frontend)
    assert isinstance(fe, GaborStrfFrontend) and fe.dim == 24
    assert fe.kernels().shape == (4, 2, 13, 21) and fe.proj.in_features == 2 * 4 * 4
    out = fe(0.1 * torch.randn(2, 12000), torch.tensor([24000, 12000]), torch.tensor([12000, 6000]))
    assert out.tokens.shape == (2, 25, 24) and out.padding_mask.sum() == 0


@pytest.mark.parametrize("override,key", [
    ({"num_filters": 0}, "frontend.gabor_strf.num_filters"),
    ({"frequency_groups": 5}, "frontend.gabor_strf.frequency_groups"),
    ({"kernel_half_mels": -1}, "frontend.gabor_strf.kernel_half_mels"),
    ({"max_sigma_t_s": 0.2}, "frontend.gabor_strf.max_sigma_t_s"),
    ({"min_sigma_f_mels": 4.0}, "frontend.gabor_strf.max_sigma_f_mels"),
    ({"level_scale_db": 0.0}, "frontend.gabor_strf.level_scale_db"),
    ({"max_scale_cyc_per_mel": 0.7}, "frontend.gabor_strf.max_scale_cyc_per_mel"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="gabor_strf", gabor_strf=GaborStrfConfig(**override)).validate()


def test_rate_above_the_frame_nyquist_is_a_config_error():
    with pytest.raises(ConfigError, match=r"frontend\.gabor_strf\.max_rate_hz"):
        build_frontend(FrontendConfig(name="gabor_strf", token_rate=20.0, gabor_strf=GaborStrfConfig()))
    with pytest.raises(ConfigError, match=r"frontend\.gabor_strf\.n_mels"):
        load_config(PretrainConfig, None, ["frontend.gabor_strf.n_mels=0"])
