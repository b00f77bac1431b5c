"""Data2VecModel and its parts: encoder (ALiBi, positions, padding), targets, decoder, loss, teacher plumbing,
collapse guard, BC-mixup, z-normalisation, bf16 autocast. Tiny configs on 1 s clips at 8-16 kHz."""

import dataclasses
import math
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from a2v_het.config import ConfigError
from a2v_het.frontend import ConvExtractorConfig, FrontendConfig, HeterodyneConfig, build_frontend
from a2v_het.model.config import ModelConfig
from a2v_het.model.data2vec import Data2VecModel, TrainingCollapsed, normalize_wave
from a2v_het.model.decoder import Decoder
from a2v_het.model.encoder import Encoder, alibi_bias, alibi_slopes
from a2v_het.model.masking import compute_block_mask, drop_masked
from a2v_het.model.mixup import a_weighted_level_db, a_weighting_db, bc_mix, bc_mixup, same_rate_partners
from a2v_het.model.targets import build_targets, masked_instance_norm

TINY = ModelConfig(embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_groups=4, clone_batch=2,
                   average_top_k_layers=2, pos_conv_groups=4, pos_conv_depth=2, pos_conv_kernel=5,
                   decoder_layers=2, collapse_check_after=100)


def tiny_model(cfg=TINY, frontend_cfg=None, seed=0) -> Data2VecModel:
    torch.manual_seed(seed)
    return Data2VecModel(cfg, build_frontend(frontend_cfg or FrontendConfig(dim=32)))


def clips(seconds=1.0, seed=0):
    """A mixed-rate batch: 1 s at 16 kHz and 0.6 s at 8 kHz (so the second clip has padded tokens)."""
    g = torch.Generator().manual_seed(seed)
    sr = torch.tensor([16000, 8000])
    lengths = torch.tensor([int(16000 * seconds), int(8000 * 0.6 * seconds)])
    wave = torch.zeros(2, int(16000 * seconds))
    for b in range(2):
        t = torch.arange(int(lengths[b])) / sr[b]
        calls = (torch.sin(2 * math.pi * 3 * t) > 0.2).float()
        wave[b, : lengths[b]] = 0.05 * torch.randn(int(lengths[b]), generator=g) + calls * torch.sin(
            2 * math.pi * (900 + 500 * b) * t)
    return wave, sr, lengths


# ------------------------------------------------------------------------------------------------- config
def test_config_validation():
    ModelConfig().validate()
    TINY.validate()
    for bad in [dict(num_heads=5), dict(average_top_k_layers=13), dict(mask_prob=1.0),
                dict(mask_type="span", mask_prob=2.0, mask_length=2), dict(decoder_groups=7), dict(pos_conv_groups=7),
                dict(ema_decay=1.5), dict(clone_batch=0), dict(dropout=1.0)]:
        with pytest.raises(ConfigError):
            dataclasses.replace(ModelConfig(), **bad).validate()
    dataclasses.replace(ModelConfig(), mask_type="span", mask_prob=1.5, mask_length=2).validate()
    assert dataclasses.replace(ModelConfig(), mask_type="span", mask_prob=1.5, mask_length=2).mask_ratio == 0.9375


# ------------------------------------------------------------------------------------------------- encoder
def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    want12 = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(i + 0.5) for i in range(4)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(want12))


def test_alibi_bias_of_gathered_positions_is_the_gathered_full_bias():
    slopes = torch.tensor([0.5, 0.25])
    full = alibi_bias(torch.arange(10), slopes)[0]  # (H, 10, 10)
    pos = torch.tensor([[0, 3, 4, 9], [1, 2, 5, 8]])
    part = alibi_bias(pos, slopes)
    for r in range(2):
        assert torch.equal(part[r], full[:, pos[r]][:, :, pos[r]])
    assert full[1, 2, 7] == -0.25 * 5 and full[1, 7, 2] == full[1, 2, 7]


def make_encoder(**kw) -> Encoder:
    torch.manual_seed(0)
    enc = Encoder(dataclasses.replace(TINY, **kw)).eval()
    with torch.no_grad():
        # Larger weights than the init (whose attention barely moves the stream) and non-trivial ALiBi scales, so
        # the tests see attention and positions.
        for lin in [m for m in enc.blocks.modules() if isinstance(m, torch.nn.Linear)]:
            lin.weight.normal_(std=0.3)
        if enc.cfg.alibi:
            enc.alibi_scale.copy_(torch.tensor([0.7, 1.9]))
    return enc


def test_positions_arange_equals_none_and_alibi_is_translation_invariant():
    enc = make_encoder()
    x = torch.randn(3, 12, 32)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    a, la = enc(x, pad)
    b, lb = enc(x, pad, torch.arange(12).expand(3, 12))
    c, _ = enc(x, pad, torch.arange(12).expand(3, 12) + 37)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(la[-1], lb[-1], atol=1e-6)
    assert torch.allclose(a, c, atol=1e-5)
    d, _ = enc(x, pad, torch.arange(12).expand(3, 12) * 2)  # positions do matter
    assert not torch.allclose(a, d, atol=1e-3)


def test_dropping_tokens_with_positions_equals_hiding_them_from_attention():
    """The student's compacted sequence with original positions must give exactly what the full sequence gives at
    the visible tokens when the masked tokens are excluded as keys (FFN and LayerNorm are per token)."""
    enc = make_encoder()
    x = torch.randn(4, 20, 32)
    mask = compute_block_mask(4, 20, None, 0.5, 3, 1, torch.Generator().manual_seed(0))
    visible, positions = drop_masked(x, mask)
    small, small_layers = enc(visible, torch.zeros_like(positions, dtype=torch.bool), positions)
    full, full_layers = enc(x, mask)  # masked tokens as "padding" keys
    for r in range(4):
        assert torch.allclose(small[r], full[r, positions[r]], atol=1e-5)
        assert torch.allclose(small_layers[0][r], full_layers[0][r, positions[r]], atol=1e-5)
    wrong, _ = enc(visible, torch.zeros_like(positions, dtype=torch.bool))  # without positions it differs
    assert not torch.allclose(wrong, small, atol=1e-3)


@pytest.mark.parametrize("alibi", [True, False])
def test_valid_outputs_do_not_depend_on_padding(alibi):
    enc = make_encoder(alibi=alibi)
    x = torch.randn(1, 15, 32)
    alone, _ = enc(enc.add_position(x, torch.zeros(1, 15, dtype=torch.bool)), torch.zeros(1, 15, dtype=torch.bool))
    padded_x = torch.cat([x, 100 * torch.randn(1, 9, 32)], dim=1)  # junk in the padding
    pad = torch.arange(24)[None] >= 15
    padded, layers = enc(enc.add_position(padded_x, pad), pad)
    assert torch.allclose(alone, padded[:, :15], atol=1e-5)
    assert len(layers) == TINY.depth and layers[0].shape == (1, 24, 32)


def test_empty_clip_gives_no_nan():
    enc = make_encoder()
    pad = torch.ones(2, 6, dtype=torch.bool)
    out, layers = enc(enc.add_position(torch.randn(2, 6, 32), pad), pad)
    assert torch.isfinite(out).all() and all(torch.isfinite(l).all() for l in layers)


def test_target_layers_are_ffn_outputs_before_the_residual():
    enc = make_encoder()
    x = torch.randn(2, 7, 32)
    _, layers = enc(x, None)
    blk = enc.blocks[0]
    bias = alibi_bias(torch.arange(7), enc.alibi_slopes * enc.alibi_scale)
    h = x + blk.attn(blk.ln1(x), bias)
    assert torch.allclose(layers[0], blk.mlp(blk.ln2(h)), atol=1e-6)


def test_decoder_shape_and_padding_invariance():
    torch.manual_seed(0)
    dec = Decoder(TINY)
    x = torch.randn(1, 10, 32)
    a = dec(x, torch.zeros(1, 10, dtype=torch.bool))
    b = dec(torch.cat([x, torch.randn(1, 5, 32)], 1), torch.arange(15)[None] >= 10)
    assert a.shape == (1, 10, 32)
    assert torch.allclose(a, b[:, :10], atol=1e-5)


# ------------------------------------------------------------------------------------------------- targets
def naive_targets(layers, top_k, lengths, instance_norm, eps=1e-5):
    b_, n, d = layers[0].shape
    out = torch.zeros(b_, n, d, dtype=torch.float64)
    for b in range(b_):
        nv = lengths[b]
        avg = [[0.0] * d for _ in range(nv)]
        for layer in layers[-top_k:]:
            for c in range(d):
                vals = [float(layer[b, t, c]) for t in range(nv)]
                mu = sum(vals) / nv
                var = sum((v - mu) ** 2 for v in vals) / nv
                for t in range(nv):
                    avg[t][c] += (vals[t] - mu) / math.sqrt(var + eps) / top_k
        for c in range(d):
            vals = [avg[t][c] for t in range(nv)]
            if instance_norm:
                mu = sum(vals) / nv
                var = sum((v - mu) ** 2 for v in vals) / nv
                vals = [(v - mu) / math.sqrt(var + eps) for v in vals]
            for t in range(nv):
                out[b, t, c] = vals[t]
    return out


@pytest.mark.parametrize("instance_norm", [True, False])
def test_targets_match_a_naive_loop_with_padding(instance_norm):
    torch.manual_seed(0)
    lengths = [9, 5, 1]
    layers = [torch.randn(3, 9, 4) * (i + 1) + i for i in range(4)]
    pad = torch.arange(9)[None] >= torch.tensor(lengths)[:, None]
    for layer in layers:  # junk in the padding must not matter
        layer[pad] = 1e3
    got = build_targets(layers, 3, pad, instance_norm)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), naive_targets(layers, 3, lengths, instance_norm), atol=1e-4)
    assert (got[pad] == 0).all()


def test_instance_norm_is_safe_on_constant_and_bf16_input():
    x = torch.ones(2, 5, 3, dtype=torch.bfloat16)
    y = masked_instance_norm(x, torch.zeros(2, 5, dtype=torch.bool))
    assert y.dtype == torch.float32 and (y == 0).all()
    assert (masked_instance_norm(x, torch.ones(2, 5, dtype=torch.bool)) == 0).all()


# ------------------------------------------------------------------------------------------------- model
def test_forward_backward_gradients_and_teacher_isolation():
    model = tiny_model()
    wave, sr, lengths = clips()
    loss, logs = model(wave, sr, lengths, step=0, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for name in ["encoder.blocks.0.attn.qkv.weight", "encoder.alibi_scale", "decoder.out_proj.weight",
                 "mask_embedding", "token_norm.weight", "encoder.pos_conv.convs.0.weight"]:
        g = dict(model.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    frontend_proj = [p for n, p in model.named_parameters() if n.startswith("frontend.projection")]
    assert frontend_proj and all(p.grad is not None for p in frontend_proj)
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.model.parameters())
    # the teacher is invisible to optimizers and checkpoints of the module
    teacher_ids = {id(p) for p in model.teacher.model.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith("teacher") for k in model.state_dict())
    # logs
    assert logs["energy"] > 0 and logs["surprise"] > 0
    assert torch.allclose(logs["loss"], logs["regression"] + logs["energy"] + logs["surprise"])
    assert abs(float(logs["mask_ratio"]) - 0.5) < 0.02
    # 50 + 30 valid tokens; each of the 2 clones masks round(0.5 * n) of them
    assert float(logs["masked_tokens"]) == 2 * (25 + 15) and float(logs["tokens"]) == 80
    assert 0.5 < float(logs["target_var"]) < 1.5  # instance-normalised targets
    assert "frontend/captured_variance" in logs
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in logs.values())


def test_silent_and_padded_input_is_finite():
    model = tiny_model()
    wave, sr, lengths = clips()
    wave.zero_()
    loss, logs = model(wave, sr, lengths, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in logs.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_forward_is_finite_with_fp32_loss():
    model = tiny_model()
    wave, sr, lengths = clips()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = model(wave, sr, lengths, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(torch.isfinite(v) for v in logs.values())


def test_smooth_l1_and_span_masking_run():
    cfg = dataclasses.replace(TINY, loss="smooth_l1", mask_type="span", mask_prob=1.5, mask_length=2)
    model = tiny_model(cfg)
    loss, logs = model(*clips(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert abs(float(logs["mask_ratio"]) - 0.9375) < 0.03


def test_loss_is_data2vec2_scaled_mse_at_masked_tokens():
    """Recompute the regression term by hand from the same masks, teacher targets and student predictions."""
    model = tiny_model(dataclasses.replace(TINY, z_normalize=False))
    wave, sr, lengths = clips()
    loss, logs = model(wave, sr, lengths, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens, pad, _ = model.backbone.tokens(wave, sr, lengths)
        targets = model._teacher_targets(tokens, pad)
        m = TINY.clone_batch
        mask = compute_block_mask(2, tokens.shape[1], pad, TINY.mask_prob, TINY.mask_length, m,
                                  torch.Generator().manual_seed(3))
        padm = pad.repeat_interleave(m, 0)
        # data2vec 2.0's order: masked tokens := 0, then the conv positions, then drop the masked ones
        x = tokens.repeat_interleave(m, 0).masked_fill(mask[..., None], 0.0)
        vis, pos = drop_masked(model.encoder.add_position(x, padm), mask)
        enc, _ = model.encoder(vis, padm.gather(1, pos), pos)
        full = torch.where(mask[..., None], model.mask_embedding, torch.zeros_like(x))
        for r in range(full.shape[0]):
            full[r, pos[r]] = enc[r]
        pred = model.decoder(full, padm)
        total, count = 0.0, 0
        for r in range(full.shape[0]):
            for t in range(full.shape[1]):
                if mask[r, t] and not padm[r, t]:
                    total += float(((pred[r, t] - targets[r // m, t]) ** 2).sum()) / math.sqrt(32)
                    count += 1
    assert float(logs["regression"]) == pytest.approx(total / count, rel=1e-4)


def test_masked_tokens_cannot_leak_into_what_the_student_sees():
    """Changing only the masked tokens leaves every student input bit-identical (the conv positional encoding has a
    receptive field of several tokens, so it must not see the masked ones)."""
    model = tiny_model()
    wave, sr, lengths = clips()
    m = TINY.clone_batch
    with torch.no_grad():
        tokens, pad, _ = model.backbone.tokens(wave, sr, lengths)
        mask = compute_block_mask(2, tokens.shape[1], pad, TINY.mask_prob, TINY.mask_length, m,
                                  torch.Generator().manual_seed(5))
        x = tokens.repeat_interleave(m, 0)
        padm = pad.repeat_interleave(m, 0)
        other = torch.where(mask[..., None], 100.0 * torch.randn_like(x), x)  # only the masked tokens differ
        a = model.student_inputs(x, padm, mask)
        b = model.student_inputs(other, padm, mask)
        assert torch.equal(a, b)
        # ... and the visible tokens do matter (the test would pass trivially if the inputs were constant)
        vis = ~mask & ~padm
        changed = torch.where(vis[..., None], x + 1.0, x)
        assert not torch.equal(model.student_inputs(changed, padm, mask), a)


def test_forward_feeds_the_student_nothing_of_the_masked_tokens():
    """End to end through forward: tokens masked in every clone of a clip are replaced (a hook on the token norm)
    and the student encoder's inputs stay bit-identical, while the teacher's targets change."""
    model = tiny_model(dataclasses.replace(TINY, z_normalize=False)).eval()
    wave, sr, lengths = clips()
    m = TINY.clone_batch
    with torch.no_grad():
        tokens, pad, _ = model.backbone.tokens(wave, sr, lengths)
    mask = compute_block_mask(2, tokens.shape[1], pad, TINY.mask_prob, TINY.mask_length, m,
                              torch.Generator().manual_seed(2))
    everywhere = mask.view(2, m, -1).all(1)  # (B, N) masked in every clone
    assert everywhere.any()
    noise = 50.0 * torch.randn_like(tokens)

    def run(replace: bool):
        seen = []
        hooks = [model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))]
        if replace:
            hooks.append(model.token_norm.register_forward_hook(
                lambda mod, args, out: torch.where(everywhere[..., None], noise, out)))
        with torch.no_grad():
            _, logs = model(wave, sr, lengths, generator=torch.Generator().manual_seed(2))
        for h in hooks:
            h.remove()
        return seen[0], logs

    a, logs_a = run(False)
    b, logs_b = run(True)
    assert torch.equal(a, b)
    assert float(logs_a["target_var"]) != float(logs_b["target_var"])  # the change did reach the teacher


def test_layerdrop_draw_depends_on_the_step_only():
    """Two encoders on different global RNG streams (two ranks) drop the same blocks at the same step."""
    enc = make_encoder(depth=8, layerdrop=0.5).train()
    torch.manual_seed(1)
    first = [enc.layers_to_drop(s) for s in range(20)]
    torch.manual_seed(2)
    torch.rand(7)  # another rank has drawn other numbers
    second = [enc.layers_to_drop(s) for s in range(20)]
    assert first == second
    assert len({tuple(d) for d in first}) > 1 and any(any(d) for d in first)  # it does drop, and varies by step
    assert enc.eval().layers_to_drop(3) == [False] * 8


def test_negative_alibi_scale_is_clamped_to_zero():
    enc = make_encoder().eval()
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        enc.alibi_scale.fill_(-3.0)
        neg, _ = enc(x, None)
        enc.alibi_scale.fill_(0.0)
        zero, _ = enc(x, None)
        enc.alibi_scale.fill_(1.0)
        one, _ = enc(x, None)
    assert torch.equal(neg, zero) and not torch.allclose(one, zero)


def test_the_frontend_weights_its_coverage_losses():
    """frontend.heterodyne.energy_weight / surprise_weight scale the terms the model adds and logs; the model
    itself knows no weights."""
    assert not any("lambda" in f.name or "weight" in f.name for f in dataclasses.fields(ModelConfig))
    runs = {}
    for weights in ((1.0, 1.0), (2.0, 0.5), (0.0, 0.0)):
        h = HeterodyneConfig(energy_weight=weights[0], surprise_weight=weights[1])
        model = tiny_model(frontend_cfg=FrontendConfig(dim=32, heterodyne=h))
        runs[weights] = model(*clips(), generator=torch.Generator().manual_seed(0))[1]
    one, weighted, off = runs[(1.0, 1.0)], runs[(2.0, 0.5)], runs[(0.0, 0.0)]
    assert torch.allclose(weighted["energy"], 2.0 * one["energy"])
    assert torch.allclose(weighted["surprise"], 0.5 * one["surprise"])
    assert torch.equal(weighted["regression"], one["regression"])
    assert torch.allclose(weighted["loss"], one["regression"] + 2.0 * one["energy"] + 0.5 * one["surprise"])
    assert float(off["energy"]) == 0.0 and float(off["surprise"]) == 0.0 and torch.equal(off["loss"], off["regression"])


def test_conv_frontend_without_aux_losses():
    fe = FrontendConfig(name="conv", dim=24, conv=ConvExtractorConfig(layers=((16, 10, 5), (16, 4, 4), (16, 4, 4))))
    model = tiny_model(frontend_cfg=fe)  # dim 24 != 32: the token projection is a Linear
    loss, logs = model(*clips(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(logs["energy"]) == 0.0 and float(logs["surprise"]) == 0.0
    assert torch.allclose(loss, logs["regression"])


def test_ema_step_follows_the_schedule_exactly():
    cfg = dataclasses.replace(TINY, ema_decay=0.5, ema_end_decay=1.0, ema_anneal_end_step=100)
    model = tiny_model(cfg)
    t0 = model.teacher.model.blocks[0].mlp.fc.weight.clone()
    with torch.no_grad():
        model.encoder.blocks[0].mlp.fc.weight.add_(1.0)
    s = model.encoder.blocks[0].mlp.fc.weight.detach().clone()
    assert model.ema_step(50) == 0.75
    assert torch.allclose(model.teacher.model.blocks[0].mlp.fc.weight, 0.75 * t0 + 0.25 * s, atol=1e-7)
    before = model.teacher.model.blocks[0].mlp.fc.weight.clone()
    assert model.ema_step(100) == 1.0
    assert torch.equal(model.teacher.model.blocks[0].mlp.fc.weight, before)


def test_teacher_state_round_trip_and_dtype_survives_casts():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    b.load_teacher_state_dict(a.teacher_state_dict())
    for (na, pa), (nb, pb) in zip(a.teacher.model.named_parameters(), b.teacher.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    b.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in b.encoder.parameters())
    assert all(p.dtype == torch.float32 for p in b.teacher.model.parameters())
    b.reset_teacher()
    assert torch.equal(b.teacher.model.blocks[0].attn.qkv.weight, b.encoder.blocks[0].attn.qkv.weight.float())


def test_param_groups_decay_only_matrices():
    model = tiny_model()
    groups = model.param_groups(0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() <= 1 for p in groups[1]["params"])
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.mask_embedding) in no_decay and id(model.encoder.alibi_scale) in no_decay
    assert id(model.encoder.blocks[0].ln1.weight) in no_decay and id(model.encoder.blocks[0].mlp.fc.bias) in no_decay


def test_encode_for_fine_tuning():
    model = tiny_model().eval()
    final, layers, pad = model.encode(*clips())
    assert final.shape == (2, 50, 32) and len(layers) == TINY.depth and pad.shape == (2, 50)
    assert pad[0].sum() == 0 and pad[1].sum() == 20  # 0.6 s at 50 tokens/s


def test_collapse_guard_raises_on_constant_targets_only_after_warmup():
    model = tiny_model()
    with torch.no_grad():  # a teacher whose blocks output nothing: every target layer is constant (zero)
        for p in model.teacher.model.parameters():
            p.zero_()
    loss, logs = model(*clips(), step=0, generator=torch.Generator().manual_seed(0))
    assert float(logs["target_var"]) == 0.0 and torch.isfinite(loss)
    model.check_collapse(logs, step=TINY.collapse_check_after - 1)  # still warming up: no raise
    with pytest.raises(TrainingCollapsed, match=r"target_var = 0 < model.collapse_min_target_var"):
        model.check_collapse(logs, step=TINY.collapse_check_after)
    healthy = {"target_var": torch.tensor(1.0), "pred_var": torch.tensor(0.5)}
    model.check_collapse(healthy, step=10 ** 6)
    with pytest.raises(TrainingCollapsed, match="pred_var"):
        model.check_collapse({"target_var": torch.tensor(1.0), "pred_var": torch.tensor(1e-4)}, step=10 ** 6)


def test_overfits_two_clips_with_a_frozen_teacher():
    cfg = dataclasses.replace(TINY, ema_decay=1.0, ema_end_decay=1.0)
    frontend = FrontendConfig(dim=32, heterodyne=HeterodyneConfig(num_bands=2))
    model = tiny_model(cfg, frontend)
    wave, sr, lengths = clips(seconds=0.5)
    teacher_before = model.teacher.model.blocks[0].attn.qkv.weight.clone()
    opt = torch.optim.Adam(model.param_groups(0.0), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    history = []
    for step in range(120):
        loss, logs = model(wave, sr, lengths, step=step, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema_step(step)
        history.append(float(logs["regression"]))
    # The trajectory is chaotic: float sums in another order (thread count, AVX-512 vs AVX2 kernels) give another
    # path after a few dozen Adam steps, so the test asks for a relative fall with room for that spread, averaged
    # over the last 20 steps (each step draws new random masks, so single steps are noisy). Measured last/first:
    # 0.40-0.43 for model seeds 0-2 at 1 and 2 threads on an AMD EPYC (AVX-512); the Xeon (2 threads) of issue 12 reached
    # 0.53 (last 5, before the masking fix). A student that learns nothing stays at ~1.0.
    first, last = sum(history[:5]) / 5, sum(history[-20:]) / 20
    assert last < 0.7 * first, (first, last)
    assert torch.equal(model.teacher.model.blocks[0].attn.qkv.weight, teacher_before)


# ------------------------------------------------------------------------------------------------- z-norm
def test_normalize_wave_is_safe_on_silence_and_ignores_padding():
    wave = torch.zeros(3, 100)
    wave[1, :60] = 3.0 + 2.0 * torch.randn(60)
    wave[2, :100] = 1e-9 * torch.randn(100)  # near silence stays near silence (eps is a noise floor)
    lengths = torch.tensor([80, 60, 100])
    out = normalize_wave(wave, lengths)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, 60:] == 0).all()
    assert abs(float(out[1, :60].mean())) < 1e-5 and abs(float(out[1, :60].var(correction=0)) - 1) < 1e-3
    assert out[2].abs().max() < 1e-3
    longer = torch.cat([wave, 5 * torch.ones(3, 20)], dim=1)  # junk beyond the lengths
    assert torch.allclose(normalize_wave(longer, lengths)[:, :100], out)


# ------------------------------------------------------------------------------------------------- mixup
def test_a_weighting_reference_values():
    got = a_weighting_db(torch.tensor([100.0, 1000.0, 10000.0]))
    assert torch.allclose(got, torch.tensor([-19.1, 0.0, -2.5]), atol=0.1)  # IEC 61672 table


def test_a_weighted_level_of_a_1khz_sine_at_any_rate_and_padding():
    levels = []
    for sr, n_valid, t_total in [(16000, 16000, 16000), (8000, 4000, 8000), (48000, 24000, 30000)]:
        t = torch.arange(n_valid) / sr
        wave = torch.zeros(1, t_total)
        wave[0, :n_valid] = torch.sin(2 * math.pi * 1000 * t)
        levels.append(float(a_weighted_level_db(wave, torch.tensor([n_valid]), torch.tensor([sr]))[0]))
    assert levels == pytest.approx([10 * math.log10(0.5)] * 3, abs=0.05)  # mean power 1/2, 0 dB weight at 1 kHz
    assert float(a_weighted_level_db(torch.zeros(1, 50), torch.tensor([50]), torch.tensor([8000]))[0]) == -100.0


def test_bc_mix_formula():
    x1, x2 = torch.randn(2, 30), torch.randn(2, 30)
    g = torch.tensor([-10.0, 5.0])
    assert torch.equal(bc_mix(x1, x2, g, g + 7, torch.ones(2)), x1)  # r = 1 -> x1 exactly
    half = bc_mix(x1, x2, torch.zeros(2), torch.zeros(2), torch.full((2,), 0.5))
    assert torch.allclose(half, (x1 + x2) / math.sqrt(2))
    # x2 20 dB louder at r = 0.5: x1 gets weight p = 1 / (1 + 10^-1)
    p = 1 / (1 + 0.1)
    got = bc_mix(x1, x2, torch.zeros(2), torch.full((2,), 20.0), torch.full((2,), 0.5))
    assert torch.allclose(got, (p * x1 + (1 - p) * x2) / math.sqrt(p * p + (1 - p) ** 2), atol=1e-6)


def test_bc_mixup_pairs_same_rates_and_is_safe_on_silence():
    gen = torch.Generator().manual_seed(0)
    sr = torch.tensor([8000, 16000, 8000, 8000, 16000, 22050])
    partner = same_rate_partners(sr, gen)
    assert (sr[partner] == sr).all()
    assert (partner[:5] != torch.arange(5)).all() and partner[5] == 5  # the lone 22.05 kHz clip keeps itself
    wave = torch.randn(6, 400)
    wave[3] = 0.0  # silence
    lengths = torch.tensor([400, 300, 200, 400, 100, 400])
    wave[torch.arange(400)[None] >= lengths[:, None]] = 0.0
    mixed, out_len, partner, r = bc_mixup(wave, lengths, sr, gen)
    assert torch.isfinite(mixed).all() and torch.equal(out_len, lengths)
    assert (sr[partner] == sr).all()
    assert ((r >= 0.5) & (r <= 1.0)).all() and r[5] == 1.0
    assert torch.equal(mixed[5], wave[5])  # no partner: unchanged
    assert (mixed[torch.arange(400)[None] >= lengths[:, None]] == 0).all()  # padding stays zero
    assert not torch.allclose(mixed[0], wave[0])
    silent = torch.zeros(2, 100)
    m2, *_ = bc_mixup(silent, torch.tensor([100, 100]), torch.tensor([8000, 8000]), gen)
    assert torch.isfinite(m2).all() and (m2 == 0).all()


# ------------------------------------------------------------------------------------------------- host syncs
class _DataDependentOps(TorchDispatchMode):
    """Records the ops that need a value on the host (``.item()``, ``float()``, ``bool()``, ``nonzero``): on a GPU
    each is a device -> host sync. Only call sites in the files named are recorded."""

    SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.equal.default"}

    def __init__(self, files):
        super().__init__()
        self.files = files
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.SYNCING:
            # the innermost frame of this project's code: the op's own call site, not a caller up the stack
            site = next((f for f in reversed(traceback.extract_stack()) if "/a2v_het/" in f.filename), None)
            if site is not None and site.filename.endswith(self.files):
                self.found.append(f"{func} at {Path(site.filename).name}:{site.lineno}")
        return func(*args, **(kwargs or {}))


def test_student_teacher_and_loss_make_a_single_host_sync_per_step():
    """The forward after the frontend reads one value on the host: the CPU copy of the padding mask (the masks are
    drawn on the CPU from it). The loss, the log statistics, the visible positions, the attention bias and layerdrop
    must not add any (on a GPU each would stall the step)."""
    model = tiny_model(dataclasses.replace(TINY, layerdrop=0.5)).train()
    wave, sr, lengths = clips()
    mode = _DataDependentOps(("model/data2vec.py", "model/encoder.py", "model/decoder.py", "model/targets.py"))
    with mode:
        model(wave, sr, lengths, step=3, generator=torch.Generator().manual_seed(0))
    assert len(mode.found) == 1 and "data2vec.py" in mode.found[0], mode.found
