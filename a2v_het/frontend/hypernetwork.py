"""The hypernetwork: picks K band start frequencies per clip from a summary of the clip on an absolute-Hz grid.

Design for generalisation across sample rates. The summary (the per-bin statistic the coverage losses measure,
by default the call evidence E(f); log mean power against its neighbourhood; the statistic a band starting at each
bin would capture; validity masks) lives on one fixed grid from 0 Hz to the Nyquist of the highest supported rate;
bins above the clip's own Nyquist are masked and the mask is an input channel. Every input is per bin or local
(``picker_inputs=local``): nothing is normalised over the clip's valid bins, whose number grows with the sample
rate, so the same call gives the same inputs in an 8 kHz and a 96 kHz clip (away from the 8 kHz clip's Nyquist
edge). The head's output layer starts at zero (``picker_init=greedy``): the untrained picker is exactly the greedy
"start that captures the most evidence not yet captured", and training learns corrections around it. The
picker is a stack of dilated convolutions along frequency (translation-equivariant: a call at 30 kHz looks to it
like a call at 3 kHz), followed per band by a *local* soft-argmax: arg-max first, then a softmax-weighted mean of
the start frequencies within +-window of it. The result is differentiable and can never land between two distant
peaks, as a global soft-argmax would. Bands are picked one after another; after each pick the variance it
captures (through its soft Cauchy mask) is removed from the evidence, so the next band looks for what is left.
The conv body runs once per clip; only a small conv head sees the changing evidence (the variance each start
would still capture, and what is already covered), so K bands cost little more than one. That bookkeeping is a
statistic of the bands already picked and carries no gradient (each band learns where to go given the earlier
ones; the coverage losses reach every band through its own mask), and the head is differentiated only on the
window of starts its soft-argmax reads. Both cut the picker's backward to a few small ops per band, and training
this way covered more calls on ``field_hard`` than with the gradient through the chain (BENCHMARKS.md).

Each start is a convex combination of grid frequencies inside [f_min, nyquist - W] of its clip, so the constraint
holds by construction: an 8 kHz clip never gets a band above 4 kHz.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2v_het.frontend.band_masks import cauchy_band_masks
from a2v_het.frontend.call_evidence import local_mean
from a2v_het.frontend.coverage_losses import variance_distribution
from a2v_het.frontend.dilated_conv import dilated_conv
from a2v_het.frontend.config import HeterodyneConfig

N_FEATURES = 4  # log power, log statistic, Nyquist mask, valid-start mask
N_EVIDENCE = 2  # log capturable residual statistic, covered so far
EVIDENCE_UNIT = 0.01
"""Call evidence (nats, a mean over frames) is read as log1p(E / EVIDENCE_UNIT): a bin whose level rises 1 nat
above the margin for 1 % of the clip reads log 2."""
EVIDENCE_FLOOR = 1e-4
"""Call evidence (nats) added to every valid bin of the greedy residual (see BandPicker.forward)."""
EVIDENCE_FLOOR_P = 1e-7
"""The same floor for a statistic normalised to sum 1 over the valid bins (picker_inputs=global or power_variance)."""
LOCAL_POWER_HZ = 1000.0
"""``local`` inputs: log mean power is read against its mean over +-this many Hz of valid bins."""


def band_capture(values: Tensor, band_bins: int) -> Tensor:
    """(B, G) -> (B, G): sum of ``values`` over [g, g + band_bins] for every start bin g (box filter by cumsum)."""
    c = torch.nn.functional.pad(values.cumsum(-1), (1, 0))
    g = values.shape[-1]
    hi = (torch.arange(g, device=values.device) + band_bins + 1).clamp(max=g)
    return c[:, hi] - c[:, :g]


def valid_starts(freqs_hz: Tensor, sample_rate: Tensor, band_min_hz: float, band_width_hz: float) -> Tensor:
    """(B, G) bool: f_min <= f <= nyquist - W for each clip."""
    nyq = sample_rate.float()[:, None] / 2
    return (freqs_hz[None, :] >= band_min_hz) & (freqs_hz[None, :] <= nyq - band_width_hz + 1e-6)


class BandPicker(nn.Module):
    def __init__(self, cfg: HeterodyneConfig, grid_hz: float):
        super().__init__()
        self.cfg = cfg
        self.grid_hz = grid_hz
        self.band_bins = int(round(cfg.band_width_hz / grid_hz))
        self.window_bins = max(1, int(round(cfg.picker_window_hz / grid_hz)))
        layers: list[nn.Module] = []
        # local inputs leave the Nyquist and valid-start masks out of the body (invalid starts are masked at the
        # logits): a mask edge within a receptive field would otherwise make the same call look different in an
        # 8 kHz and a 96 kHz clip.
        self.feature_channels = 2 if cfg.picker_inputs == "local" else N_FEATURES
        ch_in = self.feature_channels
        for i in range(cfg.picker_layers):
            dil = 2**i
            layers += [dilated_conv(ch_in, cfg.picker_channels, cfg.picker_kernel, dil), nn.GELU()]
            ch_in = cfg.picker_channels
        self.body = nn.Sequential(*layers)
        # Bins on each side that one grid bin's body output depends on.
        self.receptive_half_width = sum((2**i) * (cfg.picker_kernel // 2) for i in range(cfg.picker_layers))
        # Pointwise head on [body features, evidence]: the body already gives every bin its neighbourhood, and the
        # head runs K times. Its first layer is split so the body part is computed once per clip and each band only
        # adds the (cheap, 2-channel) evidence term.
        c = cfg.picker_channels
        self.head_body = nn.Conv1d(c, c, 1)
        self.head_evidence = nn.Parameter(torch.randn(c, N_EVIDENCE) / N_EVIDENCE**0.5)
        self.head_out = nn.Conv1d(c, 1, 1)
        # Skip from the evidence to the logits with a learned positive gain: the picker starts as "the start that
        # would capture the most variance not yet captured" and learns corrections around it. Without it, a picker
        # can learn to lean on absolute features (log power is highest at low frequencies in wind and pink noise)
        # and stack all bands on one spot at rates it has not seen.
        self.capture_gain = nn.Parameter(torch.tensor([0.5413]))  # softplus(0.5413) = 1; 1-D for DeepSpeed
        if cfg.picker_init == "greedy":
            nn.init.zeros_(self.head_out.weight)
            nn.init.zeros_(self.head_out.bias)
        self.local_half_bins = max(1, int(round(LOCAL_POWER_HZ / grid_hz)))
        # The evidence is counted in its own units (nats, comparable across clips and rates) or as p(f).
        self.level_free = cfg.coverage_statistic == "call_evidence" and cfg.picker_inputs == "local"

    def features(self, statistic: Tensor, mean_power: Tensor, freq_valid: Tensor, start_valid: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Picker inputs (B, feature_channels, G) and the statistic the greedy evidence is counted in (B, G)."""
        cfg = self.cfg
        fv, sv = freq_valid.float(), start_valid.float()
        p = variance_distribution(statistic, freq_valid)
        level_free = self.level_free
        counted = statistic * fv if level_free else p
        if cfg.picker_inputs == "local":
            log_mean = torch.log(mean_power + (mean_power * fv).amax(-1, keepdim=True) * 1e-10 + 1e-30)
            # Mean over the valid bins within +-1 kHz: ratio of the local means of (value x mask) and of the mask.
            neighbourhood = (local_mean(log_mean * fv, self.local_half_bins, dim=-1)
                             / local_mean(fv, self.local_half_bins, dim=-1).clamp(min=1e-6))
            log_power = (log_mean - neighbourhood) * fv
            log_stat = (torch.log1p(counted / EVIDENCE_UNIT) if level_free else torch.log(p + 1e-6)) * fv
        else:
            # Against the mean over the clip's valid bins: shifts with the clip's bandwidth (the ablation).
            ref = (mean_power * fv).sum(-1, keepdim=True) / fv.sum(-1, keepdim=True).clamp(min=1.0)
            log_power = torch.log(mean_power / (ref + 1e-12) + 1e-6) * fv
            log_stat = torch.log(p + 1e-6) * fv
        channels = [log_power, log_stat] + ([fv, sv] if self.feature_channels == N_FEATURES else [])
        return torch.stack(channels, dim=1), counted

    def forward(self, statistic: Tensor, mean_power: Tensor, freq_valid: Tensor, sample_rate: Tensor) -> Tensor:
        """Pick the bands.

        Args:
            statistic: (B, G) >= 0, what the coverage losses measure per bin (call evidence in nats, or sigma^2).
            mean_power: (B, G) mean power per grid bin.
            freq_valid: (B, G) bool, bin at or below the clip's Nyquist.
            sample_rate: (B,) Hz.
        Returns: (B, K) band starts in Hz inside [f_min, nyquist - W] of each clip.
        """
        cfg = self.cfg
        b, g = mean_power.shape
        freqs = torch.arange(g, device=mean_power.device, dtype=torch.float32) * self.grid_hz
        start_valid = valid_starts(freqs, sample_rate, cfg.band_min_hz, cfg.band_width_hz)
        if not start_valid.any(-1).all():
            bad = sample_rate[~start_valid.any(-1)].tolist()
            raise ValueError(f"sample rates {bad} Hz are too low for one band of {cfg.band_width_hz:g} Hz starting at "
                             f">= {cfg.band_min_hz:g} Hz (need >= {cfg.min_sample_rate:g} Hz)")
        sv = start_valid.float()
        x, counted = self.features(statistic, mean_power, freq_valid, start_valid)
        h = self.body(x)  # (B, C, G)

        h_head = self.head_body(h)  # (B, C, G), the band-independent part of the head's first layer
        w_out, b_out = self.head_out.weight[:, :, 0], self.head_out.bias[0]  # (1, C), ()
        gain = nn.functional.softplus(self.capture_gain)
        w = self.window_bins
        # Grid padded by the window on both sides (invalid there), so every window is in range without clamping.
        pad = lambda x, value=0.0: nn.functional.pad(x, (w, w), value=value)  # noqa: E731
        h_padded, freqs_padded, valid_padded = pad(h_head), pad(freqs), pad(start_valid, False)
        offsets = torch.arange(2 * w + 1, device=mean_power.device)

        def logits_of(h_part: Tensor, log_capture: Tensor, covered: Tensor, valid: Tensor) -> Tensor:
            """h_part (..., C, n), log_capture / covered / valid (..., n) -> logits (..., n).

            z = h_part + head_evidence @ [log_capture; covered] and w_out @ gelu(z) as two batched matrix products
            that add into their first argument: the greedy loop runs this on the whole grid once per band, and
            written elementwise it was six passes over (B, C, G) instead of three (2.1x the time, 192 kHz)."""
            c, n = h_part.shape[-2:]
            lead = h_part.shape[:-2]
            evidence = torch.stack([log_capture, covered], dim=-2).reshape(-1, 2, n)  # (b, 2, n)
            rows = evidence.shape[0]
            z = torch.baddbmm(h_part.reshape(rows, c, n), self.head_evidence.expand(rows, -1, -1), evidence)
            skip = (gain * log_capture + b_out).reshape(rows, 1, n)
            logits = torch.baddbmm(skip, w_out.expand(rows, -1, -1), nn.functional.gelu(z)).view(lead + (n,))
            return logits.masked_fill(~valid, float("-inf"))

        def window_logits(win: Tensor, log_capture: Tensor, covered: Tensor) -> Tensor:
            """The logits (B, K, n) at the padded-grid indices win (B, K, n) (log_capture, covered windowed)."""
            b, k, n = win.shape
            h_win = torch.gather(h_padded, 2, win.reshape(b, 1, k * n).expand(-1, h_padded.shape[1], -1))
            h_win = h_win.view(b, -1, k, n).movedim(1, 2)  # (B, K, C, n)
            valid = torch.gather(valid_padded, 1, win.reshape(b, k * n)).view(b, k, n)
            return logits_of(h_win, log_capture, covered, valid)

        # The greedy bookkeeping (what is left to capture, what is covered, which window each band reads) is a
        # statistic of the bands already picked, run without gradient: each band learns where to go given the
        # earlier ones, and the coverage losses reach every band through its own mask. The logits are evaluated on
        # the whole grid only to find each arg-max; the differentiable part then runs once for all K bands on the
        # 2w+1 starts of their windows (a 15th of the grid at 48 kHz).
        # A faint floor of evidence on every valid bin: once the calls are all captured, the remaining bands spread
        # over the spectrum not yet covered instead of stacking on one start (ties of an all-zero residual), so no
        # band is wasted. It is far below any call (a call bin holds >= 1e-2 nats).
        floor = EVIDENCE_FLOOR if self.level_free else EVIDENCE_FLOOR_P
        wins = []
        with torch.no_grad():
            residual = counted + floor * freq_valid.float()
            uncovered = torch.ones_like(mean_power)
            # Each band's evidence on the padded grid, gathered at its window once after the loop.
            captures, covers = (mean_power.new_zeros(b, cfg.num_bands, g + 2 * w) for _ in range(2))
            for k in range(cfg.num_bands):
                log_capture = torch.log(band_capture(residual, self.band_bins) + 1e-6).mul_(sv)
                covered = 1.0 - uncovered
                captures[:, k, w: w + g], covers[:, k, w: w + g] = log_capture, covered
                grid_logits = logits_of(h_head, log_capture, covered, start_valid)  # (B, G)
                peak = grid_logits.argmax(-1, keepdim=True)
                win = peak + offsets  # (B, 2w+1) indices into the padded grid, centred on the arg-max
                # The window's logits are the grid's (the differentiable pass below recomputes them from the
                # window alone); the padding reads -inf, as an invalid start does.
                logits = torch.gather(pad(grid_logits, float("-inf")), 1, win)
                f_k = (torch.softmax(logits, dim=-1) * freqs_padded[win]).sum(-1)
                keep = 1.0 - cauchy_band_masks(freqs, f_k[:, None], cfg.band_width_hz, cfg.cauchy_width_hz)[:, 0]
                residual.mul_(keep)
                uncovered.mul_(keep)
                wins.append(win)
            win = torch.stack(wins, dim=1)  # (B, K, 2w+1)
            captures, covers = torch.gather(captures, 2, win), torch.gather(covers, 2, win)
        logits = window_logits(win, captures, covers)
        f = (torch.softmax(logits, dim=-1) * freqs_padded[win]).sum(-1)  # (B, K) Hz
        # Guards against float round-off only; the convex combination already lies in the valid range.
        lo = torch.full_like(f, cfg.band_min_hz)
        hi = (sample_rate.float()[:, None] / 2 - cfg.band_width_hz).expand_as(f)
        return torch.maximum(torch.minimum(f, hi), lo)
