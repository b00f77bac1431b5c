"""The contract every frontend of the zoo keeps, checked the same way for all of them: a fixed token rate at every
input sample rate (the conv extractor excepted, by design), padding that does not leak into valid tokens, finite
values and gradients on silence / DC / clipping / bf16, and one data2vec training step through the real model."""

from __future__ import annotations

import math

import pytest
import torch

from a2v_het.frontend import FRONTEND_NAMES, FrontendConfig, build_frontend
from a2v_het.model.config import ModelConfig
from a2v_het.model.data2vec import Data2VecModel
from signals import noise_and_tone as _noise_and_tone

RATE_INDEPENDENT = [n for n in FRONTEND_NAMES if n != "conv"]
TOKEN_RATE = 50.0


def _cfg(name: str, dim: int = 32) -> FrontendConfig:
    if name == "conv":  # the wav2vec 2.0 stack at a width a unit test can afford
        from a2v_het.frontend import ConvExtractorConfig

        layers = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2
        return FrontendConfig(name=name, dim=dim, conv=ConvExtractorConfig(layers=layers))
    return FrontendConfig(name=name, dim=dim)


def _fe(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_frontend(_cfg(name)).eval()



@pytest.mark.parametrize("name", RATE_INDEPENDENT)
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 96000])
def test_token_count_is_duration_times_token_rate_at_every_rate(name, rate):
    fe = _fe(name)
    for seconds in (1.0, 1.37):
        n = int(round(seconds * rate))
        out = fe(_noise_and_tone(n, rate)[None], torch.tensor([rate]), torch.tensor([n]))
        want = math.ceil(n * TOKEN_RATE / rate - 1e-9)
        assert out.tokens.shape == (1, want, 32), (name, rate, seconds)
        assert fe.num_tokens(seconds, rate) == want
        assert not out.padding_mask.any()
        assert torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_valid_tokens_do_not_depend_on_batch_padding(name):
    """A 0.8 s clip at 16 kHz alone, then batched after a 1.5 s clip at 48 kHz (so it is zero-padded): same valid
    tokens, and the padding mask marks exactly the tokens past its end."""
    fe = _fe(name)
    short_n, long_n = int(0.8 * 16000), int(1.5 * 48000)
    short, long = _noise_and_tone(short_n, 16000, 1), _noise_and_tone(long_n, 48000, 2)
    with torch.no_grad():
        alone = fe(short[None], torch.tensor([16000]), torch.tensor([short_n]))
        wave = torch.zeros(2, long_n)
        wave[0] = long
        wave[1, :short_n] = short
        both = fe(wave, torch.tensor([48000, 16000]), torch.tensor([long_n, short_n]))
    n_short = alone.tokens.shape[1]
    assert int((~both.padding_mask[1]).sum()) == n_short
    assert not both.padding_mask[1, :n_short].any() and both.padding_mask[1, n_short:].all()
    # Float noise only: batched convs/FFTs round differently (the heterodyne picker's band starts move by ~1e-3 Hz,
    # its frequency embedding by ~1e-4). Leaking padding moved tokens by O(1) before it was fixed.
    torch.testing.assert_close(both.tokens[1, :n_short], alone.tokens[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_silence_dc_clipping_and_bf16_stay_finite_with_finite_gradients(name):
    fe = _fe(name).train()
    rate, n = 16000, 16000
    t = torch.arange(n) / rate
    cases = {
        "silence": torch.zeros(n),
        "dc": torch.full((n,), 0.7),
        "clipped": torch.sign(torch.sin(2 * math.pi * 440.0 * t)),  # full-scale square wave
        "noise": _noise_and_tone(n, rate, 3),
    }
    wave = torch.stack(list(cases.values()))
    rates, lengths = torch.full((4,), rate), torch.full((4,), n)
    for bf16 in (False, True):
        fe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fe(wave, rates, lengths)
            loss = out.tokens.float().square().mean() + sum(out.aux_losses.values(), torch.zeros(()))
        assert torch.isfinite(out.tokens.float()).all(), (name, bf16)
        loss.backward()
        grads = [p.grad for p in fe.parameters() if p.requires_grad]
        assert all(g is None or torch.isfinite(g).all() for g in grads), (name, bf16)
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0, (name, bf16)


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_one_data2vec_training_step_through_the_model(name):
    """The real student/teacher model on a mixed-rate batch: finite loss, and an AdamW step changes the
    frontend's weights (the self-supervised gradient reaches it)."""
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_groups=4, clone_batch=2,
                      average_top_k_layers=2, pos_conv_groups=4, pos_conv_depth=2, pos_conv_kernel=5,
                      decoder_layers=2, collapse_check_after=100)
    model = Data2VecModel(cfg, build_frontend(_cfg(name)))
    rates = torch.tensor([8000, 48000, 22050])
    lengths = (rates.double() * torch.tensor([1.0, 0.9, 0.7])).long()
    wave = torch.zeros(3, int(lengths.max()))
    for i in range(3):
        wave[i, : lengths[i]] = _noise_and_tone(int(lengths[i]), int(rates[i]), 10 + i)
    model.train()
    before = {k: v.detach().clone() for k, v in model.frontend.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss, logs = model(wave, rates, lengths, step=0)
    assert torch.isfinite(loss), name
    loss.backward()
    opt.step()
    moved = [k for k, v in model.frontend.named_parameters() if not torch.equal(v, before[k])]
    assert moved, f"{name}: no frontend parameter moved"


def test_bench_frontend_covers_every_frontend_at_8_16_48_96_khz_in_one_run():
    import argparse

    from a2v_het.bench.frontend import add_args, run

    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--batch", "1", "--seconds", "0.2", "--repeats", "1", "--device", "cpu"])
    args.quiet = True
    result = run(args)
    rows = {(r["sample_rate"], r["frontend"]): r for r in result["rows"]}
    assert {n for _, n in rows} == set(FRONTEND_NAMES) | {"heterodyne_fft", "bare_logmel"}
    assert {sr for sr, _ in rows} == {8000, 16000, 48000, 96000}
    for (sr, name), r in rows.items():
        assert r["error"] is None, (sr, name, r["error"])
        # peak_mem_mb is rounded to 0.1 MB: a 0.2 s clip at 8 kHz through log-mel can read 0.0
        assert r["time_ms"] > 0 and r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0
        if name != "conv":
            assert r["tokens_per_clip"] == 10, (sr, name)  # 0.2 s x 50 tokens/s at every rate
    assert rows[(48000, "heterodyne")]["ratio_to_heterodyne"] == 1.0
    assert rows[(96000, "conv")]["peak_mem_mb"] > rows[(8000, "conv")]["peak_mem_mb"] > 0  # memory is measured
