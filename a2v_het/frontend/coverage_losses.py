"""Coverage losses of the heterodyne frontend (energy-variance and surprise), exactly in the seed's log-ratio form.

Look at changes, not absolutes: the statistic is the temporal variance of the power per frequency bin,
sigma^2(f) = Var_t P(f, t), so static energy (hum, a constant stream) does not attract bands but calls do.

    L_energy   = log(sum_f sigma^2(f))  - log(sum_f M(f) sigma^2(f) + eps)
    p(f)       = sigma^2(f) / sum_f' sigma^2(f')
    S(f)       = -p(f) log(p(f) + eps)
    L_surprise = log(sum_f S(f))        - log(sum_f M(f) S(f) + eps)

Two numerical choices, both invisible on any clip with signal: sigma^2 is divided by its sum first (the log-ratio
is scale-free, and this makes eps relative instead of depending on the recording gain), and the first log also
gets + eps so that a silent clip (sum sigma^2 = 0) gives a loss of 0 instead of -inf/NaN. Everything is fp32.
Only bins at or below each clip's Nyquist and only frames inside the clip enter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from a2v_het.frontend.spectrum import mean_power, temporal_variance  # noqa: F401  (re-exported)

EPS = 1e-6


def variance_distribution(variance: Tensor, freq_valid: Tensor) -> Tensor:
    """p(f) = sigma^2(f) / sum sigma^2 over the valid bins; all-zero for a clip without variance. (B, G)."""
    v = variance.float() * freq_valid.float()
    total = v.sum(-1, keepdim=True)
    return torch.where(total > 0, v / total.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(v))


def surprise(p: Tensor, eps: float = EPS) -> Tensor:
    """S(f) = -p(f) log(p(f) + eps). (B, G)."""
    return -p * torch.log(p + eps)


def energy_variance_loss(variance: Tensor, mask: Tensor, freq_valid: Tensor, eps: float = EPS) -> Tensor:
    """L_energy per clip (B,): log of total over captured temporal variance (0 = all variance captured)."""
    p = variance_distribution(variance, freq_valid)
    m = mask.float() * freq_valid.float()
    return torch.log(p.sum(-1) + eps) - torch.log((m * p).sum(-1) + eps)


def surprise_loss(variance: Tensor, mask: Tensor, freq_valid: Tensor, eps: float = EPS) -> Tensor:
    """L_surprise per clip (B,): log of total over captured spectral entropy of the variance."""
    s = surprise(variance_distribution(variance, freq_valid), eps) * freq_valid.float()
    m = mask.float() * freq_valid.float()
    return torch.log(s.sum(-1) + eps) - torch.log((m * s).sum(-1) + eps)


def captured_fractions(variance: Tensor, mask: Tensor, freq_valid: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """(B,) fractions of the temporal variance and of the surprise S that M captures (1 on a silent clip)."""
    p = variance_distribution(variance, freq_valid)
    s = surprise(p, eps) * freq_valid.float()
    m = mask.float() * freq_valid.float()
    var_total, s_total = p.sum(-1), s.sum(-1)
    var_frac = torch.where(var_total > 0, (m * p).sum(-1) / var_total.clamp(min=eps), torch.ones_like(var_total))
    s_frac = torch.where(s_total > 0, (m * s).sum(-1) / s_total.clamp(min=eps), torch.ones_like(s_total))
    return var_frac, s_frac
