"""Non-learned band pickers: the baselines the learned hypernetwork is measured against.

Each selector maps one batch's statistics on the absolute grid to K band starts (B, K) in Hz inside
[band_min_hz, nyquist - W] of each clip, like :class:`~a2v_het.frontend.hypernetwork.BandPicker`:

- ``greedy``: K times, the start whose band [f, f + W] holds the most of a per-bin statistic not yet captured,
  then that band's soft Cauchy mask is removed from the statistic (the hypernetwork's untrained start, without
  the soft-argmax);
- ``uniform``: K starts evenly spaced over each clip's valid range (tiles the spectrum when K * W covers it);
- ``random``: K starts drawn uniformly from each clip's valid range (seeded);
- ``spectral_flux`` and ``entropy``: the band selectors of earthspecies' multiband-audio ("Beyond the Baseband"),
  re-implemented from their description (the package imports torchaudio at import time): candidate bands of
  width W every W / 4 Hz are scored by the summed positive frame-to-frame change of power in the band
  (spectral flux) or by the entropy of the band's time-summed power distribution over its bins, and the K
  best-scoring candidates are taken, skipping candidates that overlap an already chosen one while others remain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from a2v_het.frontend.band_masks import cauchy_band_masks
from a2v_het.frontend.hypernetwork import band_capture, valid_starts

CANDIDATE_STEP_FRACTION = 0.25
"""spectral_flux / entropy: candidate band starts every W * this Hz."""


def _start_range(sample_rate: Tensor, band_min_hz: float, band_width_hz: float | Tensor) -> tuple[Tensor, Tensor]:
    """(B,) lowest and highest start of each clip; ``band_width_hz`` one W or (B,) one per clip."""
    lo = torch.full(sample_rate.shape, band_min_hz, dtype=torch.float32, device=sample_rate.device)
    return lo, sample_rate.float() / 2 - band_width_hz


def greedy_starts(statistic: Tensor, sample_rate: Tensor, num_bands: int, band_width_hz: float, band_min_hz: float,
                  gamma_hz: float, grid_hz: float) -> Tensor:
    """(B, G) statistic >= 0 on the grid -> (B, K) starts: greedy maximisation of the captured statistic."""
    b, g = statistic.shape
    freqs = torch.arange(g, device=statistic.device, dtype=torch.float32) * grid_hz
    band_bins = int(round(band_width_hz / grid_hz))
    start_ok = valid_starts(freqs, sample_rate, band_min_hz, band_width_hz)
    residual = statistic.float().clone()
    starts = []
    for _ in range(num_bands):
        capture = band_capture(residual, band_bins).masked_fill(~start_ok, -1.0)
        f = freqs[capture.argmax(-1)]
        starts.append(f)
        residual = residual * (1.0 - cauchy_band_masks(freqs, f[:, None], band_width_hz, gamma_hz)[:, 0])
    return torch.stack(starts, dim=1)


def uniform_starts(sample_rate: Tensor, num_bands: int, band_width_hz: float | Tensor, band_min_hz: float) -> Tensor:
    """(B, K): starts evenly spaced from band_min_hz to nyquist - W (band k of K at fraction k / (K - 1)); W one
    width or (B,) one per clip."""
    lo, hi = _start_range(sample_rate, band_min_hz, band_width_hz)
    frac = torch.linspace(0.0, 1.0, num_bands, device=sample_rate.device) if num_bands > 1 else \
        torch.zeros(1, device=sample_rate.device)
    return lo[:, None] + (hi - lo)[:, None] * frac[None]


def random_starts(sample_rate: Tensor, num_bands: int, band_width_hz: float, band_min_hz: float,
                  generator: torch.Generator) -> Tensor:
    """(B, K): starts uniform in [band_min_hz, nyquist - W] of each clip."""
    lo, hi = _start_range(sample_rate, band_min_hz, band_width_hz)
    u = torch.rand(sample_rate.shape[0], num_bands, generator=generator).to(sample_rate.device)
    return lo[:, None] + (hi - lo)[:, None] * u


def _candidate_bands(freqs: Tensor, sample_rate: Tensor, band_width_hz: float, band_min_hz: float
                     ) -> tuple[Tensor, Tensor]:
    """Candidate starts (C,) every W/4 Hz from band_min_hz and (B, C) whether each fits below a clip's Nyquist."""
    step = band_width_hz * CANDIDATE_STEP_FRACTION
    top = float(freqs[-1])
    cand = torch.arange(band_min_hz, max(top - band_width_hz, band_min_hz) + 1e-6, step, device=freqs.device)
    fits = cand[None] <= sample_rate.float()[:, None] / 2 - band_width_hz + 1e-6
    return cand, fits


def _band_membership(freqs: Tensor, cand: Tensor, band_width_hz: float) -> Tensor:
    """(C, G) float: grid bin g lies in candidate band c."""
    return ((freqs[None] >= cand[:, None]) & (freqs[None] < cand[:, None] + band_width_hz)).float()


def _top_k_without_overlap(scores: Tensor, fits: Tensor, cand: Tensor, num_bands: int, band_width_hz: float,
                           sample_rate: Tensor, band_min_hz: float) -> Tensor:
    """(B, C) scores -> (B, K) starts: best first, skipping candidates overlapping a chosen band while others
    remain, then the best remaining ones (a clip narrower than K * W gets overlapping bands)."""
    b = scores.shape[0]
    out = torch.empty(b, num_bands, device=scores.device)
    for i in range(b):
        s = scores[i].masked_fill(~fits[i], float("-inf"))
        if not bool(fits[i].any()):  # only when the grid of candidates misses the clip's single valid start
            out[i] = uniform_starts(sample_rate[i : i + 1], num_bands, band_width_hz, band_min_hz)[0]
            continue
        order = torch.argsort(s, descending=True)
        order = order[torch.isfinite(s[order])]
        chosen: list[float] = []
        for c in order.tolist():
            f = float(cand[c])
            if all(abs(f - x) >= band_width_hz for x in chosen):
                chosen.append(f)
            if len(chosen) == num_bands:
                break
        # Too few non-overlapping candidates (a narrow clip): the best remaining ones, then repeats of the chosen.
        chosen += [float(cand[c]) for c in order.tolist() if float(cand[c]) not in chosen]
        out[i] = torch.tensor([chosen[j % len(chosen)] for j in range(num_bands)])
    return out


def spectral_flux_scores(power: Tensor, frame_valid: Tensor) -> Tensor:
    """(B, G, F) power -> (B, G): sum over valid frame pairs of max(P(t+1) - P(t), 0)."""
    both = (frame_valid[:, 1:] & frame_valid[:, :-1]).float()[:, None, :]
    return (torch.relu(power[..., 1:] - power[..., :-1]) * both).sum(-1)


def flux_starts(power: Tensor, frame_valid: Tensor, freqs: Tensor, sample_rate: Tensor, num_bands: int,
                band_width_hz: float, band_min_hz: float) -> Tensor:
    cand, fits = _candidate_bands(freqs, sample_rate, band_width_hz, band_min_hz)
    member = _band_membership(freqs, cand, band_width_hz)
    scores = spectral_flux_scores(power, frame_valid) @ member.T  # (B, C)
    return _top_k_without_overlap(scores, fits, cand, num_bands, band_width_hz, sample_rate, band_min_hz)


def entropy_starts(power: Tensor, frame_valid: Tensor, freqs: Tensor, sample_rate: Tensor, num_bands: int,
                   band_width_hz: float, band_min_hz: float) -> Tensor:
    cand, fits = _candidate_bands(freqs, sample_rate, band_width_hz, band_min_hz)
    member = _band_membership(freqs, cand, band_width_hz)  # (C, G)
    summed = (power * frame_valid.float()[:, None, :]).sum(-1) + 1e-12  # (B, G)
    band_total = summed @ member.T  # (B, C)
    # H_c = -sum_g q log q with q = P_g / sum_band P: = log(S) - sum_g P_g log P_g / S
    plogp = (summed * summed.log()) @ member.T
    scores = band_total.log() - plogp / band_total
    return _top_k_without_overlap(scores, fits, cand, num_bands, band_width_hz, sample_rate, band_min_hz)


def check_starts(starts: Tensor, sample_rate: Tensor, band_min_hz: float, band_width_hz: float) -> Tensor:
    """Clamp (B, K) starts into each clip's valid range (round-off only); every selector's result passes here."""
    lo, hi = _start_range(sample_rate, band_min_hz, band_width_hz)
    return torch.maximum(torch.minimum(starts, hi[:, None]), lo[:, None])


__all__ = ["greedy_starts", "uniform_starts", "random_starts", "flux_starts", "entropy_starts",
           "spectral_flux_scores", "check_starts"]
