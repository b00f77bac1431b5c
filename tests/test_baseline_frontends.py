"""Baseline frontends: the wav2vec 2.0 conv extractor and the absolute-Hz log-mel frontend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.frontend import build_frontend
from a2v_het.frontend.config import FrontendConfig, LogMelConfig
from a2v_het.frontend.conv_extractor import ConvExtractor, conv_output_length, conv_output_lengths, receptive_field
from a2v_het.frontend.logmel import (
    LOG_EPS,
    LogMelFrontend,
    bare_log_mel,
    mel_edges_hz,
    mel_filterbank,
    tokens_for_samples,
)

LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def _t(*xs):
    return torch.tensor(list(xs))


# ----------------------------------------------------------------------------------------------------------- conv


def _np_conv_len(n: int, layers) -> int:
    """wav2vec 2.0's _get_feat_extract_output_lengths, in plain float arithmetic."""
    length = float(n)
    for _, k, s in layers:
        length = math.floor((length - k) / s + 1)
        if length <= 0:
            return 0
    return int(length)


@pytest.fixture(scope="module")
def conv_fe() -> ConvExtractor:
    torch.manual_seed(0)
    return ConvExtractor(FrontendConfig(name="conv")).eval()


def test_conv_default_layers_and_receptive_field():
    assert FrontendConfig().conv.layers == LAYERS
    assert receptive_field(LAYERS) == 400


@pytest.mark.parametrize("n", [0, 1, 399, 400, 401, 719, 720, 721, 16000, 48000, 44100 * 3 + 17])
def test_conv_length_formula_matches_reference(n):
    assert conv_output_length(n, LAYERS) == _np_conv_len(n, LAYERS)
    assert int(conv_output_lengths(_t(n), LAYERS)[0]) == _np_conv_len(n, LAYERS)


def test_conv_length_formula_matches_real_convolutions():
    convs = torch.nn.Sequential(*[torch.nn.Conv1d(1, 1, k, s) for _, k, s in LAYERS])
    for n in (400, 401, 720, 1234, 16000):
        with torch.no_grad():
            assert convs(torch.zeros(1, 1, n)).shape[-1] == conv_output_length(n, LAYERS)


@pytest.mark.parametrize("sr,expected", [(16000, 49), (48000, 149)])
def test_conv_token_count_and_mask(conv_fe, sr, expected):
    lengths = _t(sr, sr // 2, 300)  # 1 s, 0.5 s, shorter than the receptive field
    wave = torch.randn(3, sr) * (torch.arange(sr)[None, :] < lengths[:, None])
    out = conv_fe(wave, _t(sr, sr, sr), lengths)
    assert conv_fe.num_tokens(1.0, sr) == expected
    assert out.tokens.shape == (3, expected, 256)
    valid = (~out.padding_mask).sum(1).tolist()
    assert valid == [expected, conv_output_length(sr // 2, LAYERS), 0]
    # The mask is a prefix: valid tokens first, then padding.
    assert not out.padding_mask[1, : valid[1]].any() and out.padding_mask[1, valid[1]:].all()
    assert torch.isfinite(out.tokens).all()


def test_conv_mixed_rate_batch_is_padding_independent(conv_fe):
    torch.manual_seed(1)
    a, b = torch.randn(16000), torch.randn(48000)
    wave = torch.zeros(2, 48000)
    wave[0, :16000], wave[1] = a, b
    with torch.no_grad():
        out = conv_fe(wave, _t(16000, 48000), _t(16000, 48000))
        alone = conv_fe(a[None], _t(16000), _t(16000))
    assert (~out.padding_mask).sum(1).tolist() == [49, 149]  # 1 s each: the token count follows the rate
    # Group norm statistics over valid frames only: the 16 kHz clip's tokens ignore the batch's padding.
    torch.testing.assert_close(out.tokens[0, :49], alone.tokens[0], rtol=1e-4, atol=1e-4)


def test_conv_padding_junk_is_ignored(conv_fe):
    torch.manual_seed(2)
    wave = torch.randn(1, 8000)
    junk = wave.clone()
    junk[0, 4000:] = 100.0  # beyond lengths: must not leak into the clip's tokens
    with torch.no_grad():
        o1 = conv_fe(wave, _t(16000), _t(4000))
        o2 = conv_fe(junk, _t(16000), _t(4000))
    n = conv_output_length(4000, LAYERS)
    torch.testing.assert_close(o1.tokens[0, :n], o2.tokens[0, :n])


def test_conv_gradients_flow_to_every_parameter_and_the_wave():
    torch.manual_seed(3)
    fe = ConvExtractor(FrontendConfig(name="conv"))
    wave = torch.randn(2, 16000, requires_grad=True)
    out = fe(wave, _t(16000, 16000), _t(16000, 8000))
    assert out.aux_losses == {}
    loss = out.tokens[~out.padding_mask].square().mean()
    loss.backward()
    for name, p in fe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert wave.grad[1, 8000:].abs().max() == 0  # padding samples cannot influence valid tokens
    assert wave.grad[1, :7000].abs().sum() > 0


def test_conv_silence_and_too_short_give_no_nan(conv_fe):
    out = conv_fe(torch.zeros(2, 300), _t(16000, 16000), _t(300, 0))
    assert out.tokens.shape == (2, 1, 256) and out.padding_mask.all()
    assert torch.isfinite(out.tokens).all()
    out = conv_fe(torch.zeros(1, 16000), _t(16000), _t(16000))
    assert torch.isfinite(out.tokens).all()


def test_build_frontend_selects_baselines():
    assert isinstance(build_frontend(FrontendConfig(name="conv")), ConvExtractor)
    assert isinstance(build_frontend(FrontendConfig(name="logmel")), LogMelFrontend)


# --------------------------------------------------------------------------------------------------------- logmel


def _np_mel_filterbank(n_mels, freqs, f_min, f_max):
    """Reference: loops over filters and bins, HTK mel, peak-1 triangles."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    imel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = imel(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    out = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for g, f in enumerate(freqs):
            if lo < f <= c:
                out[m, g] = (f - lo) / (c - lo)
            elif c < f < hi:
                out[m, g] = (hi - f) / (hi - c)
    return out


@pytest.fixture(scope="module")
def lm_fe() -> LogMelFrontend:
    torch.manual_seed(0)
    return LogMelFrontend(FrontendConfig(name="logmel")).eval()


def test_mel_filterbank_matches_numpy_reference():
    rng = np.random.default_rng(0)
    freqs = np.sort(rng.uniform(0, 12000, 700))  # irregular grid: the function must not assume spacing
    freqs = np.concatenate([freqs, [0.0, 12000.0]])
    ours = mel_filterbank(40, torch.from_numpy(freqs), 30.0, 11000.0).numpy()
    ref = _np_mel_filterbank(40, freqs, 30.0, 11000.0)
    assert ours.shape == (40, len(freqs)) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    grid = np.arange(0, 96001, 40.0)
    np.testing.assert_allclose(mel_filterbank(128, torch.from_numpy(grid), 0.0, 96000.0).numpy(),
                               _np_mel_filterbank(128, grid, 0.0, 96000.0), atol=1e-6)


def test_default_filterbank_has_no_empty_filter(lm_fe):
    # The lowest HTK filters are ~27 Hz apart, narrower than the 40 Hz grid; each must still catch a bin.
    assert lm_fe.spectrogram.fbank.shape == (128, 2401)
    assert (lm_fe.spectrogram.fbank.sum(1) > 0).all()


def test_token_count_formula():
    assert tokens_for_samples(_t(0, 1, 160, 161, 48000, 44100 * 3), _t(8000, 8000, 8000, 8000, 48000, 44100),
                              50.0).tolist() == [0, 1, 1, 2, 50, 150]


RATES = [8000, 16000, 22050, 44100, 48000, 96000]


@pytest.mark.parametrize("duration", [1.5, 0.02, 0.03])
def test_logmel_same_token_count_at_every_rate(lm_fe, duration):
    expected = math.ceil(duration * 50 - 1e-9)
    for sr in RATES:
        n = int(round(duration * sr))
        assert lm_fe.num_tokens(duration, sr) == expected, sr
        out = lm_fe(torch.randn(1, n) * 0.1, _t(sr), _t(n))
        assert out.tokens.shape == (1, expected, 256), sr
        assert not out.padding_mask.any()


def test_logmel_mixed_rate_batch_counts_and_padding_independence(lm_fe):
    torch.manual_seed(4)
    clips = [(sr, torch.randn(int(1.5 * sr)) * 0.1) for sr in RATES]
    t_max = max(len(c) for _, c in clips)
    wave = torch.zeros(len(clips), t_max)
    for i, (_, c) in enumerate(clips):
        wave[i, : len(c)] = c
    lengths = _t(*[len(c) for _, c in clips])
    with torch.no_grad():
        out = lm_fe(wave, _t(*RATES), lengths)
        assert out.tokens.shape[:2] == (len(RATES), 75) and not out.padding_mask.any()
        for i, (sr, c) in enumerate(clips):
            alone = lm_fe(c[None], _t(sr), _t(len(c)))
            torch.testing.assert_close(out.tokens[i], alone.tokens[0], rtol=1e-4, atol=1e-4)
    # Shorter clip in the batch: its own count valid, the rest padding.
    with torch.no_grad():
        out = lm_fe(wave[:2], _t(8000, 16000), _t(4000, 24000))
    assert (~out.padding_mask).sum(1).tolist() == [25, 75]


def test_logmel_tone_lands_in_right_filter(lm_fe):
    ref = _np_mel_filterbank(128, np.array([1000.0]), 0.0, 96000.0)[:, 0]
    expected = int(np.argmax(ref))
    for sr in RATES:
        t = torch.arange(sr) / sr
        wave = (0.5 * torch.sin(2 * math.pi * 1000.0 * t))[None]
        lm = bare_log_mel(wave, _t(sr), _t(sr), lm_fe.cfg)
        assert lm.shape == (1, 128, 50)
        assert int(lm[0].mean(1).argmax()) == expected, sr


def test_logmel_same_content_same_features_across_rates(lm_fe):
    # Band-limited content (1 kHz + 3 kHz) recorded at 16 and 48 kHz: the features below 8 kHz must agree, and
    # filters reaching above 8 kHz are silent at 16 kHz, not reading a partial, rate-dependent energy.
    feats = {}
    for sr in (16000, 48000):
        t = torch.arange(sr, dtype=torch.float64) / sr  # float64 phase: float32 phase noise fills empty filters
        wave = (0.3 * torch.sin(2 * math.pi * 1000.0 * t) + 0.1 * torch.sin(2 * math.pi * 3000.0 * t))[None].float()
        feats[sr] = bare_log_mel(wave, _t(sr), _t(sr), lm_fe.cfg)[0]
    below = (lm_fe.spectrogram.upper_edge_hz <= 8000).nonzero().flatten()
    # Interior frames only: the first/last window straddles the clip's hard edge, whose broadband click aliases
    # differently at 16 and 48 kHz (that difference is real content, not a frontend artefact).
    torch.testing.assert_close(feats[16000][below, 1:-1], feats[48000][below, 1:-1], rtol=0, atol=1e-2)
    assert feats[16000][below, 1:-1].max() > math.log(LOG_EPS) + 15  # the tones are really there
    above = lm_fe.spectrogram.upper_edge_hz > 8000
    assert torch.all(feats[16000][above] == math.log(LOG_EPS))


def test_logmel_filters_above_nyquist_are_silent(lm_fe):
    torch.manual_seed(5)
    for sr in (8000, 22050, 96000):
        wave = torch.randn(1, sr) * 0.3
        lm = bare_log_mel(wave, _t(sr), _t(sr), lm_fe.cfg)[0]  # (M, N)
        above = lm_fe.spectrogram.upper_edge_hz > sr / 2
        assert above.any()
        assert torch.all(lm[above] == math.log(LOG_EPS)), sr
        assert lm[~above].min() > math.log(LOG_EPS) + 5, sr  # white noise fills every filter below the Nyquist


def test_logmel_frames_are_centred_on_token_intervals(lm_fe):
    # A click at 0.51 s falls in token 25's interval [0.50, 0.52) and must peak there at every rate.
    for sr in (8000, 44100, 96000):
        wave = torch.zeros(1, sr)
        wave[0, int(0.51 * sr)] = 1.0
        lm = bare_log_mel(wave, _t(sr), _t(sr), lm_fe.cfg)[0]
        assert int(lm.mean(0).argmax()) == 25, sr


@pytest.mark.parametrize("kind", ["silence", "dc", "short", "empty"])
def test_logmel_no_nan(lm_fe, kind):
    sr = 16000
    wave = {"silence": torch.zeros(2, sr), "dc": torch.full((2, sr), 0.7), "short": torch.randn(2, 10),
            "empty": torch.zeros(2, 5)}[kind].clone().requires_grad_(True)
    lengths = {"silence": _t(sr, sr), "dc": _t(sr, sr), "short": _t(10, 3), "empty": _t(0, 0)}[kind]
    out = lm_fe(wave, _t(sr, 48000), lengths)
    assert torch.isfinite(out.tokens).all()
    if kind == "empty":
        assert out.tokens.shape[1] == 1 and out.padding_mask.all()
    else:
        assert (~out.padding_mask).sum(1).min() >= 1
    out.tokens.sum().backward()
    assert torch.isfinite(wave.grad).all()
    if kind == "silence":
        assert torch.all(bare_log_mel(wave.detach(), _t(sr, sr), lengths, lm_fe.cfg) == math.log(LOG_EPS))


def test_bare_log_mel_is_fp32_under_autocast_and_differentiable(lm_fe):
    torch.manual_seed(6)
    wave = (torch.randn(2, 16000) * 0.1).requires_grad_(True)
    plain = bare_log_mel(wave, _t(16000, 16000), _t(16000, 12000), lm_fe.cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = bare_log_mel(wave, _t(16000, 16000), _t(16000, 12000), lm_fe.cfg)
        tok = lm_fe(wave, _t(16000, 16000), _t(16000, 12000)).tokens
    assert plain.dtype == auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)
    assert torch.isfinite(tok.float()).all()
    auto.sum().backward()
    assert wave.grad is not None and wave.grad.abs().sum() > 0
    assert wave.grad[1, 12000:].abs().max() == 0


def test_logmel_custom_config():
    cfg = FrontendConfig(name="logmel", dim=32, token_rate=100.0, logmel=LogMelConfig(n_mels=20, window_s=0.02,
                                                                                     f_max_hz=8000.0))
    fe = LogMelFrontend(cfg)
    out = fe(torch.randn(1, 16000) * 0.1, _t(16000), _t(16000))
    assert out.tokens.shape == (1, 100, 32) and fe.num_tokens(1.0, 16000) == 100
    assert float(mel_edges_hz(20, 0.0, 8000.0)[-1]) == pytest.approx(8000.0)


# ---------------------------------------------------------------------------------------------- bench (smoke)


def test_bench_profiler_peak_counts_live_tensors():
    from a2v_het.bench.frontend import peak_cpu_bytes_from_profiler

    def step():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # +4 MiB live at once
        del a, b
        c = torch.ones(256, 1024)  # 1 MiB after both were freed: must not raise the peak
        del c

    peak = peak_cpu_bytes_from_profiler(step)
    assert peak is not None and 8 * 2**20 <= peak < 9 * 2**20


def test_bench_times_the_frontends_in_turn_and_drops_one_that_fails():
    """Round-robin rounds, reversed every other round, after one warm-up of each; a failing step is reported and
    the others still timed."""
    from a2v_het.bench.frontend import time_steps_interleaved

    calls = []

    def failing():
        calls.append("bad")
        if calls.count("bad") > 1:  # fails on its first timed call, after the warm-up
            raise RuntimeError("out of memory")

    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": failing}
    times, errors = time_steps_interleaved(steps, torch.device("cpu"), repeats=3)
    # warm-ups, round 1, round 2 (reversed, without the failed step), round 3
    assert calls == ["a", "b", "bad", "a", "b", "bad", "b", "a", "a", "b"]
    assert errors == {"bad": "RuntimeError: out of memory"} and set(times) == {"a", "b"}
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)

def test_bench_frontend_rows_and_reports():
    import argparse
    import json

    from a2v_het.bench.frontend import add_args, format_markdown, format_table, run

    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--batch", "2", "--seconds", "0.1", "--rates", "8000,16000", "--repeats", "1",
                              "--device", "cpu", "--frontends", "conv,logmel,bare_logmel"])
    args.quiet = True
    result = run(args)
    json.dumps(result)  # JSON-serialisable as printed by --json
    rows = {(r["sample_rate"], r["frontend"]): r for r in result["rows"]}
    assert len(rows) == 6 and all(r["error"] is None for r in rows.values())
    assert rows[(8000, "conv")]["tokens_per_clip"] == conv_output_length(800, LAYERS)
    assert rows[(16000, "conv")]["tokens_per_clip"] == conv_output_length(1600, LAYERS)
    assert {rows[(sr, n)]["tokens_per_clip"] for sr in (8000, 16000) for n in ("logmel", "bare_logmel")} == {5}
    assert all(r["peak_mem_mb"] > 0 and r["time_ms"] > 0 for r in rows.values()), [(k, r["peak_mem_mb"], r["time_ms"]) for k, r in rows.items()]
    assert all(r["ratio_to_heterodyne"] is None for r in rows.values())  # heterodyne not in this run
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cpu_cores"] >= 1
    md = format_markdown(result)
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + 6 and "8000 | conv" in md
    assert "bare_logmel" in format_table(result)


def test_bench_step_reports_both_frontends_with_the_same_encoder():
    import argparse

    from a2v_het.bench import step as bench_step

    parser = argparse.ArgumentParser()
    bench_step.add_args(parser)
    args = parser.parse_args(["--rates", "8000", "--seconds", "0.5", "--batch", "1", "--repeats", "1",
                              "--embed-dim", "32", "--depth", "1", "--heads", "2", "--clone-batch", "1", "--json"])
    result = bench_step.run(args)
    rows = {r["frontend"]: r for r in result["rows"]}
    assert set(rows) == {"heterodyne", "conv"}
    assert rows["heterodyne"]["tokens_per_clip"] == 25  # 0.5 s x 50 Hz
    assert rows["heterodyne"]["ratio_to_heterodyne"] == 1.0
    assert rows["conv"]["step_s"] > 0 and rows["conv"]["ratio_to_heterodyne"] > 0
