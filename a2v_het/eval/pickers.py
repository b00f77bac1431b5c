"""Band pickers by name, for `a2v-het coverage --picker NAME` and `a2v-het bench pickers`.

``learned`` is a checkpoint's own hypernetwork; ``untrained`` is a freshly initialised hypernetwork with the same
config (its own untrained start); the rest are the non-learned selectors of
:mod:`a2v_het.frontend.band_selectors`, fed the same statistics on the same grid with the same K, W and gamma.
Each picker is wrapped as an object with ``h`` (the HeterodyneConfig) and ``analyze(wave, sample_rate, lengths)``
returning a :class:`~a2v_het.frontend.heterodyne_frontend.BandAnalysis`, which is all
:func:`a2v_het.eval.coverage.coverage_report` asks of a frontend.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from a2v_het.frontend.band_masks import cauchy_band_masks, soft_or
from a2v_het.frontend.band_selectors import (
    check_starts,
    entropy_starts,
    flux_starts,
    greedy_starts,
    random_starts,
    uniform_starts,
)
from a2v_het.frontend.base import check_inputs
from a2v_het.frontend.heterodyne_frontend import BandAnalysis, HeterodyneFrontend
from a2v_het.frontend.spectrum import grid_power_spectrogram, grid_power_statistics

PICKERS = ("learned", "untrained", "greedy_evidence", "greedy_variance", "uniform", "random", "spectral_flux",
           "entropy")
"""Every name ``--picker`` accepts. greedy_variance maximises the seed's sigma^2(f) = Var_t P(f, t)^power_exponent,
greedy_evidence the call evidence E(f)."""


class SelectorPicker:
    """A non-learned selector behind the ``analyze`` interface of the heterodyne frontend."""

    def __init__(self, name: str, frontend: HeterodyneFrontend, seed: int = 0):
        if name not in PICKERS or name in ("learned", "untrained"):
            raise ValueError(f"unknown selector {name!r}; expected one of {PICKERS[2:]}")
        self.name = name
        self.frontend = frontend
        self.h = frontend.h
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def analyze(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> BandAnalysis:
        h, fe = self.h, self.frontend
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        fe._check_rates(sample_rate)
        n_grid = fe.analysis_bins(sample_rate)
        evidence = h.evidence_args
        stats = grid_power_statistics(wave, sample_rate, lengths, h.stft_window_s, h.stft_hop_s, n_grid, fe.grid_hz,
                                      h.power_exponent, evidence)
        args = (h.num_bands, h.band_width_hz, h.band_min_hz)
        if self.name in ("greedy_evidence", "greedy_variance"):
            statistic = stats.evidence if self.name == "greedy_evidence" else stats.variance
            starts = greedy_starts(statistic, sample_rate, *args, h.cauchy_width_hz, fe.grid_hz)
        elif self.name == "uniform":
            starts = uniform_starts(sample_rate, *args)
        elif self.name == "random":
            starts = random_starts(sample_rate, *args, generator=self.generator)
        else:
            spec = grid_power_spectrogram(wave, sample_rate, lengths, h.stft_window_s, h.stft_hop_s, n_grid,
                                          fe.grid_hz)
            select = flux_starts if self.name == "spectral_flux" else entropy_starts
            starts = select(spec.power, spec.frame_valid, spec.freqs_hz, sample_rate, *args)
        starts = check_starts(starts, sample_rate, h.band_min_hz, h.band_width_hz)
        mask = soft_or(cauchy_band_masks(stats.freqs_hz, starts, h.band_width_hz, h.cauchy_width_hz))
        statistic = stats.evidence if h.coverage_statistic == "call_evidence" else stats.variance
        # The selector replaces the picker's detail bands only; every picker gets the same context bands.
        return fe.with_context(starts, sample_rate, stats, mask, statistic)


def untrained_like(frontend: HeterodyneFrontend, seed: int = 0) -> HeterodyneFrontend:
    """A fresh frontend with the same config: the hypernetwork's untrained start (seeded)."""
    torch.manual_seed(seed)
    return HeterodyneFrontend(dataclasses.replace(frontend.cfg)).eval()


def build_picker(name: str, frontend: HeterodyneFrontend, seed: int = 0):
    """The picker ``name`` with ``frontend``'s config; ``learned`` returns ``frontend`` itself."""
    if name == "learned":
        return frontend
    if name == "untrained":
        return untrained_like(frontend, seed)
    return SelectorPicker(name, frontend, seed)
