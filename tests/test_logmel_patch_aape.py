"""Log-mel patch embedding and the AaPE-style adaptive stem: the patch embedding against an explicit
reshape + matmul, the per-clip standardisation against numpy, the SBLU kernels against a per-cell numpy loop and
their modulation selectivity, gradients through the predicted kernel parameters, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError
from a2v_het.frontend import AaPEConfig, FrontendConfig, LogMelPatchConfig, build_frontend
from a2v_het.frontend.aape import AaPEFrontend, sblu_kernels, sblu_offsets_s, subband_windows
from a2v_het.frontend.logmel_patch import LogMelPatchFrontend, patch_embed_reference, standardized_log_mel


def test_patch_embedding_is_reshape_and_matmul():
    torch.manual_seed(0)
    fe = LogMelPatchFrontend(FrontendConfig(name="logmel_patch", dim=16))
    x = torch.randn(2, 64, 40)
    conv = fe.patches.embed(x[:, None])
    ref = patch_embed_reference(x, fe.patches.embed.weight, fe.patches.embed.bias)
    torch.testing.assert_close(conv, ref, atol=1e-5, rtol=1e-5)


def test_standardisation_matches_numpy_over_valid_cells_only():
    rng = np.random.default_rng(0)
    x = rng.normal(-8, 2, (2, 6, 10)).astype(np.float32)
    x[1, 4:, :] = math.log(1e-10)  # bands above the second clip's Nyquist hold log(eps)
    n_frames = np.array([10, 7])
    band_valid = np.array([[True] * 6, [True] * 4 + [False] * 2])
    out = standardized_log_mel(torch.from_numpy(x), torch.from_numpy(n_frames), torch.from_numpy(band_valid))
    for b in range(2):
        cells = x[b][band_valid[b]][:, : n_frames[b]]
        want = (cells - cells.mean()) / np.sqrt(cells.var() + 1e-5)
        np.testing.assert_allclose(out[b].numpy()[band_valid[b]][:, : n_frames[b]], want, atol=1e-5)
    assert torch.all(out[1, 4:] == 0) and torch.all(out[1, :, 7:] == 0)


def test_sblu_kernels_match_a_per_cell_numpy_loop():
    rng = np.random.default_rng(1)
    decay = rng.uniform(5, 200, (2, 3, 4))
    omega = rng.uniform(0, 100, (2, 3, 4))
    offsets = sblu_offsets_s(4, 8, 200.0)
    assert offsets.shape == (20,) and math.isclose(float(offsets.sum()), 0.0, abs_tol=1e-6)  # centred
    real, imag = sblu_kernels(torch.tensor(decay), torch.tensor(omega), offsets)
    t = offsets.numpy().astype(np.float64)
    for idx in np.ndindex(decay.shape):
        w = np.exp(-decay[idx] * np.abs(t))
        w /= w.sum()
        np.testing.assert_allclose(real[idx].numpy(), w * np.cos(2 * np.pi * omega[idx] * t), atol=1e-6)
        np.testing.assert_allclose(imag[idx].numpy(), w * np.sin(2 * np.pi * omega[idx] * t), atol=1e-6)


def test_sblu_response_peaks_at_the_modulation_frequency():
    """A subband trajectory modulated at 60 Hz (above the 25 Hz Nyquist of the 50 Hz patch rate: it aliases in
    the patch tokens) gives the largest |response| for the kernel with omega = 60 Hz."""
    frame_rate, pf, hw = 200.0, 4, 8
    n_tok = 10
    t = torch.arange(n_tok * pf) / frame_rate
    x = torch.cos(2 * math.pi * 60.0 * t)[None, None, :].expand(1, 8, -1)  # (B, M, Nf), 8 mels = 1 subband
    win = subband_windows(x, 8, pf, hw, n_tok)  # (1, 1, N, J)
    omegas = torch.linspace(0, 100, 51)
    offsets = sblu_offsets_s(pf, hw, frame_rate)
    real, imag = sblu_kernels(torch.full((51,), 20.0), omegas, offsets)  # (51, J)
    inner = win[0, 0, 2:-2]  # windows fully inside the signal
    mag = torch.sqrt((inner[:, None, :] * real).sum(-1) ** 2 + (inner[:, None, :] * imag).sum(-1) ** 2).mean(0)
    assert abs(float(omegas[mag.argmax()]) - 60.0) <= 2.0, omegas[mag.argmax()]


def test_subband_windows_cut_the_right_frames():
    x = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(2, 8, 12)
    w = subband_windows(x, 4, 4, 2, 3)  # 2 subbands, 3 tokens, windows of 8 frames
    sub = x.reshape(2, 2, 4, 12).mean(2)
    assert w.shape == (2, 2, 3, 8)
    torch.testing.assert_close(w[:, :, 1], sub[:, :, 2:10])  # token 1: frames 4-2 .. 4+3+2
    assert torch.all(w[:, :, 0, :2] == 0) and torch.all(w[:, :, 2, -2:] == 0)  # zeros outside the clip


def test_aape_gradients_reach_the_lambda_encoder_and_stats_are_physical():
    torch.manual_seed(0)
    fe = build_frontend(FrontendConfig(name="aape", dim=16))
    assert isinstance(fe, AaPEFrontend)
    x = 0.05 * torch.randn(2, 32000)
    t = torch.arange(32000) / 32000
    x[0] += 0.3 * torch.sin(2 * math.pi * 3000 * t) * (torch.sin(2 * math.pi * 40 * t) > 0)  # 40 Hz pulse train
    out = fe(x, torch.tensor([32000, 16000]), torch.tensor([32000, 20000]))
    out.tokens.square().mean().backward()
    for p in fe.lambda_encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert out.stats["aape_omega_mean_hz"].dim() == 0
    assert 0 <= float(out.stats["aape_omega_mean_hz"]) <= 100
    assert 5 <= float(out.stats["aape_decay_mean_per_s"]) <= 200


@pytest.mark.parametrize("cfg,key", [
    (FrontendConfig(name="logmel_patch", logmel_patch=LogMelPatchConfig(patch_mels=5)), "frontend.logmel_patch.n_mels"),
    (FrontendConfig(name="logmel_patch", logmel_patch=LogMelPatchConfig(channels=0)), "frontend.logmel_patch.n_mels"),
    (FrontendConfig(name="aape", aape=AaPEConfig(decay_min_per_s=300.0)), "frontend.aape.decay_min_per_s"),
    (FrontendConfig(name="aape", aape=AaPEConfig(lambda_hidden=0)), "frontend.aape.lambda_hidden"),
])
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()
