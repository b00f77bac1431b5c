"""Band signals read from the statistics' STFT (``band_extraction: stft``) against the exact complex envelope of
tones, against the long-FFT bands, and inside the frontend (fallback rates, batching, config)."""

import dataclasses
import math

import pytest
import torch

from a2v_het.config import ConfigError
from a2v_het.frontend import build_frontend
from a2v_het.frontend.config import FrontendConfig, HeterodyneConfig
from a2v_het.frontend.heterodyne import heterodyne_bands
from a2v_het.frontend.spectrum import grid_power_statistics
from a2v_het.frontend.stft_bands import exact_geometry, stft_band_signals

W, WINDOW_S, HOP_S = 2000.0, 0.02, 0.01


def stft_bands(wave, rates, lengths, start_hz, n_out, pass_width_hz=None, out_lengths=None):
    stats = grid_power_statistics(wave, rates, lengths, WINDOW_S, HOP_S, 1000, keep_spectra=True)
    out_lengths = torch.full((wave.shape[0],), n_out) if out_lengths is None else out_lengths
    return stft_band_signals(stats.spectra, start_hz, W, WINDOW_S, HOP_S, n_out, out_lengths,
                             pass_width_hz=pass_width_hz)


def envelope_error_db(bands, k, want, margin=40):
    z = torch.complex(bands[0, k, 0].double(), bands[0, k, 1].double())[margin:-margin]
    want = want[margin:-margin]
    return 10 * math.log10(((z - want).abs().square().mean() / want.abs().square().mean()).item())


@pytest.mark.parametrize("rate", [16000, 48000, 500000])
def test_tone_gives_its_complex_envelope_at_any_start(rate):
    """A cos(2 pi f t + phi) in a band starting at f_k (off the 50 Hz bins) -> A exp(i (2 pi (f - f_k) t + phi)),
    exactly but for the window's wrap-around (measured -59 to -93 dB; the long FFT, which rounds f_k to 1/3 Hz,
    -29 dB on the same tone)."""
    n = 3 * rate
    t = torch.arange(n, dtype=torch.float64) / rate
    f0, amp, phase = 5432.1, 0.7, 0.3
    wave = (amp * torch.cos(2 * math.pi * f0 * t + phase)).float()[None]
    start = torch.tensor([[f0 - 1000.0, f0 - 310.0, f0 - 1712.34]])
    bands, done = stft_bands(wave, torch.tensor([rate]), torch.tensor([n]), start, 6000)
    assert bool(done.all())
    q = torch.arange(6000, dtype=torch.float64) / W
    for k in range(3):
        want = amp * torch.exp(1j * (2 * math.pi * (f0 - float(start[0, k])) * q + phase))
        assert envelope_error_db(bands, k, want) < -50.0, k


def test_wide_band_folds_onto_the_band_rate():
    """A tone 4.7 kHz into an 8 kHz band arrives at 0.7 kHz (its spectrum aliased onto 2 kHz), as the long FFT
    folds it."""
    rate, n = 96000, 2 * 96000
    t = torch.arange(n, dtype=torch.float64) / rate
    f_k = 20000.0
    wave = torch.cos(2 * math.pi * (f_k + 4700.0) * t).float()[None]
    start, width = torch.tensor([[f_k]]), torch.tensor([[8000.0]])
    bands, _ = stft_bands(wave, torch.tensor([rate]), torch.tensor([n]), start, 4000, pass_width_hz=width)
    want = torch.exp(2j * math.pi * 700.0 * torch.arange(4000, dtype=torch.float64) / W)
    assert envelope_error_db(bands, 0, want) < -60.0
    fft = heterodyne_bands(wave, torch.tensor([rate]), torch.tensor([n]), start, W, 4000, pass_width_hz=width)
    assert envelope_error_db(fft, 0, want) < -40.0  # the two paths fold alike


def test_noise_matches_the_long_fft_bands():
    """Broadband noise with starts on bins both paths share: the same band signals but for the window's soft
    edges (a few % of the energy of a 40-bin band: below -15 dB), detail and folded context bands alike."""
    g = torch.Generator().manual_seed(0)
    rate, n = 192000, 3 * 192000
    wave = torch.randn(2, n, generator=g)
    rates, lengths = torch.tensor([rate, rate]), torch.tensor([n, n])
    start = torch.tensor([[1000.0, 23050.0, 60000.0], [500.0, 80000.0, 31000.0]])
    width = torch.tensor([[2000.0, 2000.0, 32000.0], [2000.0, 16000.0, 2000.0]])
    got, _ = stft_bands(wave, rates, lengths, start, 6000, pass_width_hz=width)
    ref = heterodyne_bands(wave, rates, lengths, start, W, 6000, pass_width_hz=width, taper_s=0.005)
    inner = slice(40, -40)
    diff = (got - ref)[..., inner].square().sum((2, 3)) / ref[..., inner].square().sum((2, 3))  # (B, K)
    assert float(diff.max()) < 10 ** (-15 / 10), diff
    assert float(diff.max()) > 1e-6  # a different filter, not the same code


def test_a_clip_reads_the_same_alone_or_batched():
    """Frames start at each clip's first sample and the bins are 50 Hz at every length, so a short clip's bands do
    not depend on the longer clips beside it; each clip is zero past its own out_lengths."""
    g = torch.Generator().manual_seed(1)
    rate = 48000
    lens = torch.tensor([144000, 96000])
    wave = torch.randn(2, 144000, generator=g) * (torch.arange(144000)[None, :] < lens[:, None])
    start = torch.tensor([[3000.0, 7000.0], [3000.0, 12345.0]])
    out_lengths = torch.tensor([6000, 4000])
    both, _ = stft_bands(wave, torch.tensor([rate, rate]), lens, start, 6000, out_lengths=out_lengths)
    alone, _ = stft_bands(wave[1:, :96000], torch.tensor([rate]), lens[1:], start[1:], 4000)
    torch.testing.assert_close(both[1, ..., :4000], alone[0], rtol=1e-5, atol=1e-6)
    assert float(both[1, ..., 4000:].abs().max()) == 0.0


def test_geometry_that_is_not_exact_falls_back_to_the_long_fft():
    """22050 Hz has a 441-sample window (odd, no exact half hop): its clips go the long-FFT way, in the same
    batch as a 48 kHz clip read from the STFT; both frontends then give the 22050 Hz clip the same tokens."""
    assert exact_geometry(48000, WINDOW_S, HOP_S) and exact_geometry(500000, WINDOW_S, HOP_S)
    assert not exact_geometry(22050, WINDOW_S, HOP_S) and not exact_geometry(11025, WINDOW_S, HOP_S)
    g = torch.Generator().manual_seed(2)
    rates, lengths = torch.tensor([22050, 48000]), torch.tensor([66150, 144000])
    wave = torch.randn(2, 144000, generator=g) * (torch.arange(144000)[None, :] < lengths[:, None])
    outs = {}
    for extraction in ("fft", "stft"):
        torch.manual_seed(0)
        h = dataclasses.replace(HeterodyneConfig(), band_extraction=extraction)
        fe = build_frontend(FrontendConfig(name="heterodyne", heterodyne=h)).eval()
        with torch.no_grad():
            outs[extraction] = fe(wave, rates, lengths).tokens
    torch.testing.assert_close(outs["stft"][0], outs["fft"][0])
    assert not torch.allclose(outs["stft"][1], outs["fft"][1], atol=1e-4)


def test_frontend_trains_with_stft_bands():
    """The stft frontend gives the same token count as the fft one at 8 kHz and 384 kHz in one batch, and its
    coverage losses still reach the picker."""
    torch.manual_seed(0)
    h = dataclasses.replace(HeterodyneConfig(), band_extraction="stft")
    fe = build_frontend(FrontendConfig(name="heterodyne", heterodyne=h)).train()
    g = torch.Generator().manual_seed(3)
    rates, lengths = torch.tensor([8000, 384000]), torch.tensor([16000, 768000])
    wave = torch.randn(2, 768000, generator=g) * (torch.arange(768000)[None, :] < lengths[:, None])
    out = fe(wave, rates, lengths)
    assert out.tokens.shape[1] == fe.num_tokens(2.0, 8000) and bool(torch.isfinite(out.tokens).all())
    (out.tokens.square().mean() + sum(out.aux_losses.values())).backward()
    grads = [p.grad for p in fe.picker.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_keeping_the_spectra_changes_no_statistic():
    g = torch.Generator().manual_seed(4)
    wave = torch.randn(2, 96000, generator=g)
    rates, lengths = torch.tensor([48000, 48000]), torch.tensor([96000, 80000])
    args = (wave, rates, lengths, WINDOW_S, HOP_S, 481, None, 1.0, HeterodyneConfig().evidence_args)
    kept, plain = grid_power_statistics(*args, keep_spectra=True), grid_power_statistics(*args)
    for name in ("mean_power", "variance", "evidence"):
        assert torch.equal(getattr(kept, name), getattr(plain, name)), name
    assert plain.spectra is None and kept.spectra[0].spec.shape == (2, 199, 481)


@pytest.mark.parametrize("change, message", [
    (dict(mixing="cosine"), "mixing: quadrature"),
    (dict(stft_hop_s=0.005), "stft_hop_s = stft_window_s / 2"),
    (dict(band_width_hz=1025.0), "even whole number"),
])
def test_config_rejects_what_stft_bands_cannot_do(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(HeterodyneConfig(), band_extraction="stft", **change).validate()


def test_straight_through_gradient_is_the_rotation_derivative():
    """With straight_through the band start gets d/df of exp(-i 2 pi f t) applied to the band signal, as in the
    long-FFT path: dL/df = sum_t Re(conj(dL/dz) (-i 2 pi t) z)."""
    g = torch.Generator().manual_seed(5)
    rate, n = 48000, 48000
    wave = torch.randn(1, n, generator=g)
    rates, lengths = torch.tensor([rate]), torch.tensor([n])
    stats = grid_power_statistics(wave, rates, lengths, WINDOW_S, HOP_S, 481, keep_spectra=True)
    start = torch.tensor([[3012.5, 9000.0]], requires_grad=True)
    out, _ = stft_band_signals(stats.spectra, start, W, WINDOW_S, HOP_S, 2000, torch.tensor([2000]),
                               straight_through=True)
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward()
    z = torch.complex(out[0, :, 0], out[0, :, 1]).detach().to(torch.complex128)  # (K, n_out)
    w = torch.complex(weights[0, :, 0], weights[0, :, 1]).to(torch.complex128)
    t = torch.arange(2000, dtype=torch.float64) / W
    want = (w.conj() * (-2j * math.pi * t) * z).real.sum(-1)
    torch.testing.assert_close(start.grad[0].double(), want, rtol=1e-3, atol=1e-3)


def test_a_config_saved_before_stft_bands_loads_with_the_long_fft():
    """A saved config without band_extraction rebuilds the model it trained (the long FFT); a recipe, and a
    config saved since, get what they say."""
    from a2v_het.config import config_from_dict, config_to_dict

    tree = config_to_dict(FrontendConfig())
    assert tree["heterodyne"]["band_extraction"] == "stft" == HeterodyneConfig().band_extraction
    assert config_from_dict(FrontendConfig, tree).heterodyne.band_extraction == "stft"
    tree["heterodyne"].pop("band_extraction")
    assert config_from_dict(FrontendConfig, tree).heterodyne.band_extraction == "fft"
