"""Soft Cauchy masks and coverage losses against hand-written numpy versions of the seed's formulas."""

import numpy as np
import torch

from a2v_het.frontend.band_masks import cauchy_band_masks, passband_union, soft_or
from a2v_het.frontend.coverage_losses import (
    captured_fractions,
    energy_variance_loss,
    surprise_loss,
    temporal_variance,
)

EPS = 1e-6


def np_mask(freqs, starts, width, gamma):
    out = []
    for f_k in starts:
        d = np.where(freqs < f_k, f_k - freqs, np.where(freqs > f_k + width, freqs - f_k - width, 0.0))
        out.append(1 / (1 + (d / gamma) ** 2))
    m_k = np.array(out)
    return m_k, 1 - np.prod(1 - m_k, axis=0)


def np_losses(power, mask):
    """The seed's formulas, literally (after dividing sigma^2 by its sum, as the module does)."""
    var = power.var(axis=1)
    var = var / var.sum()
    l_energy = np.log(var.sum() + EPS) - np.log((mask * var).sum() + EPS)
    p = var / var.sum()
    s = -p * np.log(p + EPS)
    l_surprise = np.log(s.sum() + EPS) - np.log((mask * s).sum() + EPS)
    return l_energy, l_surprise


def test_cauchy_masks_and_soft_or_match_numpy():
    freqs = np.arange(0, 24000, 50.0)
    starts = np.array([1000.0, 7300.0, 15020.0])
    m_k, m = np_mask(freqs, starts, 2000.0, 200.0)
    got_k = cauchy_band_masks(torch.tensor(freqs), torch.tensor(starts)[None], 2000.0, 200.0)[0]
    np.testing.assert_allclose(got_k.numpy(), m_k, rtol=1e-6)
    np.testing.assert_allclose(soft_or(got_k[None])[0].numpy(), m, rtol=1e-6, atol=1e-9)
    # flat inside, 0.5 at gamma outside an edge
    assert m_k[0][(freqs >= 1000) & (freqs <= 3000)].min() == 1.0
    assert abs(m_k[0][freqs == 3200][0] - 0.5) < 1e-12


def test_passband_union():
    freqs = torch.arange(0, 10000, 50.0)
    u = passband_union(freqs, torch.tensor([[1000.0, 6000.0]]), 2000.0)[0]
    expect = ((freqs >= 1000) & (freqs <= 3000)) | ((freqs >= 6000) & (freqs <= 8000))
    assert torch.equal(u, expect)


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    g, t = 200, 50
    power = rng.gamma(1.0, 1.0, size=(g, t))
    power[40:60] *= 1 + 20 * (rng.random((20, t)) > 0.7)  # a bursty band
    freqs = np.arange(g) * 50.0
    _, mask = np_mask(freqs, np.array([1900.0]), 1000.0, 100.0)
    want_e, want_s = np_losses(power, mask)
    p_t = torch.tensor(power, dtype=torch.float32)[None]
    var = temporal_variance(p_t, torch.ones(1, t, dtype=torch.bool))
    fv = torch.ones(1, g, dtype=torch.bool)
    m_t = torch.tensor(mask, dtype=torch.float32)[None]
    np.testing.assert_allclose(energy_variance_loss(var, m_t, fv)[0].item(), want_e, rtol=1e-4)
    np.testing.assert_allclose(surprise_loss(var, m_t, fv)[0].item(), want_s, rtol=1e-4)
    # captured fractions are exp(-loss) up to eps
    vf, sf = captured_fractions(var, m_t, fv)
    np.testing.assert_allclose(vf.item(), np.exp(-want_e), rtol=1e-3)
    np.testing.assert_allclose(sf.item(), np.exp(-want_s), rtol=1e-3)


def test_invalid_bins_and_frames_are_excluded():
    rng = np.random.default_rng(1)
    power = torch.tensor(rng.gamma(1.0, 1.0, size=(1, 100, 30)), dtype=torch.float32)
    frame_valid = torch.ones(1, 30, dtype=torch.bool)
    frame_valid[:, 20:] = False
    garbage = power.clone()
    garbage[:, :, 20:] = 1e6  # padded frames: must not matter
    torch.testing.assert_close(temporal_variance(power, frame_valid), temporal_variance(garbage, frame_valid))
    var = temporal_variance(power, frame_valid)
    fv = torch.ones(1, 100, dtype=torch.bool)
    fv[:, 60:] = False
    var_garbage = var.clone()
    var_garbage[:, 60:] = 1e6  # above the Nyquist: must not matter
    mask = torch.rand(1, 100)
    for fn in (energy_variance_loss, surprise_loss):
        torch.testing.assert_close(fn(var, mask, fv), fn(var_garbage, mask, fv))


def test_full_mask_gives_zero_loss_and_silence_is_finite():
    var = torch.rand(3, 80)
    var[1] = 0.0  # silent clip
    fv = torch.ones(3, 80, dtype=torch.bool)
    ones = torch.ones(3, 80)
    for fn in (energy_variance_loss, surprise_loss):
        out = fn(var, ones, fv)
        assert torch.isfinite(out).all()
        assert out.abs().max() < 1e-5
        assert torch.isfinite(fn(var, torch.zeros(3, 80), fv)).all()


def test_gradient_reaches_far_band_through_cauchy_tail():
    """All the variance sits 8 kHz above the band: the gradient still pulls the band up (and only up)."""
    freqs = torch.arange(0, 24000, 50.0)
    var = torch.zeros(1, freqs.numel())
    var[0, (freqs >= 15000) & (freqs < 15500)] = 1.0
    fv = torch.ones_like(var, dtype=torch.bool)
    f = torch.tensor([[5000.0]], requires_grad=True)
    mask = soft_or(cauchy_band_masks(freqs, f, 2000.0, 200.0))
    (energy_variance_loss(var, mask, fv) + surprise_loss(var, mask, fv)).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    assert f.grad.item() < 0  # descending the loss moves f up, towards the energy


def test_variance_fast_path_equals_masked_path():
    from a2v_het.frontend.spectrum import power_mean_and_variance

    power = torch.rand(3, 20, 40) * 5
    all_valid = torch.ones(3, 40, dtype=torch.bool)
    fast_mean, fast_var = power_mean_and_variance(power, all_valid)
    some = all_valid.clone()
    some[0, -1] = False  # forces the masked path
    slow_mean, slow_var = power_mean_and_variance(power, some)
    torch.testing.assert_close(fast_mean[1:], slow_mean[1:])
    torch.testing.assert_close(fast_var[1:], slow_var[1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_var.numpy(), power.numpy().var(axis=-1), rtol=1e-5)
