"""Variable band widths: each clip's width from its Nyquist, wide bands as sub-bands, one model from 6 to 500 kHz."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError
from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.frontend.band_widths import clip_band_width, split_sub_bands
from a2v_het.frontend.config import HeterodyneConfig
from a2v_het.frontend.heterodyne import heterodyne_bands

OCTAVES = (500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0)


def frontend(seed=0, **heterodyne):
    torch.manual_seed(seed)
    return build_frontend(FrontendConfig(dim=32, heterodyne=HeterodyneConfig(**heterodyne)))


def batch(clips):
    t_max = max(len(x) for _, x in clips)
    wave = torch.zeros(len(clips), t_max)
    for i, (_, x) in enumerate(clips):
        wave[i, : len(x)] = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return wave, torch.tensor([sr for sr, _ in clips]), torch.tensor([len(x) for _, x in clips])


def chirp_clip(sr, seconds, f0, f1, seed=0):
    """Noise plus 4 ms downward sweeps f0 -> f1 every 100 ms (a bat-like pulse train)."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    x = 0.01 * rng.standard_normal(n)
    m = int(0.004 * sr)
    tt = np.arange(m) / sr
    sweep = np.sin(2 * np.pi * (f0 * tt + (f1 - f0) / (2 * 0.004) * tt**2)) * np.hanning(m)
    for start in range(int(0.05 * sr), n - m, int(0.1 * sr)):
        x[start : start + m] += 0.5 * sweep
    return x


def test_clip_band_width_is_the_narrowest_octave_whose_bands_span_the_clip():
    rates = torch.tensor([1000, 6000, 8000, 16000, 48000, 96000, 192000, 384000, 500000, 1000000])
    w = clip_band_width(rates, OCTAVES, 8, 50.0)
    assert w.tolist() == [500.0, 500.0, 500.0, 1000.0, 4000.0, 8000.0, 16000.0, 32000.0, 32000.0, 32000.0]
    for sr, wk in zip(rates.tolist(), w.tolist()):
        span = sr / 2 - 50.0
        if 8 * wk >= span:  # the bands can span the clip ...
            narrower = [x for x in OCTAVES if x < wk]
            assert not narrower or 8 * max(narrower) < span  # ... and no narrower width would
        elif wk <= span:
            assert wk == OCTAVES[-1]  # nothing spans it: the widest (1 MHz)
    # fewer bands need wider ones; one fixed width is itself
    assert clip_band_width(torch.tensor([48000]), OCTAVES, 2, 50.0).tolist() == [16000.0]
    assert clip_band_width(torch.tensor([8000, 96000]), (2000.0,), 8, 50.0).tolist() == [2000.0, 2000.0]


def test_split_sub_bands_cuts_wide_bands_at_the_band_rate():
    starts = torch.tensor([[100.0, 10000.0], [300.0, 900.0]], requires_grad=True)
    widths = torch.tensor([[8000.0, 8000.0], [500.0, 500.0]])
    sub = split_sub_bands(starts, widths, 2000.0)
    assert sub.start_hz.shape == (2, 8)
    assert sub.valid[0].all() and sub.valid[1].tolist() == [True, True] + [False] * 6
    assert sub.band_index[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sub.band_index[1].tolist() == [0, 1] + [2] * 6
    torch.testing.assert_close(sub.start_hz[0], torch.tensor([100.0, 2100, 4100, 6100, 10000, 12000, 14000, 16000]))
    assert sub.width_hz[0].tolist() == [2000.0] * 8 and sub.width_hz[1, :2].tolist() == [500.0, 500.0]
    sub.start_hz.sum().backward()  # the sub-band starts carry the band starts' gradient
    assert starts.grad.tolist() == [[4.0, 4.0], [1.0, 1.0]]
    # bands no wider than the rate are the bands themselves
    same = split_sub_bands(starts.detach(), torch.full((2, 2), 2000.0), 2000.0)
    assert torch.equal(same.start_hz, starts.detach()) and same.band_index.tolist() == [[0, 1], [0, 1]]


def test_a_narrow_band_at_the_band_rate_passes_only_its_width():
    """A 500 Hz band sampled at 2 kHz: a tone inside it comes through at full amplitude, one 800 Hz above its
    start (inside the 2 kHz the rate could hold, outside the band) does not."""
    sr, n = 16000, 16000
    t = np.arange(n) / sr
    x = torch.tensor(np.sin(2 * np.pi * 3200.0 * t) + np.sin(2 * np.pi * 3800.0 * t), dtype=torch.float32)[None]
    start = torch.tensor([[3000.0]])
    args = (x, torch.tensor([sr]), torch.tensor([n]), start, 2000.0, 2000)
    full = heterodyne_bands(*args)
    narrow = heterodyne_bands(*args, pass_width_hz=torch.tensor([[500.0]]))
    z_full = torch.complex(full[0, 0, 0], full[0, 0, 1]).numpy()
    z = torch.complex(narrow[0, 0, 0], narrow[0, 0, 1]).numpy()
    spec_full, spec = np.abs(np.fft.fft(z_full)) / 2000, np.abs(np.fft.fft(z)) / 2000
    assert spec_full[200] == pytest.approx(1.0, abs=0.02) and spec_full[800] == pytest.approx(1.0, abs=0.02)
    assert spec[200] == pytest.approx(1.0, abs=0.02) and spec[800] < 1e-4


def test_8_and_384_khz_clips_go_through_one_model_in_one_batch_with_the_same_token_count():
    fe = frontend()
    clips = [(8000, chirp_clip(8000, 2.0, 3500.0, 1500.0)), (384000, chirp_clip(384000, 2.0, 110000.0, 30000.0, 1)),
             (48000, chirp_clip(48000, 2.0, 20000.0, 8000.0, 2)), (500000, chirp_clip(500000, 1.0, 120000.0, 25000.0))]
    out = fe(*batch(clips))
    assert out.tokens.shape == (4, 100, 32)
    assert (~out.padding_mask).sum(1).tolist() == [100, 100, 100, 50]
    assert out.band_width_hz[:, 0].tolist() == [500.0, 32000.0, 4000.0, 32000.0]
    nyq = torch.tensor([sr for sr, _ in clips])[:, None] / 2
    assert (out.band_start_hz + out.band_width_hz <= nyq + 1e-3).all() and (out.band_start_hz >= 50.0 - 1e-3).all()
    for b, (sr, x) in enumerate(clips):  # each clip's tokens are its own, alone or batched
        alone = fe(*batch([(sr, x)]))
        n = int((~alone.padding_mask).sum())
        torch.testing.assert_close(alone.tokens[0, :n], out.tokens[b, :n], atol=2e-5, rtol=1e-4)
    # the bat's sweeps (30-110 kHz, 80 kHz wide) lie inside the bands of the 384 kHz clip, but for a gap of a few kHz
    # (measured 93.5 %: a sweep this fast fills its STFT frames edge to edge, and the evidence's common mode takes
    # most of its interior, docs/frontends/heterodyne.md "Known limits"); 2 kHz bands could hold at most 20 %
    f, w = out.band_start_hz[1], out.band_width_hz[1]
    grid = torch.arange(30000.0, 110000.0, 100.0)
    assert ((grid[:, None] >= f) & (grid[:, None] <= f + w)).any(1).float().mean() >= 0.85


def test_wide_bands_give_finite_gradients_to_every_part():
    fe = frontend()
    wave, rates, lengths = batch([(250000, chirp_clip(250000, 0.5, 100000.0, 40000.0)),
                                  (6000, chirp_clip(6000, 0.5, 2500.0, 1000.0))])
    out = fe(wave, rates, lengths)
    (out.tokens.square().mean() + sum(out.aux_losses.values())).backward()
    for name, p in fe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert fe.projection.convs[0].conv.weight.grad.abs().sum() > 0


def test_one_fixed_width_is_the_model_before_variable_widths():
    """band_width_hz set: every band is one sub-band of W Hz, and the tokens do not depend on band_widths_hz."""
    clips = [(16000, chirp_clip(16000, 1.0, 6000.0, 2000.0)), (96000, chirp_clip(96000, 1.0, 40000.0, 10000.0))]
    a = frontend(band_width_hz=2000.0, max_sample_rate=192000)
    b = frontend(band_width_hz=2000.0, max_sample_rate=192000, band_widths_hz=(1000.0, 4000.0), band_rate_hz=4000.0)
    out_a, out_b = a(*batch(clips)), b(*batch(clips))
    assert (out_a.band_width_hz == 2000.0).all()
    assert torch.equal(out_a.tokens, out_b.tokens) and torch.equal(out_a.band_start_hz, out_b.band_start_hz)


def test_width_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="band_span"):
        HeterodyneConfig(band_span=0.0).validate()
    with pytest.raises(ConfigError, match="band_widths_hz"):
        HeterodyneConfig(band_widths_hz=()).validate()
    with pytest.raises(ConfigError, match="band_rate_hz"):
        FrontendConfig(heterodyne=HeterodyneConfig(band_rate_hz=2010.0)).validate()
    assert HeterodyneConfig().min_sample_rate == pytest.approx(2 * (50 + 500))
    assert math.isclose(HeterodyneConfig(band_width_hz=2000.0).min_sample_rate, 4100.0)


def test_the_field_recipe_takes_6_to_500_khz_in_one_batch_with_the_same_token_count():
    from a2v_het.config import load_config
    from a2v_het.recipe import PretrainConfig

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(PretrainConfig, root / "recipes" / "synthetic_frontend_field.yaml")
    assert cfg.frontend.heterodyne.max_sample_rate >= 500000
    torch.manual_seed(0)
    fe = build_frontend(cfg.frontend)
    rates = [6000, 8000, 48000, 96000, 192000, 384000, 500000]
    clips = [(sr, chirp_clip(sr, 0.5, 0.3 * sr / 2, 0.1 * sr / 2, seed=i)) for i, sr in enumerate(rates)]
    with torch.no_grad():
        out = fe(*batch(clips))
    assert out.tokens.shape[:2] == (len(rates), 25) and not out.padding_mask.any()
    assert torch.isfinite(out.tokens).all()
    widths = out.band_width_hz[:, 0].tolist()
    assert widths == sorted(widths) and widths[0] == 500.0 and widths[-1] == 32000.0


def test_a_run_folder_saved_before_variable_widths_loads_as_the_fixed_width_model(tmp_path):
    """Saved configs hold band_width_hz: 2000.0 and max_sample_rate: 192000 (the old defaults); they rebuild the
    old model, one 2 kHz band per band."""
    from a2v_het.config import config_from_dict, config_to_dict

    tree = config_to_dict(FrontendConfig())
    for key in ("band_widths_hz", "band_rate_hz"):  # keys that did not exist then
        tree["heterodyne"].pop(key)
    tree["heterodyne"].update(band_width_hz=2000.0, max_sample_rate=192000)
    cfg = config_from_dict(FrontendConfig, tree)
    assert cfg.heterodyne.widths == (2000.0,) and cfg.heterodyne.rate_hz == 2000.0
    fe = build_frontend(cfg)
    out = fe(*batch([(8000, chirp_clip(8000, 0.5, 3000.0, 1000.0)), (96000, chirp_clip(96000, 0.5, 30000.0, 9000.0))]))
    assert (out.band_width_hz == 2000.0).all()


def test_uniform_band_picker_tiles_each_clip_without_a_hypernetwork():
    fe = frontend(band_picker="uniform")
    assert fe.picker is None and not any(n.startswith("picker.") for n, _ in fe.named_parameters())
    clips = [(8000, chirp_clip(8000, 0.5, 3000.0, 1000.0)), (192000, chirp_clip(192000, 0.5, 80000.0, 20000.0))]
    out = fe(*batch(clips))
    for b, (sr, _) in enumerate(clips):
        f, w = out.band_start_hz[b], float(out.band_width_hz[b, 0])
        assert float(f[0]) == pytest.approx(50.0) and float(f[-1]) == pytest.approx(sr / 2 - w)
        assert (f.diff() <= w + 1e-3).all()  # no gaps: the spanning width tiles the clip's whole band
    from a2v_het.train.objective import CoverageObjective

    with pytest.raises(ValueError, match="band_picker"):
        CoverageObjective(fe)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_sub_band_pooling_matches_pooling_each_band_by_hand(pooling):
    """The projection's pooled features equal the max (mean) over each band's own sub-bands, for a batch whose
    clips have different numbers of sub-bands (and so padding)."""
    torch.manual_seed(0)
    from a2v_het.frontend.projection import BandProjection, frequency_embedding

    proj = BandProjection(2, 2000.0, 50.0, 8, 16, 8, 250000.0, sub_band_pooling=pooling)
    sub = split_sub_bands(torch.tensor([[100.0, 9000.0], [300.0, 900.0]]),
                          torch.tensor([[6000.0, 6000.0], [2000.0, 2000.0]]), 2000.0)
    bands = torch.randn(2, sub.start_hz.shape[1], 2, 400)
    features = {}

    def capture(_, __, out):  # the (sub-)band features right before pooling: the last conv stage's output
        features["h"] = out

    proj.convs[-1].register_forward_hook(capture)
    out = proj(bands, sub.start_hz, None, sub.band_index, sub.index_in_band)
    assert out.shape == (2, 10, 16)  # 0.2 s at 50 tokens/s
    emb = proj.band_embed(frequency_embedding(sub.start_hz, 8, 250000.0))
    rows = sub.valid.flatten().nonzero().flatten()
    h = features["h"] + emb.reshape(-1, 8)[rows, :, None]
    by_band = [[h[j] for j, r in enumerate(rows.tolist()) if sub.band_index.flatten()[r] == band and r // 6 == clip]
               for clip in range(2) for band in range(2)]
    reduce = (lambda xs: torch.stack(xs).amax(0)) if pooling == "max" else (lambda xs: torch.stack(xs).mean(0))
    pooled = torch.stack([reduce(xs) for xs in by_band]).view(2, 2, 8, 10)  # (B, K, C, N)
    expected = proj.norm(proj.out(pooled.permute(0, 3, 1, 2).reshape(2, 10, 16)))
    torch.testing.assert_close(out, expected)
