"""Learnable Gabor STRFs: the vectorised kernel builder against a per-channel numpy reference, modulation
selectivity (rate and orientation), gradients to every Gabor parameter, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2v_het.config import ConfigError
from a2v_het.frontend import FrontendConfig, GaborStrfConfig, build_frontend
from a2v_het.frontend.gabor_strf import GaborStrfFrontend, gabor_kernels


def _numpy_gabor(st, sf, rate, scale, t, f):
    """One kernel, written out the long way: envelope, plane wave, DC removal, normalisation."""
    tt, ff = np.meshgrid(t, f)  # (Kf, Kt)
    env = np.exp(-tt**2 / (2 * st**2) - ff**2 / (2 * sf**2))
    env = env / env.sum()
    phase = 2 * np.pi * (rate * tt + scale * ff)
    real = env * np.cos(phase)
    real = real - env * real.sum() / env.sum()
    return real, env * np.sin(phase)


def test_vectorised_kernels_match_per_channel_numpy():
    rng = np.random.default_rng(0)
    c = 7
    st, sf = rng.uniform(0.01, 0.1, c), rng.uniform(0.5, 5, c)
    rate, scale = rng.uniform(-25, 25, c), rng.uniform(-0.5, 0.5, c)
    t = np.arange(-10, 11) / 100.0
    f = np.arange(-6, 7, dtype=float)
    k = gabor_kernels(*(torch.tensor(v) for v in (st, sf, rate, scale, t, f))).numpy()
    assert k.shape == (c, 2, 13, 21)
    for i in range(c):
        real, imag = _numpy_gabor(st[i], sf[i], rate[i], scale[i], t, f)
        np.testing.assert_allclose(k[i, 0], real, atol=1e-6)
        np.testing.assert_allclose(k[i, 1], imag, atol=1e-6)


def _fe_with(rates_hz, scales, sigma_t=0.05, sigma_f=3.0) -> GaborStrfFrontend:
    n = len(rates_hz)
    fe = GaborStrfFrontend(FrontendConfig(name="gabor_strf", dim=16, gabor_strf=GaborStrfConfig(num_filters=n)))
    inv_sp = lambda y: y + math.log(-math.expm1(-y))  # noqa: E731
    with torch.no_grad():
        fe.sigma_t_raw.fill_(inv_sp(sigma_t - 1.0 / fe.frame_rate / 4))
        fe.sigma_f_raw.fill_(inv_sp(sigma_f - 0.25))
        fe.rate_raw.copy_(torch.atanh(torch.tensor(rates_hz) / fe.c.max_rate_hz))
        fe.scale_raw.copy_(torch.atanh(torch.tensor(scales) / fe.c.max_scale_cyc_per_mel))
    return fe


def test_temporal_rate_selectivity_and_orientation():
    """A spectrogram of upward ripples at 8 Hz and 0.1 cycles/channel drives most the kernel tuned to (8 Hz, 0.1)
    among kernels tuned to 2, 8 and 20 Hz, and far more than the kernel of the opposite orientation."""
    rates = [2.0, 8.0, 20.0, -8.0]
    fe = _fe_with(rates, [0.1, 0.1, 0.1, 0.1])
    t = torch.arange(300) / fe.frame_rate
    f = torch.arange(64, dtype=torch.float32)
    x = torch.cos(2 * math.pi * (8.0 * t[None, :] + 0.1 * f[:, None]))[None]  # (1, M, N)
    with torch.no_grad():
        energy = fe.modulation_energy(x)[0, :, 20:44, 50:250].mean(dim=(1, 2))  # away from the edges
    assert int(energy.argmax()) == 1, energy
    assert energy[1] > 5 * energy[3], energy  # orientation: same |rate|, opposite sign


def test_constant_input_gives_no_modulation_energy():
    fe = _fe_with([0.0, 5.0], [0.0, 0.2])
    x = torch.full((1, 64, 200), 3.0)
    with torch.no_grad():
        energy = fe.modulation_energy(x)[0, :, 20:44, 50:150]
    assert energy.max() < 1e-3  # DC removed (sqrt(eps) = 1e-4 floor)


def test_gradients_reach_every_gabor_parameter():
    torch.manual_seed(0)
    fe = build_frontend(FrontendConfig(name="gabor_strf", dim=16))
    x = 0.1 * torch.randn(2, 16000)
    t = torch.arange(16000) / 16000
    x[0] += 0.3 * torch.sin(2 * math.pi * (500 + 2000 * t) * t)  # a sweep: spectro-temporal structure
    out = fe(x, torch.tensor([16000, 8000]), torch.tensor([16000, 8000]))
    out.tokens.square().mean().backward()
    for name in ("sigma_t_raw", "sigma_f_raw", "rate_raw", "scale_raw"):
        g = getattr(fe, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    phys = fe.parameters_physical()
    assert (phys["sigma_t_s"] > 0).all() and (phys["rate_hz"].abs() <= 25).all()


@pytest.mark.parametrize("override,key", [({"frequency_groups": 5}, "frontend.gabor_strf.frequency_groups"),
                                          ({"num_filters": 0}, "frontend.gabor_strf.num_filters"),
                                          ({"max_scale_cyc_per_mel": 0.7}, "frontend.gabor_strf.max_scale_cyc_per_mel")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FrontendConfig(name="gabor_strf", gabor_strf=GaborStrfConfig(**override)).validate()
