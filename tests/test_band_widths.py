"""Detail and context bands: K picked 2 kHz bands plus J bands tiling each clip's band, wide bands as sub-bands, one
model from 6 to 500 kHz."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from signals import clip_batch, heterodyne_frontend
from a2v_het.config import ConfigError
from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.frontend.band_widths import clip_band_width, split_sub_bands
from a2v_het.frontend.config import HeterodyneConfig
from a2v_het.frontend.heterodyne import heterodyne_bands

OCTAVES = (1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 64000.0)


frontend = heterodyne_frontend
batch = clip_batch


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
    w = clip_band_width(rates, OCTAVES, 4, 50.0)
    assert w.tolist() == [1000.0, 1000.0, 1000.0, 2000.0, 8000.0, 16000.0, 32000.0, 64000.0, 64000.0, 64000.0]
    for sr, wk in zip(rates.tolist(), w.tolist()):
        span = sr / 2 - 50.0
        if 4 * wk >= span:  # the bands can span the clip ...
            narrower = [x for x in OCTAVES if x < wk]
            assert not narrower or 4 * max(narrower) < span  # ... and no narrower width would
        elif wk <= span:
            assert wk == OCTAVES[-1]  # nothing spans it: the widest (1 MHz)
    assert clip_band_width(torch.tensor([48000]), OCTAVES, 2, 50.0).tolist() == [16000.0]  # fewer bands, wider


def test_context_bands_tile_every_clip_and_detail_bands_stay_2_khz():
    fe = frontend()
    rates = [6000, 8000, 48000, 96000, 192000, 384000, 500000]
    clips = [(sr, chirp_clip(sr, 0.5, 0.3 * sr / 2, 0.1 * sr / 2, seed=i)) for i, sr in enumerate(rates)]
    with torch.no_grad():
        a = fe.analyze(*batch(clips))
    k, j = fe.h.num_bands, fe.h.context_bands
    assert a.band_start_hz.shape == (len(rates), k + j)
    assert (a.band_width_hz[:, :k] == 2000.0).all()
    for b, sr in enumerate(rates):
        f, w = a.band_start_hz[b, k:], a.band_width_hz[b, k:]
        assert float(f[0]) == pytest.approx(50.0) and float(f[-1] + w[-1]) == pytest.approx(sr / 2, abs=1e-2)
        assert (f.diff() <= w[:-1] + 1e-3).all()  # no gaps between context bands
    # every grid bin from f_min up to each Nyquist lies in some band: the union mask is >= 0.5 there
    inside = a.stats.freq_valid & (a.stats.freqs_hz[None] >= 50.0)
    assert (a.all_mask[inside] >= 0.5).all()


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



def test_band_bins_reads_and_folds_every_band_as_a_bin_by_bin_reference():
    """band_bins against a loop over bins: narrow bands inside the spectrum and hanging over 0 Hz or the Nyquist
    bin, bands cut short, wide bands folded (bin start + j onto j mod m) inside and over both ends, in clips whose
    wide bands start at the same bin (one strided sum) and at different bins."""
    from a2v_het.frontend.heterodyne import band_bins

    g = torch.Generator().manual_seed(0)
    n_bins, m = 200, 16
    spec = torch.complex(torch.randn(3, n_bins, generator=g), torch.randn(3, n_bins, generator=g))
    start = torch.tensor([[5, -4, 190, 40, 100, -10], [7, 0, 195, 40, 30, 180], [60, 185, 3, 40, 100, 150]])
    kept = torch.tensor([[16, 16, 16, 64, 40, 30], [9, 16, 16, 64, 40, 35], [0, 16, 16, 64, 41, 64]])

    def reference(start, kept):
        expected = torch.zeros(*start.shape, m, dtype=spec.dtype)
        for c, k in np.ndindex(*start.shape):
            for j in range(int(kept[c, k])):
                pos = int(start[c, k]) + j
                if 0 <= pos < n_bins:
                    expected[c, k, j % m] += spec[c, pos]
        return expected

    torch.testing.assert_close(band_bins(spec, start, m, kept), reference(start, kept))
    torch.testing.assert_close(band_bins(spec, start, m), reference(start, torch.full_like(start, m)))  # m each


def test_a_folded_wide_band_is_the_sum_of_its_sub_bands_signals():
    """A band of 3 x 2 kHz heterodyned as one folded band equals its three sub-bands heterodyned and summed, and
    a band of 2 kHz passes unchanged beside it."""
    sr, n = 48000, 48000
    t = np.arange(n) / sr
    x = torch.tensor(sum(np.sin(2 * np.pi * f * t) for f in (3300.0, 5100.0, 7900.0, 12000.0)),
                     dtype=torch.float32)[None]
    args = (x, torch.tensor([sr]), torch.tensor([n]))
    folded = heterodyne_bands(*args, torch.tensor([[3000.0, 11000.0]]), 2000.0, 2000,
                              pass_width_hz=torch.tensor([[6000.0, 2000.0]]), taper_s=0.005)
    subs = heterodyne_bands(*args, torch.tensor([[3000.0, 5000.0, 7000.0, 11000.0]]), 2000.0, 2000, taper_s=0.005)
    torch.testing.assert_close(folded[0, 0], subs[0, :3].sum(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded[0, 1], subs[0, 3], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="quadrature"):
        heterodyne_bands(*args, torch.tensor([[3000.0]]), 2000.0, 2000, mixing="cosine",
                         pass_width_hz=torch.tensor([[6000.0]]))

def test_8_and_384_khz_clips_go_through_one_model_in_one_batch_with_the_same_token_count():
    fe = frontend()
    clips = [(8000, chirp_clip(8000, 2.0, 3500.0, 1500.0)), (384000, chirp_clip(384000, 2.0, 110000.0, 30000.0, 1)),
             (48000, chirp_clip(48000, 2.0, 20000.0, 8000.0, 2)), (500000, chirp_clip(500000, 1.0, 120000.0, 25000.0))]
    out = fe(*batch(clips))
    assert out.tokens.shape == (4, 100, 32)
    assert (~out.padding_mask).sum(1).tolist() == [100, 100, 100, 50]
    assert out.band_width_hz[:, -1].tolist() == [1000.0, 64000.0, 8000.0, 64000.0]  # the context width
    nyq = torch.tensor([sr for sr, _ in clips])[:, None] / 2
    assert (out.band_start_hz + out.band_width_hz <= nyq + 1e-2).all() and (out.band_start_hz >= 50.0 - 1e-3).all()
    for b, (sr, x) in enumerate(clips):  # each clip's tokens are its own, alone or batched
        alone = fe(*batch([(sr, x)]))
        n = int((~alone.padding_mask).sum())
        torch.testing.assert_close(alone.tokens[0, :n], out.tokens[b, :n], atol=2e-5, rtol=1e-4)
    # the bat's sweeps (30-110 kHz, 80 kHz wide: 2 kHz bands alone could hold at most 20 % of it) lie inside the
    # 384 kHz clip's bands
    f, w = out.band_start_hz[1], out.band_width_hz[1]
    grid = torch.arange(30000.0, 110000.0, 100.0)
    assert ((grid[:, None] >= f) & (grid[:, None] <= f + w)).any(1).all()


def test_wide_bands_give_finite_gradients_to_every_part():
    fe = frontend()
    wave, rates, lengths = batch([(250000, chirp_clip(250000, 0.5, 100000.0, 40000.0)),
                                  (6000, chirp_clip(6000, 0.5, 2500.0, 1000.0))])
    out = fe(wave, rates, lengths)
    (out.tokens.square().mean() + sum(out.aux_losses.values())).backward()
    for name, p in fe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert fe.projection.convs[0].conv.weight.grad.abs().sum() > 0


def test_no_context_bands_is_the_model_before_them():
    """context_bands: 0 gives K bands of one sub-band each: the projection's pooling is the identity, and the
    tokens do not depend on the (unused) context widths."""
    clips = [(16000, chirp_clip(16000, 1.0, 6000.0, 2000.0)), (96000, chirp_clip(96000, 1.0, 40000.0, 10000.0))]
    a = frontend(context_bands=0)
    b = frontend(context_bands=0, context_widths_hz=(3000.0,))
    out_a, out_b = a(*batch(clips)), b(*batch(clips))
    assert out_a.band_start_hz.shape == (2, 8) and (out_a.band_width_hz == 2000.0).all()
    assert torch.equal(out_a.tokens, out_b.tokens) and torch.equal(out_a.band_start_hz, out_b.band_start_hz)


def test_width_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="context_widths_hz"):
        HeterodyneConfig(context_widths_hz=()).validate()
    with pytest.raises(ConfigError, match="context_bands"):
        HeterodyneConfig(context_bands=-1).validate()
    with pytest.raises(ConfigError, match="band_width_hz"):
        FrontendConfig(heterodyne=HeterodyneConfig(band_width_hz=2010.0)).validate()
    assert math.isclose(HeterodyneConfig().min_sample_rate, 4100.0)


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
    widths = out.band_width_hz[:, -1].tolist()  # the context width
    assert widths == sorted(widths) and widths[0] == 1000.0 and widths[-1] == 64000.0


def test_a_run_folder_saved_before_context_bands_loads_as_the_model_it_trained():
    """Saved configs from before issue 13 have no context_bands key (and max_sample_rate: 192000, the old default):
    they rebuild the old model, 8 bands of 2 kHz, while a recipe gets today's default."""
    from a2v_het.config import config_from_dict, config_to_dict

    tree = config_to_dict(FrontendConfig())
    for key in ("context_bands", "context_widths_hz", "sub_band_pooling"):  # keys that did not exist then
        tree["heterodyne"].pop(key)
    tree["heterodyne"]["max_sample_rate"] = 192000
    cfg = config_from_dict(FrontendConfig, tree)
    assert cfg.heterodyne.context_bands == 0 and HeterodyneConfig().context_bands == 4
    fe = build_frontend(cfg)
    out = fe(*batch([(8000, chirp_clip(8000, 0.5, 3000.0, 1000.0)), (96000, chirp_clip(96000, 0.5, 30000.0, 9000.0))]))
    assert out.band_start_hz.shape == (2, 8) and (out.band_width_hz == 2000.0).all()


def test_uniform_band_picker_tiles_each_clip_without_a_hypernetwork():
    fe = frontend(band_picker="uniform")
    assert fe.picker is None and not any(n.startswith("picker.") for n, _ in fe.named_parameters())
    clips = [(8000, chirp_clip(8000, 0.5, 3000.0, 1000.0)), (192000, chirp_clip(192000, 0.5, 80000.0, 20000.0))]
    out = fe(*batch(clips))
    for b, (sr, _) in enumerate(clips):
        f = out.band_start_hz[b, :8]  # the detail bands, evenly spaced
        assert float(f[0]) == pytest.approx(50.0) and float(f[-1]) == pytest.approx(sr / 2 - 2000.0)
        torch.testing.assert_close(f.diff(), f.diff().mean().expand(7))
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


def test_coverage_reports_the_detail_bands_apart_from_all_bands(tmp_path):
    """All Cov counts every band (the context bands tile each clip, so every call is covered); All Cov (detail)
    counts only the K picked bands, the picker's own work, and can only be lower."""
    from a2v_het.eval.coverage import coverage_report, format_table
    from data_tools.synth import write_synth_shards

    write_synth_shards(tmp_path / "d", "field", 6, [96000, 192000], 1.0, seed=3, split="val")
    report = coverage_report(frontend().eval(), str(tmp_path / "d"), "val", batch_size=3)
    overall = report["overall"]
    assert overall["calls"] > 0 and overall["all_cov"] == 1.0
    assert 0.0 <= overall["all_cov_detail"] <= overall["all_cov"]
    assert report["config"]["context_bands"] == 4 and "All Cov (detail)" in format_table(report)


def test_fold_pooling_sums_each_bands_sub_band_signals_before_the_convs():
    """sub_band_pooling: fold gives the same tokens as feeding the summed sub-band signals in as one band each."""
    torch.manual_seed(0)
    from a2v_het.frontend.projection import BandProjection, fold_sub_bands

    proj = BandProjection(2, 2000.0, 50.0, 8, 16, 8, 250000.0, sub_band_pooling="fold")
    sub = split_sub_bands(torch.tensor([[100.0, 9000.0], [300.0, 900.0]]),
                          torch.tensor([[6000.0, 6000.0], [2000.0, 2000.0]]), 2000.0)
    bands = torch.randn(2, sub.start_hz.shape[1], 2, 400)
    folded, starts = fold_sub_bands(bands, sub.start_hz, sub.band_index, sub.index_in_band, 2)
    torch.testing.assert_close(folded[0, 0], bands[0, :3].sum(0))
    torch.testing.assert_close(folded[0, 1], bands[0, 3:6].sum(0))
    torch.testing.assert_close(folded[1], bands[1, :2])  # one sub-band each: unchanged
    assert starts.tolist() == [[100.0, 9000.0], [300.0, 900.0]]
    out = proj(bands, sub.start_hz, None, sub.band_index, sub.index_in_band)
    torch.testing.assert_close(out, proj(folded, starts))
