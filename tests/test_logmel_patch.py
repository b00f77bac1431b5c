"""Log-mel + patch embedding (frontend.name: logmel_patch): token counts at every rate, padding invariance, the patch
embedding and token layout against an explicit reshape + matmul, the level normalisation against numpy, rate
consistency on band-limited content, finite values on degenerate input, build and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError, load_config
from a2v_het.frontend import FrontendConfig, LogMelPatchConfig, build_frontend
from a2v_het.frontend.logmel_patch import LogMelPatchFrontend, normalize_levels
from a2v_het.train.config import PretrainConfig
from signals import noise_and_tone as _noise_and_tone

TOKEN_RATE = 50.0


def _fe(dim: int = 32, seed: int = 0, **kw) -> LogMelPatchFrontend:
    torch.manual_seed(seed)
    return build_frontend(FrontendConfig(name="logmel_patch", dim=dim, logmel_patch=LogMelPatchConfig(**kw))).eval()



def _band_limited(rate: int, seconds: float = 1.0) -> torch.Tensor:
    """Amplitude-modulated partials below 3 kHz with 50 ms raised-cosine fades: the same continuous-time signal at
    every rate >= 8 kHz (no click at the edges, which a higher rate would resolve into more bands)."""
    t = torch.arange(int(round(rate * seconds)), dtype=torch.float64) / rate
    x = torch.zeros_like(t)
    for i, f in enumerate([300.0, 700.0, 1234.0, 2100.0, 2900.0]):
        x += 0.1 / (i + 1) * torch.sin(2 * math.pi * f * t + i) * (1 + 0.8 * torch.sin(2 * math.pi * (7 + 13 * i) * t))
    fade = torch.clamp(torch.minimum(t, seconds - t) / 0.05, max=1.0)
    return (x * torch.sin(0.5 * math.pi * fade) ** 2).float()


def test_build_frontend_returns_the_patch_frontend():
    fe = build_frontend(FrontendConfig(name="logmel_patch", dim=16))
    assert isinstance(fe, LogMelPatchFrontend) and fe.dim == 16
    # the log-mel runs at patch_frames x token_rate frames/s
    assert fe.patches.spectrogram.frame_rate == 2 * TOKEN_RATE


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000, 96000])
def test_token_count_is_ceil_duration_times_token_rate(rate):
    fe = _fe()
    for seconds in (0.013, 0.37, 1.0, 1.2345):
        n = int(round(seconds * rate))
        with torch.no_grad():
            out = fe(_noise_and_tone(n, rate)[None], torch.tensor([rate]), torch.tensor([n]))
        want = math.ceil(n * TOKEN_RATE / rate - 1e-9)
        assert out.tokens.shape == (1, want, 32), (rate, seconds)
        assert fe.num_tokens(seconds, rate) == want
        assert not out.padding_mask.any()
        assert torch.isfinite(out.tokens).all()


def test_token_counts_of_a_mixed_rate_batch_follow_each_clip():
    fe = _fe()
    rates = torch.tensor([8000, 22050, 96000, 16000])
    seconds = [0.5, 0.731, 0.2, 0.999]
    lengths = torch.tensor([int(round(s * int(r))) for s, r in zip(seconds, rates)])
    wave = torch.zeros(4, int(lengths.max()))
    for i in range(4):
        wave[i, : lengths[i]] = _noise_and_tone(int(lengths[i]), int(rates[i]), i)
    with torch.no_grad():
        out = fe(wave, rates, lengths)
    want = [math.ceil(int(n) * TOKEN_RATE / int(r) - 1e-9) for n, r in zip(lengths, rates)]
    assert out.tokens.shape == (4, max(want), 32)
    assert (~out.padding_mask).sum(1).tolist() == want
    for i, w in enumerate(want):  # the mask is a prefix of valid tokens
        assert not out.padding_mask[i, :w].any() and out.padding_mask[i, w:].all()


def test_valid_tokens_do_not_depend_on_batch_padding():
    """A 0.83 s clip at 16 kHz alone, then after a 1.5 s clip at 48 kHz with junk (not zeros) past its length: the
    same normalised log-mel and the same tokens; neither the other clip nor the padding leaks in."""
    fe = _fe()
    short_n, long_n = int(0.83 * 16000), int(1.5 * 48000)
    short, long = _noise_and_tone(short_n, 16000, 1), _noise_and_tone(long_n, 48000, 2)
    with torch.no_grad():
        alone = fe(short[None], torch.tensor([16000]), torch.tensor([short_n]))
        p_alone = fe.patches(short[None], torch.tensor([16000]), torch.tensor([short_n]))
        wave = torch.zeros(2, long_n + 1000)
        wave[0, :long_n] = long
        wave[1] = 0.5 * torch.randn(long_n + 1000)  # junk past the short clip's length must be ignored
        wave[1, :short_n] = short
        rates, lengths = torch.tensor([48000, 16000]), torch.tensor([long_n, short_n])
        both = fe(wave, rates, lengths)
        p_both = fe.patches(wave, rates, lengths)
    n = alone.tokens.shape[1]
    assert n == 42 and int((~both.padding_mask[1]).sum()) == n
    torch.testing.assert_close(p_both.level[1, :, : p_alone.level.shape[2]], p_alone.level[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.tokens[1, :n], alone.tokens[0], atol=1e-4, rtol=1e-4)


def test_patch_embedding_and_token_layout_equal_explicit_reshape_and_matmul():
    """tokens = LayerNorm(W_proj [E-dim patch codes of frequency patches 0..F'-1] + b), each code = W_embed applied to
    the patch's (patch_mels x patch_frames) cells: written out in numpy from the normalised log-mel."""
    fe = _fe(dim=24, patch_mels=8, patch_frames=2, channels=6)
    rate, n = 32000, 32000
    wave = _noise_and_tone(n, rate, 5)[None]
    with torch.no_grad():
        p = fe.patches(wave, torch.tensor([rate]), torch.tensor([n]))
        out = fe(wave, torch.tensor([rate]), torch.tensor([n]))
    x = p.level[0].double().numpy()  # (M, N * pf)
    m, nf = x.shape
    pm, pf, e = 8, 2, 6
    w = fe.patches.embed.weight.detach().double().numpy().reshape(e, pm * pf)
    b = fe.patches.embed.bias.detach().double().numpy()
    cells = x.reshape(m // pm, pm, nf // pf, pf).transpose(2, 0, 1, 3).reshape(nf // pf, m // pm, pm * pf)
    codes = cells @ w.T + b  # (N, F', E)
    feats = codes.reshape(nf // pf, -1)  # frequency patch f' at columns f' E .. f' E + E - 1
    np.testing.assert_allclose(p.features[0].double().numpy(), feats, atol=1e-5)
    y = feats @ fe.proj.weight.detach().double().numpy().T + fe.proj.bias.detach().double().numpy()
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + fe.norm.eps)
    y = y * fe.norm.weight.detach().double().numpy() + fe.norm.bias.detach().double().numpy()
    np.testing.assert_allclose(out.tokens[0].double().numpy(), y, atol=1e-4)


def _numpy_normalize(x, n_frames, band_valid, cfg):
    """Per-clip loops: the sounding cells, their mean / floored std, floor, relu, mask."""
    ln = math.log(10.0) / 10.0  # dB -> ln power
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        inside = np.zeros(x.shape[1:], bool)
        inside[band_valid[b], : n_frames[b]] = True
        sounding = inside & (x[b] > cfg.silence_db * ln)
        if cfg.normalization == "clip":
            v = x[b][sounding]
            mean = v.mean() if v.size else 0.0
            std = math.sqrt((v.var() if v.size else 0.0) + (cfg.min_std_db * ln) ** 2)
            floor, scale = max(mean - cfg.floor_std * std, cfg.silence_db * ln), std
        else:
            floor, scale = cfg.silence_db * ln, cfg.fixed_scale_db * ln
        out[b] = np.maximum(x[b] - floor, 0.0) / scale * inside
    return out


@pytest.mark.parametrize("normalization", ["clip", "fixed"])
def test_level_normalisation_matches_numpy_and_ignores_the_log_eps_floor(normalization):
    cfg = LogMelPatchConfig(normalization=normalization)
    rng = np.random.default_rng(0)
    ln_eps = math.log(1e-10)  # what the spectrogram puts above a clip's Nyquist and past its end
    x = rng.normal(-9.0, 2.0, (3, 12, 20))
    x[0, 8:] = ln_eps  # clip 0: 4 bands above its Nyquist
    x[0, :, 15:] = ln_eps  # ... and 15 frames
    x[1, 2, 3:6] = -22.0  # clip 1: a few cells of digital silence (-95 dB) inside the clip
    x[2] = ln_eps  # clip 2: silence
    n_frames = np.array([15, 20, 20])
    band_valid = np.ones((3, 12), bool)
    band_valid[0, 8:] = False
    got = normalize_levels(torch.tensor(x, dtype=torch.float32), torch.tensor(n_frames), torch.tensor(band_valid), cfg)
    want = _numpy_normalize(x.astype(np.float32).astype(np.float64), n_frames, band_valid, cfg)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert torch.all(got[0, 8:] == 0) and torch.all(got[0, :, 15:] == 0) and torch.all(got[1, 2, 3:6] == 0)
    assert torch.all(got[2] == 0)  # silence is exactly 0
    if normalization == "clip":
        # The 4 silenced bands (at -100 dB, 40 dB under the content) did not move the statistics: clip 0's valid
        # cells normalise exactly as they would on their own.
        alone = normalize_levels(torch.tensor(x[:1, :8, :15], dtype=torch.float32), torch.tensor([15]),
                                 torch.ones(1, 8, dtype=torch.bool), cfg)
        torch.testing.assert_close(got[0, :8, :15], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["clip", "fixed"])
def test_band_limited_content_gives_the_same_tokens_at_16_48_and_96_khz(normalization):
    """Partials below 3 kHz: the bands above 8 kHz are silence at 48 / 96 kHz and silenced (above the Nyquist) at
    16 kHz, both read 0, so levels, statistics and tokens agree to float noise."""
    fe = _fe(normalization=normalization)
    got = {}
    for rate in (16000, 48000, 96000):
        w = _band_limited(rate)
        with torch.no_grad():
            got[rate] = (fe.patches(w[None], torch.tensor([rate]), torch.tensor([w.numel()])).level,
                         fe(w[None], torch.tensor([rate]), torch.tensor([w.numel()])).tokens)
    assert got[16000][0].abs().max() > 1.0  # there is content
    for rate in (48000, 96000):
        torch.testing.assert_close(got[rate][0], got[16000][0], atol=1e-3, rtol=0)
        torch.testing.assert_close(got[rate][1], got[16000][1], atol=1e-3, rtol=0)


def test_silence_dc_clipping_and_bf16_stay_finite_with_finite_gradients():
    fe = _fe().train()
    rate, n = 16000, 16000
    t = torch.arange(n) / rate
    wave = torch.stack([torch.zeros(n), torch.full((n,), 0.7), torch.sign(torch.sin(2 * math.pi * 440.0 * t)),
                        _noise_and_tone(n, rate, 3)])
    rates, lengths = torch.full((4,), rate), torch.full((4,), n)
    with torch.no_grad():
        assert torch.all(fe.patches(wave, rates, lengths).level[0] == 0)  # silence reads 0 everywhere
    for bf16 in (False, True):
        fe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fe(wave, rates, lengths)
            loss = out.tokens.float().square().mean() + out.tokens.float()[:, :, 0].mean()
        assert torch.isfinite(out.tokens.float()).all(), bf16
        loss.backward()
        for name, prm in fe.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), (name, bf16)
        assert fe.patches.embed.weight.grad.abs().sum() > 0


def test_recipe_overrides_reach_the_frontend():
    cfg = load_config(PretrainConfig, None, ["frontend.name=logmel_patch", "frontend.dim=16",
                                             "frontend.logmel_patch.patch_frames=4",
                                             "frontend.logmel_patch.normalization=fixed"])
    fe = build_frontend(cfg.frontend)
    assert fe.patches.spectrogram.frame_rate == 4 * TOKEN_RATE and fe.patches.cfg.normalization == "fixed"
    with torch.no_grad():
        out = fe(_noise_and_tone(8000, 16000)[None], torch.tensor([16000]), torch.tensor([8000]))
    assert out.tokens.shape == (1, 25, 16)


@pytest.mark.parametrize("kw,key", [
    ({"patch_frames": 0}, "frontend.logmel_patch.patch_frames"),
    ({"patch_mels": 5}, "frontend.logmel_patch.patch_mels"),
    ({"channels": 0}, "frontend.logmel_patch.channels"),
    ({"window_s": 0.0}, "frontend.logmel_patch.window_s"),
    ({"min_std_db": 0.0}, "frontend.logmel_patch.min_std_db"),
    ({"silence_db": -120.0}, "frontend.logmel_patch.silence_db"),
    ({"normalization": "batch"}, "frontend.logmel_patch.normalization"),
])
def test_config_errors_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="logmel_patch", logmel_patch=LogMelPatchConfig(**kw)).validate()


def test_config_errors_from_overrides_name_the_key():
    with pytest.raises(ConfigError, match=r"frontend\.logmel_patch\.patch_frames"):
        load_config(PretrainConfig, None, ["frontend.name=logmel_patch", "frontend.logmel_patch.patch_frames=0"])
    with pytest.raises(ConfigError, match=r"frontend\.logmel_patch\.normalization"):
        load_config(PretrainConfig, None, ["frontend.logmel_patch.normalization=batch"])
