"""HeterodyneFrontend: the learnable frontend that replaces the conv feature extractor.

recording (B, T) at any rates -> grid spectrogram -> hypernetwork picks K detail bands of W Hz where the calls are,
J context bands tile each clip's whole band -> heterodyne every band (wide ones folded onto W Hz; read from the
statistics' STFT, or from one long FFT per clip: ``band_extraction``) -> projection
to (B, N, D) tokens at ``token_rate``, N = duration * token_rate at every input sample rate.
The coverage losses (energy-variance, surprise) on the soft Cauchy band masks are returned as auxiliary losses,
already weighted by ``frontend.heterodyne.energy_weight`` / ``surprise_weight`` (:meth:`HeterodyneFrontend.weighted`):
the frontend owns its losses' weights, so an objective adds ``FrontendOutput.aux_losses`` as they come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from a2v_het.frontend.band_masks import cauchy_band_masks, soft_or
from a2v_het.frontend.band_selectors import uniform_starts
from a2v_het.frontend.band_widths import clip_band_width, split_sub_bands
from a2v_het.frontend.base import Frontend, FrontendOutput, check_inputs
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.cpu_chunks import CpuWorkspace
from a2v_het.frontend.coverage_losses import (
    captured_fractions,
    energy_variance_loss,
    surprise_loss,
)
from a2v_het.frontend.heterodyne import heterodyne_bands, valid_output_samples
from a2v_het.frontend.hypernetwork import BandPicker
from a2v_het.frontend.projection import BandProjection
from a2v_het.frontend.spectrum import GridPowerStats, frequency_grid, grid_power_statistics
from a2v_het.frontend.stft_bands import stft_band_signals


@dataclass
class BandAnalysis:
    """What the hypernetwork saw and chose, on the absolute grid (all fp32)."""

    band_start_hz: Tensor  # (B, K + J) Hz: the K detail bands, then the J context bands
    band_width_hz: Tensor  # (B, K + J) Hz
    stats: GridPowerStats  # mean power, sigma^2(f) = Var_t P(f, t), call evidence, Nyquist mask, all (B, G)
    mask: Tensor  # (B, G) soft-OR M(f) of the K detail bands: what the coverage losses train the picker on
    statistic: Tensor  # (B, G) what the coverage losses measure (HeterodyneConfig.coverage_statistic)
    all_mask: Tensor  # (B, G) soft-OR of every band, detail and context: what the encoder's tokens hold
    num_detail: int  # K

    @property
    def variance(self) -> Tensor:
        return self.stats.variance

    @property
    def freqs_hz(self) -> Tensor:
        return self.stats.freqs_hz


class HeterodyneFrontend(Frontend):
    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        h = cfg.heterodyne
        h.validate()
        self.h = h
        self.dim = cfg.dim
        self.grid_hz = 1.0 / h.stft_window_s
        self.n_grid = frequency_grid(h.max_sample_rate, self.grid_hz)
        # band_picker: uniform builds no hypernetwork, so no parameter waits for a gradient that never comes.
        self.picker = BandPicker(h, self.grid_hz) if h.band_picker == "learned" else None
        self.samples_per_token = int(round(h.band_width_hz / cfg.token_rate))
        # The statistics' STFT buffers on CPU, kept from step to step (a2v_het/frontend/cpu_chunks.py): about 15 MB
        # per 3 s of 500 kHz audio in the batch. Scratch, not state: no state_dict entry, a deep copy starts empty.
        self.workspace = CpuWorkspace()
        self.projection = BandProjection(h.total_bands, h.band_width_hz, cfg.token_rate, h.conv_channels, cfg.dim,
                                         h.band_embedding_dim, h.max_sample_rate / 2, h.sub_band_pooling)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        return int(math.ceil(duration_s * self.cfg.token_rate - 1e-9))

    def _check_rates(self, sample_rate: Tensor) -> None:
        too_high = sample_rate > self.h.max_sample_rate
        if too_high.any():
            raise ValueError(f"sample rates {sample_rate[too_high].unique().tolist()} Hz exceed "
                             f"frontend.heterodyne.max_sample_rate={self.h.max_sample_rate}; raise it in the recipe")

    def analysis_bins(self, sample_rate: Tensor) -> int:
        """Grid bins this batch needs: up to its highest Nyquist plus two receptive fields of the picker.

        Above every clip's Nyquist all picker inputs are zero, so the conv activations there are the same constant
        as on the full grid; only the grid's top edge (zero padding) differs, and it now sits more than one
        receptive field above the last valid bin, where no valid start can see it. The bands are therefore the
        same as on the full grid (tested), at a fraction of the cost for low-rate batches.
        """
        top = int(math.floor(float(sample_rate.max()) / 2 / self.grid_hz)) + 1
        reach = self.picker.receptive_half_width if self.picker is not None else 0
        return min(self.n_grid, top + 2 * reach + 1)

    def analyze(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, keep_spectra: bool = False) -> BandAnalysis:
        """Spectrogram, temporal variance, picked bands and their soft mask (no heterodyning); ``keep_spectra``
        keeps the statistics' complex STFT in ``stats.spectra`` (for ``band_extraction: stft``), in the frontend's
        CPU workspace: valid until its next call."""
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        self._check_rates(sample_rate)
        h = self.h
        use_evidence = h.coverage_statistic == "call_evidence"
        evidence = h.evidence_args if use_evidence else None
        with torch.no_grad():  # statistics of the input: nothing upstream of them learns
            stats = grid_power_statistics(wave.detach(), sample_rate, lengths, h.stft_window_s, h.stft_hop_s,
                                          self.analysis_bins(sample_rate), self.grid_hz, h.power_exponent, evidence,
                                          keep_spectra=keep_spectra, workspace=self.workspace)
        statistic = stats.evidence if use_evidence else stats.variance
        with torch.autocast(device_type=wave.device.type, enabled=False):
            if self.picker is None:
                band_start = uniform_starts(sample_rate, h.num_bands, h.band_width_hz, h.band_min_hz)
            else:
                band_start = self.picker(statistic, stats.mean_power, stats.freq_valid, sample_rate)
            mask = soft_or(cauchy_band_masks(stats.freqs_hz, band_start, h.band_width_hz, h.cauchy_width_hz))
        return self.with_context(band_start, sample_rate, stats, mask, statistic)

    def with_context(self, detail_start_hz: Tensor, sample_rate: Tensor, stats: GridPowerStats, mask: Tensor,
                     statistic: Tensor) -> BandAnalysis:
        """The analysis of K detail bands (B, K) with each clip's J context bands appended."""
        h = self.h
        start, width, all_mask = detail_start_hz, torch.full_like(detail_start_hz, h.band_width_hz), mask
        if h.context_bands:
            w_ctx = clip_band_width(sample_rate, h.context_widths_hz, h.context_bands, h.band_min_hz)  # (B,)
            ctx_start = uniform_starts(sample_rate, h.context_bands, w_ctx, h.band_min_hz)  # (B, J)
            ctx_width = w_ctx[:, None].expand(-1, h.context_bands)
            ctx = cauchy_band_masks(stats.freqs_hz, ctx_start, ctx_width, h.cauchy_width_hz)  # (B, J, G)
            all_mask = 1.0 - (1.0 - mask) * torch.prod(1.0 - ctx, dim=1)
            start, width = torch.cat([start, ctx_start], 1), torch.cat([width, ctx_width], 1)
        return BandAnalysis(start, width, stats, mask, statistic, all_mask, h.num_bands)

    def coverage_losses(self, a: BandAnalysis) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        fv = a.stats.freq_valid
        with torch.autocast(device_type=a.mask.device.type, enabled=False):
            energy = energy_variance_loss(a.statistic, a.mask, fv).mean()
            surprise = surprise_loss(a.statistic, a.mask, fv).mean()
            stat_frac, s_frac = captured_fractions(a.statistic.detach(), a.mask.detach(), fv)
            var_frac = captured_fractions(a.variance.detach(), a.mask.detach(), fv)[0]
        stats = {"captured_statistic": stat_frac.mean(), "captured_surprise": s_frac.mean(),
                 "captured_variance": var_frac.mean()}
        return {"energy": energy, "surprise": surprise}, stats

    def weighted(self, aux: dict[str, Tensor]) -> dict[str, Tensor]:
        """The :meth:`coverage_losses` terms times their weights (``frontend.heterodyne.energy_weight`` and
        ``surprise_weight``): what an objective adds. The one place the weights are applied."""
        weights = {"energy": self.h.energy_weight, "surprise": self.h.surprise_weight}
        return {k: weights[k] * v for k, v in aux.items()}

    def coverage_loss(self, aux: dict[str, Tensor]) -> Tensor:
        """energy_weight * L_energy + surprise_weight * L_surprise from the :meth:`coverage_losses` terms."""
        w = self.weighted(aux)
        return w["energy"] + w["surprise"]

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        sample_rate, lengths = check_inputs(wave, sample_rate, lengths)
        from_stft = self.h.band_extraction == "stft"
        a = self.analyze(wave, sample_rate, lengths, keep_spectra=from_stft)
        aux, stats = self.coverage_losses(a)
        durations = lengths.double() / sample_rate.double()
        n_tokens = self.num_tokens(float(durations.max()), 0)
        n_out = n_tokens * self.samples_per_token
        grad_to_bands = self.h.band_grad_from_ssl
        bands_used = a.band_start_hz if grad_to_bands else a.band_start_hz.detach()
        valid = valid_output_samples(lengths, sample_rate, self.cfg.token_rate)  # (B,) tokens inside each clip
        rate = self.h.band_width_hz
        mix = dict(mixing=self.h.mixing, taper_s=self.h.edge_taper_s, straight_through=grad_to_bands,
                   out_lengths=valid * self.samples_per_token)  # each clip over its own whole-token span
        if self.h.sub_band_pooling == "fold":
            # A wide band arrives folded onto the band rate from the heterodyning itself: one inverse FFT per band.
            full = bool((a.band_width_hz == rate).all())
            start, width = bands_used, None if full else a.band_width_hz
            placement = (bands_used, valid)
        else:
            sub = split_sub_bands(bands_used, a.band_width_hz, rate)
            full = bool((sub.width_hz[sub.valid] >= rate - 1e-3).all())
            start, width = sub.start_hz, None if full else sub.width_hz
            placement = (sub.start_hz, valid, sub.band_index, sub.index_in_band)
        if from_stft:
            bands = self.bands_from_stft(a, wave, sample_rate, lengths, start, width, n_out, mix)
        else:
            bands = heterodyne_bands(wave, sample_rate, lengths, start, rate, n_out, pass_width_hz=width, **mix)
        bands = bands.to(wave.dtype) if wave.dtype != torch.float32 else bands
        a.stats.spectra = None  # tens of MB at 500 kHz: not kept while the projection runs
        tokens = self.projection(bands, *placement)
        padding_mask = torch.arange(n_tokens, device=wave.device)[None, :] >= valid[:, None]
        return FrontendOutput(tokens, padding_mask, a.band_start_hz, self.weighted(aux), stats,
                              band_width_hz=a.band_width_hz)

    def bands_from_stft(self, a: BandAnalysis, wave: Tensor, sample_rate: Tensor, lengths: Tensor, start: Tensor,
                        width: Tensor | None, n_out: int, mix: dict) -> Tensor:
        """``band_extraction: stft``: the band signals (B, S, 2, n_out) read from the statistics' STFT; the clips
        of rates without an exact STFT geometry (a2v_het/frontend/stft_bands.py) through the long FFT."""
        h = self.h
        with torch.autocast(device_type=wave.device.type, enabled=False):
            bands, done = stft_band_signals(a.stats.spectra, start, h.band_width_hz, h.stft_window_s,
                                            h.stft_hop_s, n_out, mix["out_lengths"],
                                            pass_width_hz=width, straight_through=mix["straight_through"])
        if not bool(done.all()):
            rest = (~done).nonzero().flatten()
            sub_mix = dict(mix, out_lengths=mix["out_lengths"][rest])
            bands = bands.index_copy(0, rest, heterodyne_bands(
                wave[rest], sample_rate[rest], lengths[rest], start[rest], h.band_width_hz, n_out,
                pass_width_hz=None if width is None else width[rest], **sub_mix))
        return bands
