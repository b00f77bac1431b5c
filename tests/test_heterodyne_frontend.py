"""HeterodyneFrontend as a whole: token counts, band constraints, numerics, gradient routing, equivariance."""

import dataclasses

import numpy as np
import pytest
import torch

from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.frontend.config import HeterodyneConfig


def make_frontend(**heterodyne) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = FrontendConfig(dim=64, heterodyne=HeterodyneConfig(**heterodyne))
    return build_frontend(cfg)


def batch(clips: list[tuple[int, np.ndarray]]):
    t_max = max(len(x) for _, x in clips)
    wave = torch.zeros(len(clips), t_max)
    for i, (_, x) in enumerate(clips):
        wave[i, : len(x)] = torch.as_tensor(x, dtype=torch.float32)
    return wave, torch.tensor([sr for sr, _ in clips]), torch.tensor([len(x) for _, x in clips])


def noisy_tone(sr, seconds, f_hz, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    env = (np.sin(2 * np.pi * 2 * t) > 0.3).astype(float)
    return 0.01 * rng.standard_normal(t.size) + env * np.sin(2 * np.pi * f_hz * t)


def test_token_count_is_the_same_at_every_rate():
    fe = make_frontend()
    rates = [8000, 16000, 22050, 44100, 48000, 96000]
    counts = set()
    for sr in rates:
        out = fe(*batch([(sr, noisy_tone(sr, 2.0, 1500.0))]))
        counts.add(out.tokens.shape[1])
        assert not out.padding_mask.any()
        assert fe.num_tokens(2.0, sr) == out.tokens.shape[1]
    assert counts == {100}
    mixed = fe(*batch([(sr, noisy_tone(sr, 2.0, 1500.0, seed=i)) for i, sr in enumerate(rates)]))
    assert mixed.tokens.shape == (len(rates), 100, 64)
    assert not mixed.padding_mask.any()


def test_shorter_clips_get_a_padding_mask():
    fe = make_frontend()
    out = fe(*batch([(16000, noisy_tone(16000, 2.0, 1000.0)), (48000, noisy_tone(48000, 1.0, 1000.0))]))
    assert out.tokens.shape[1] == 100
    assert out.padding_mask[0].sum() == 0 and out.padding_mask[1].sum() == 50
    assert not out.padding_mask[1, :50].any()


@pytest.mark.parametrize("sr", [6000, 8000, 12000, 16000, 22050, 44100, 48000, 64000, 96000])
def test_bands_stay_inside_each_clips_range(sr):
    fe = make_frontend()
    h = fe.h
    clips = [(sr, noisy_tone(sr, 1.0, f, seed=i)) for i, f in enumerate([200.0, 0.45 * sr, 0.25 * sr])]
    clips.append((8000, noisy_tone(8000, 1.0, 3900.0)))  # an 8 kHz clip with all its energy at the top
    out = fe(*batch(clips))
    f = out.band_start_hz
    nyq = torch.tensor([c[0] for c in clips], dtype=torch.float32)[:, None] / 2
    assert (f >= h.band_min_hz - 1e-3).all()
    assert (f + out.band_width_hz <= nyq + 1e-3).all()
    assert f.shape[1] == h.num_bands + h.context_bands and (out.band_width_hz[:, : h.num_bands] == 2000.0).all()


def test_rates_outside_the_supported_range_are_clear_errors():
    fe = make_frontend()
    with pytest.raises(ValueError, match="too low"):
        fe(*batch([(3000, noisy_tone(3000, 1.0, 500.0))]))
    with pytest.raises(ValueError, match="max_sample_rate"):
        fe(*batch([(768000, noisy_tone(768000, 0.1, 5000.0))]))


@pytest.mark.parametrize("kind", ["silence", "dc", "clipped", "too_short", "tiny"])
def test_no_nan_or_inf(kind):
    fe = make_frontend()
    sr = 16000
    x = {
        "silence": np.zeros(sr),
        "dc": np.full(sr, 0.5),
        "clipped": np.clip(20 * noisy_tone(sr, 1.0, 700.0), -1, 1),
        "too_short": noisy_tone(sr, 0.005, 700.0),  # shorter than one 20 ms STFT window
        "tiny": 1e-30 * noisy_tone(sr, 1.0, 700.0),
    }[kind]
    wave, rates, lengths = batch([(sr, x), (48000, noisy_tone(48000, 1.0, 5000.0))])
    wave.requires_grad_(True)
    out = fe(wave, rates, lengths)
    loss = out.tokens.square().mean() + sum(out.aux_losses.values())
    loss.backward()
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.band_start_hz).all()
    assert all(torch.isfinite(v) for v in out.aux_losses.values())
    for p in fe.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_bf16_autocast_keeps_losses_fp32_and_finite():
    fe = make_frontend()
    wave, rates, lengths = batch([(16000, noisy_tone(16000, 1.0, 700.0)), (48000, np.zeros(48000))])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(wave.bfloat16(), rates, lengths)
    for v in out.aux_losses.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
    assert torch.isfinite(out.tokens.float()).all()


def test_gradient_routing():
    """Coverage losses train the hypernetwork; the token path reaches it only when band_grad_from_ssl is set."""
    # More calls than 8 bands of 2 kHz can hold, so the coverage losses have something left to pull towards.
    sr = 44100
    many = sum(noisy_tone(sr, 1.0, f, seed=i) for i, f in enumerate(range(1000, 21000, 1200)))
    wave, rates, lengths = batch([(16000, noisy_tone(16000, 1.0, 3000.0)), (sr, many)])

    def picker_grads(fe, which):
        fe.zero_grad(set_to_none=True)
        out = fe(wave, rates, lengths)
        loss = out.tokens.square().mean() if which == "tokens" else sum(out.aux_losses.values())
        loss.backward()
        return [p.grad for p in fe.picker.parameters()]

    detached = make_frontend()
    assert all(g is None or g.abs().sum() == 0 for g in picker_grads(detached, "tokens"))
    assert any(g is not None and g.abs().sum() > 0 for g in picker_grads(detached, "coverage"))
    # the projection still learns from the tokens
    detached.zero_grad(set_to_none=True)
    detached(wave, rates, lengths).tokens.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detached.projection.parameters())

    routed = make_frontend(band_grad_from_ssl=True)
    assert any(g is not None and g.abs().sum() > 0 for g in picker_grads(routed, "tokens"))


def test_picker_body_is_equivariant_along_frequency():
    """Shifting the picker's input along the grid shifts its feature map (away from the grid edges)."""
    fe = make_frontend()
    g = fe.n_grid
    x = torch.randn(1, fe.picker.feature_channels, g)
    x[:, :, :300] = 0
    x[:, :, 900:] = 0
    shift = 157
    h = fe.picker.body(x)
    h_shift = fe.picker.body(torch.roll(x, shift, dims=-1))
    torch.testing.assert_close(h_shift[..., 400 + shift : 800 + shift], h[..., 400:800], atol=1e-5, rtol=1e-4)


def test_config_rejects_band_width_not_multiple_of_token_rate():
    from a2v_het.config import ConfigError

    with pytest.raises(ConfigError, match="whole multiple"):
        FrontendConfig(token_rate=30.0).validate()
    cfg = dataclasses.replace(FrontendConfig(), token_rate=40.0)
    cfg.validate()


def test_cropped_analysis_grid_gives_the_same_bands_as_the_full_grid():
    """analyze() crops the grid above the batch's Nyquist (+ two receptive fields); the bands must not change."""
    fe = make_frontend()
    wave, rates, lengths = batch([(8000, noisy_tone(8000, 1.0, 2500.0)), (22050, noisy_tone(22050, 1.0, 7000.0))])
    assert fe.analysis_bins(rates) < fe.n_grid
    cropped = fe.analyze(wave, rates, lengths).band_start_hz
    full_bins = fe.n_grid
    fe.analysis_bins = lambda sample_rate: full_bins  # the uncropped grid up to max_sample_rate / 2
    full = fe.analyze(wave, rates, lengths).band_start_hz
    torch.testing.assert_close(cropped, full, atol=1e-3, rtol=0)


def test_no_zero_dim_parameters():
    """DeepSpeed broadcasts parameters as byte views, which 0-dim tensors do not allow."""
    from a2v_het.model.config import ModelConfig
    from a2v_het.model.data2vec import Data2VecModel

    for name in ("heterodyne", "conv", "logmel"):
        model = Data2VecModel(ModelConfig(embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_groups=4,
                                          average_top_k_layers=2), build_frontend(FrontendConfig(name=name, dim=32)))
        assert all(p.dim() >= 1 for p in model.parameters()), [n for n, p in model.named_parameters() if p.dim() == 0]


def test_cpu_chunks_change_nothing(monkeypatch):
    """Splitting the clips into CPU chunks (to reuse freed buffers instead of page-faulting new ones) gives the
    same statistics, bands and tokens as one chunk per rate, for a batch of mixed rates and lengths."""
    import a2v_het.frontend.cpu_chunks as cpu_chunks

    torch.manual_seed(0)
    fe = build_frontend(FrontendConfig(name="heterodyne"))
    g = torch.Generator().manual_seed(1)
    rates = torch.tensor([48000, 16000, 48000, 48000, 16000])
    lengths = torch.tensor([144000, 40000, 100000, 144000, 48000])
    wave = torch.randn(5, 144000, generator=g) * (torch.arange(144000)[None, :] < lengths[:, None])
    outs = []
    for chunk_samples in (1 << 30, 1):  # one chunk per rate group / one clip per chunk
        monkeypatch.setattr(cpu_chunks, "CPU_CHUNK_SAMPLES", chunk_samples)
        with torch.no_grad():
            a = fe.analyze(wave, rates, lengths)
            outs.append((a.stats.mean_power, a.stats.variance, a.stats.evidence, a.band_start_hz,
                         fe(wave, rates, lengths).tokens))
    for one, chunked in zip(*outs):
        torch.testing.assert_close(chunked, one, rtol=1e-4, atol=1e-5)
