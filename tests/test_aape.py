"""AaPE-style adaptive stem (frontend.name: aape): the SBLU kernel builder and the frame windows against per-cell numpy
loops, modulation selectivity above the patch-rate Nyquist, gradients from the tokens through the kernels into the
Lambda encoder (and a few steps of them moving omega onto a modulation), token counts, padding invariance, rate
consistency, finite values on degenerate input, stats, build and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError, load_config
from a2v_het.frontend import AaPEConfig, FrontendConfig, build_frontend
from a2v_het.frontend.aape import (
    AaPEFrontend,
    frame_windows,
    sblu_features,
    sblu_kernels,
    sblu_offsets_s,
    sblu_response,
)
from a2v_het.frontend.logmel_patch import LogMelPatches
from a2v_het.train.config import PretrainConfig
from signals import noise_and_tone as _noise_and_tone

TOKEN_RATE = 50.0
FRAME_RATE = 200.0  # patch_frames (4) x token_rate
P, H = 4, 8  # default patch_frames and round(kernel_half_width_s x frame_rate)


def _fe(dim: int = 32, seed: int = 0, **kw) -> AaPEFrontend:
    torch.manual_seed(seed)
    return build_frontend(FrontendConfig(name="aape", dim=dim, aape=AaPEConfig(**kw))).eval()



def _pulse_train(n: int, rate: int, pulse_hz: float = 40.0) -> torch.Tensor:
    """A 3 kHz tone gated on and off at ``pulse_hz`` (above the 25 Hz Nyquist of the token rate)."""
    t = torch.arange(n, dtype=torch.float64) / rate
    gate = 0.5 * (1 + torch.cos(2 * math.pi * pulse_hz * t))
    return (0.3 * torch.sin(2 * math.pi * 3000.0 * t) * gate + 0.01 * torch.sin(2 * math.pi * 500.0 * t)).float()


def test_build_frontend_reuses_the_logmel_patch_body():
    fe = build_frontend(FrontendConfig(name="aape", dim=16))
    assert isinstance(fe, AaPEFrontend) and isinstance(fe.patches, LogMelPatches)
    assert fe.patches.cfg == AaPEConfig().patch_config()
    assert fe.frame_rate == FRAME_RATE and fe.half_width == H
    assert fe.lambda_encoder.omega_max_hz == FRAME_RATE / 2


def test_sblu_kernels_match_a_per_patch_per_subband_numpy_loop():
    rng = np.random.default_rng(1)
    alpha = rng.uniform(5, 200, (2, 3, 4))  # (B, S, N) in 1/s
    omega = rng.uniform(0, 100, (2, 3, 4))  # Hz
    offsets = sblu_offsets_s(P, H, FRAME_RATE)
    t = (np.arange(P + 2 * H) - H - (P - 1) / 2) / FRAME_RATE
    np.testing.assert_allclose(offsets.numpy(), t, atol=1e-7)  # symmetric about the patch centre
    real, imag = sblu_kernels(torch.tensor(alpha), torch.tensor(omega), torch.tensor(t))
    assert real.shape == (2, 3, 4, P + 2 * H)
    for b in range(2):
        for s in range(3):
            for n in range(4):
                w = np.exp(-alpha[b, s, n] * np.abs(t))
                w = w / w.sum()
                z = np.exp(2j * np.pi * omega[b, s, n] * t)
                k = 2 * w * (z - (w * z).sum())
                np.testing.assert_allclose(real[b, s, n].numpy(), k.real, atol=1e-9)
                np.testing.assert_allclose(imag[b, s, n].numpy(), k.imag, atol=1e-9)
                assert abs(k.sum()) < 1e-12  # DC-blocked
    r32, _ = sblu_kernels(torch.tensor(alpha).float(), torch.tensor(omega).float(), offsets)
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), real, atol=1e-5, rtol=0)


def test_frame_windows_cut_each_tokens_frames_around_the_patch():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 37))  # 37 frames: the last patch is partial
    n_tok = 10
    got = frame_windows(torch.tensor(x), P, H, n_tok).numpy()
    assert got.shape == (2, 3, n_tok, P + 2 * H)
    for n in range(n_tok):
        for j in range(P + 2 * H):
            f = n * P - H + j
            want = x[:, :, f] if 0 <= f < 37 else 0.0
            np.testing.assert_array_equal(got[:, :, n, j], want)


def _response_magnitude(traj: torch.Tensor, alpha: float, omegas: torch.Tensor) -> torch.Tensor:
    """|r| of one subband (every channel = ``traj`` (Nf,)) for kernels at ``omegas``, averaged over the interior
    tokens (whose windows lie inside the trajectory)."""
    n_tok = traj.numel() // P
    win = frame_windows(traj.double()[None, None].expand(1, 4, -1), P, H, n_tok)[:, None]  # (1, 1, C, N, J)
    k = len(omegas)
    real, imag = sblu_kernels(torch.full((1, k, n_tok), alpha, dtype=torch.float64),
                              omegas.double()[None, :, None].expand(1, k, n_tok), sblu_offsets_s(P, H, FRAME_RATE))
    re, im = sblu_response(win.expand(1, k, -1, -1, -1), real, imag)  # (1, K, C, N)
    interior = slice(H // P + 1, n_tok - H // P - 1)
    return torch.sqrt(re**2 + im**2)[0, :, :, interior].mean((1, 2))


@pytest.mark.parametrize("omega0", [12.0, 35.0, 60.0, 85.0])
def test_sblu_response_peaks_at_the_trajectorys_modulation_frequency(omega0):
    """A subband trajectory 1.5 + 0.8 cos(2 pi omega0 t + 0.3) sampled at 200 frames/s. 35-85 Hz lie above the
    25 Hz Nyquist of the 50 Hz patch rate (they alias in the patch tokens); the kernel with omega = omega0 answers
    most, with |r| = the modulation amplitude 0.8."""
    t = torch.arange(200, dtype=torch.float64) / FRAME_RATE
    traj = 1.5 + 0.8 * torch.cos(2 * math.pi * omega0 * t + 0.3)
    omegas = torch.arange(0.0, 100.5, 1.0)
    mag = _response_magnitude(traj, 10.0, omegas)
    assert abs(float(omegas[mag.argmax()]) - omega0) <= 1.0, float(omegas[mag.argmax()])
    assert abs(float(mag.max()) - 0.8) < 0.08
    far = (omegas - omega0).abs() > 15
    assert float(mag[far].max()) < 0.35 * float(mag.max())


def test_sblu_ignores_the_level_and_separates_what_the_patch_rate_aliases():
    """A constant level gives no response at any omega (the kernels sum to 0); 40 and 60 Hz (both alias to 10 Hz
    at 50 patches/s) drive the 60 Hz kernel in a ratio of at least 4."""
    t = torch.arange(200, dtype=torch.float64) / FRAME_RATE
    omegas = torch.tensor([0.0, 5.0, 25.0, 60.0, 100.0])
    assert float(_response_magnitude(torch.full_like(t, 3.0), 10.0, omegas).max()) < 1e-9
    at60 = torch.tensor([60.0])
    m60 = _response_magnitude(torch.cos(2 * math.pi * 60.0 * t), 10.0, at60)
    m40 = _response_magnitude(torch.cos(2 * math.pi * 40.0 * t), 10.0, at60)
    assert float(m60) > 4 * float(m40)


def test_sblu_features_are_differentiable_in_alpha_and_omega():
    torch.manual_seed(3)
    win = torch.randn(1, 2, 3, 5, P + 2 * H, dtype=torch.float64)  # (B, S, C, N, J)
    offsets = sblu_offsets_s(P, H, FRAME_RATE).double()
    alpha = torch.empty(1, 2, 5, dtype=torch.float64).uniform_(5, 200).requires_grad_()
    omega = torch.empty(1, 2, 5, dtype=torch.float64).uniform_(5, 95).requires_grad_()

    def f(a, w):
        return sblu_features(*sblu_response(win, *sblu_kernels(a, w, offsets)))

    assert torch.autograd.gradcheck(f, (alpha, omega), atol=1e-6)


def test_gradients_from_the_tokens_reach_every_lambda_encoder_weight():
    fe = _fe(dim=16).train()
    rate, n = 32000, 32000
    wave = torch.stack([_pulse_train(n, rate), _noise_and_tone(n, rate, 1)])
    out = fe(wave, torch.tensor([rate, 16000]), torch.tensor([n, 20000]))
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    # The Lambda encoder's only way into the tokens is through alpha and omega in the SBLU kernels.
    for name, prm in fe.lambda_encoder.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
        assert prm.grad.abs().sum() > 0, name


def test_a_few_steps_through_the_kernels_move_omega_onto_the_modulation():
    """Train only the Lambda encoder to maximise the SBLU magnitude of a subband modulated at 60 Hz: the gradient
    through omega (init about 50 Hz) pulls the predicted omega to 60 Hz. alpha is pinned to 10/s (a 100 ms window,
    sharp in frequency) so that the magnitude has its one peak there."""
    fe = _fe(alpha_min_per_s=10.0, alpha_max_per_s=10.0)
    t = torch.arange(160, dtype=torch.float32) / FRAME_RATE  # 0.8 s, 40 tokens
    level = torch.zeros(1, 64, 160)
    level[0, 8:16] = 2.0 + torch.cos(2 * math.pi * 60.0 * t)  # subband 1
    valid = torch.ones(1, 40, dtype=torch.bool)
    opt = torch.optim.Adam(fe.lambda_encoder.parameters(), lr=1e-2)
    for _ in range(40):
        alpha, omega = fe.lambda_encoder(level, valid)
        loss = -fe.sblu(level, alpha, omega).reshape(1, 40, 8, 3)[0, 3:-3, 1, 0].mean()  # log |r|, subband 1
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, omega = fe.lambda_encoder(level, valid)
    assert abs(float(omega[0, 1, 3:-3].detach().mean()) - 60.0) < 3.0, omega[0, 1]


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000, 96000])
def test_token_count_is_ceil_duration_times_token_rate(rate):
    fe = _fe()
    for seconds in (0.013, 0.37, 1.2345):
        n = int(round(seconds * rate))
        with torch.no_grad():
            out = fe(_noise_and_tone(n, rate)[None], torch.tensor([rate]), torch.tensor([n]))
        want = math.ceil(n * TOKEN_RATE / rate - 1e-9)
        assert out.tokens.shape == (1, want, 32), (rate, seconds)
        assert fe.num_tokens(seconds, rate) == want
        assert not out.padding_mask.any() and torch.isfinite(out.tokens).all()
        assert fe.last_omega.shape == (1, 8, want)


def test_valid_tokens_and_kernel_parameters_do_not_depend_on_batch_padding():
    fe = _fe()
    short_n, long_n = int(0.83 * 16000), int(1.5 * 48000)
    short, long = _pulse_train(short_n, 16000), _noise_and_tone(long_n, 48000, 2)
    with torch.no_grad():
        alone = fe(short[None], torch.tensor([16000]), torch.tensor([short_n]))
        a_alone, w_alone = fe.last_alpha, fe.last_omega
        wave = torch.zeros(2, long_n + 500)
        wave[0, :long_n] = long
        wave[1] = 0.5 * torch.randn(long_n + 500)  # junk past the short clip's length must be ignored
        wave[1, :short_n] = short
        both = fe(wave, torch.tensor([48000, 16000]), torch.tensor([long_n, short_n]))
    n = alone.tokens.shape[1]
    assert n == 42 and int((~both.padding_mask[1]).sum()) == n and both.padding_mask[1, n:].all()
    torch.testing.assert_close(fe.last_omega[1, :, :n], w_alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fe.last_alpha[1, :, :n], a_alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both.tokens[1, :n], alone.tokens[0], atol=1e-4, rtol=1e-4)


def test_band_limited_content_gives_the_same_tokens_at_16_and_48_khz():
    """Partials and a 40 Hz gate below 3.1 kHz with raised-cosine fades: the same continuous signal at both rates."""
    fe = _fe()
    got = {}
    for rate in (16000, 48000):
        n = rate
        t = torch.arange(n, dtype=torch.float64) / rate
        fade = torch.sin(0.5 * math.pi * torch.clamp(torch.minimum(t, 1.0 - t) / 0.05, max=1.0)) ** 2
        w = (_pulse_train(n, rate).double() * fade).float()
        with torch.no_grad():
            got[rate] = fe(w[None], torch.tensor([rate]), torch.tensor([n])).tokens
    torch.testing.assert_close(got[48000], got[16000], atol=1e-3, rtol=0)


def test_predicted_parameters_lie_in_their_physical_ranges_and_stats_are_scalars():
    fe = _fe(alpha_min_per_s=8.0, alpha_max_per_s=120.0)
    rates = torch.tensor([8000, 48000])
    lengths = torch.tensor([8000, 30000])
    wave = torch.zeros(2, 30000)
    wave[0, :8000] = _pulse_train(8000, 8000)
    wave[1] = _noise_and_tone(30000, 48000, 4)
    with torch.no_grad():
        out = fe(wave, rates, lengths)
    assert fe.last_alpha.min() >= 8.0 and fe.last_alpha.max() <= 120.0
    assert fe.last_omega.min() >= 0.0 and fe.last_omega.max() <= FRAME_RATE / 2
    assert set(out.stats) == {"aape_alpha_mean_per_s", "aape_omega_mean_hz", "aape_omega_std_hz"}
    for v in out.stats.values():
        assert v.dim() == 0 and torch.isfinite(v) and not v.requires_grad
    assert 8.0 <= float(out.stats["aape_alpha_mean_per_s"]) <= 120.0
    assert 0.0 <= float(out.stats["aape_omega_mean_hz"]) <= FRAME_RATE / 2
    # The means cover valid cells only: clip 0 (8 kHz, 0.5 s of 1.0) has 25 tokens and the subbands below 4 kHz.
    sub_valid = fe.patches.band_valid(rates).reshape(2, 8, 8).any(-1)
    cells = sub_valid[:, :, None] & ~out.padding_mask[:, None, :]
    want = fe.last_omega[cells].mean()
    torch.testing.assert_close(out.stats["aape_omega_mean_hz"], want)


def test_silence_dc_clipping_and_bf16_stay_finite_with_finite_gradients():
    fe = _fe().train()
    rate, n = 16000, 16000
    t = torch.arange(n) / rate
    wave = torch.stack([torch.zeros(n), torch.full((n,), 0.7), torch.sign(torch.sin(2 * math.pi * 440.0 * t)),
                        _pulse_train(n, rate)])
    rates, lengths = torch.full((4,), rate), torch.full((4,), n)
    for bf16 in (False, True):
        fe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fe(wave, rates, lengths)
            loss = out.tokens.float().square().mean() + out.tokens.float()[:, :, 0].mean()
        assert torch.isfinite(out.tokens.float()).all(), bf16
        assert all(torch.isfinite(v) for v in out.stats.values()), bf16
        assert fe.last_alpha.dtype == torch.float32 and fe.last_omega.dtype == torch.float32  # fp32 under autocast
        loss.backward()
        for name, prm in fe.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), (name, bf16)


def test_recipe_overrides_reach_the_frontend():
    cfg = load_config(PretrainConfig, None, ["frontend.name=aape", "frontend.dim=16", "frontend.aape.patch_frames=2",
                                             "frontend.aape.kernel_half_width_s=0.02"])
    fe = build_frontend(cfg.frontend)
    assert fe.frame_rate == 100.0 and fe.half_width == 2 and fe.lambda_encoder.omega_max_hz == 50.0
    with torch.no_grad():
        out = fe(_noise_and_tone(8000, 16000)[None], torch.tensor([16000]), torch.tensor([8000]))
    assert out.tokens.shape == (1, 25, 16)
    assert fe.last_omega.max() <= 50.0


@pytest.mark.parametrize("kw,key", [
    ({"patch_frames": 1}, "frontend.aape.patch_frames"),
    ({"patch_mels": 5}, "frontend.aape.patch_mels"),
    ({"silence_db": 3.0}, "frontend.aape.silence_db"),
    ({"kernel_half_width_s": -0.01}, "frontend.aape.kernel_half_width_s"),
    ({"alpha_min_per_s": 0.0}, "frontend.aape.alpha_min_per_s"),
    ({"alpha_min_per_s": 300.0}, "frontend.aape.alpha_max_per_s"),
    ({"lambda_hidden": 0}, "frontend.aape.lambda_hidden"),
])
def test_config_errors_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="aape", aape=AaPEConfig(**kw)).validate()


def test_config_errors_from_overrides_name_the_key():
    with pytest.raises(ConfigError, match=r"frontend\.aape\.alpha_max_per_s"):
        load_config(PretrainConfig, None, ["frontend.name=aape", "frontend.aape.alpha_max_per_s=1"])
